"""service/expect.py: a request that waits for 100 Continue and is answered without it
closes its connection, over real TCP through the entry command."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from tests.live_server import LiveProcess, live_process
from tests.service.fakes import process_env
from tests.service.test_head import read_head
from tests.service.test_limits import read_to_close
from tests.service.test_protocol import PING, recognize_request, responses


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveProcess]:
    tmp = tmp_path_factory.mktemp("expect")
    with live_process(process_env(tmp), tmp / "stderr.log") as process:
        yield process


def expecting(head: bytes) -> bytes:
    return head.replace(b"\r\n\r\n", b"\r\nExpect: 100-continue\r\n\r\n")


@pytest.mark.parametrize(
    ("target", "content_type", "status"),
    [
        (b"/recognize", b"application/json", 415),
        (b"/no-such-path", b"application/json", 404),
        (b"/health/live", b"application/json", 405),
    ],
)
def test_an_answer_before_100_continue_closes_the_connection(
    served: LiveProcess, target: bytes, content_type: bytes, status: int
) -> None:
    """The client holds its body back, so the server must not read on: the next request
    sent on the connection used to be read as the body, and answered 400."""
    head = b"POST %s HTTP/1.1\r\nHost: test\r\nContent-Type: %s\r\nContent-Length: 8\r\n\r\n" % (
        target,
        content_type,
    )
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as sock:
        sock.sendall(expecting(head))
        answer_head, rest = read_head(sock, b"")
        assert answer_head.startswith(b"HTTP/1.1 %d " % status), answer_head
        assert b"connection: close" in answer_head.lower(), answer_head
        # What the client sends next is not read as the withheld body: the server has
        # closed, having answered only the one request.
        try:
            sock.sendall(PING)
            rest += read_to_close(sock)
        except (BrokenPipeError, ConnectionResetError):
            pass
    assert b"HTTP/1.1" not in rest, rest


def test_an_upload_that_gets_its_100_continue_keeps_the_connection(served: LiveProcess) -> None:
    head, body = recognize_request()
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as sock:
        sock.sendall(expecting(head))
        interim, pending = read_head(sock, b"")
        assert interim == b"HTTP/1.1 100 Continue", interim
        sock.sendall(body + PING)
        data = pending
        while len(found := responses(data)) < 2:
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
    assert [status for status, _ in found] == [200, 200]
