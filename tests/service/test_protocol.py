"""The entry command's connection protocol: a deadline on request heads, over real TCP."""

from __future__ import annotations

import contextlib
import gzip
import json
import select
import socket
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from pydantic import ValidationError
from starlette.types import Receive, Scope, Send

from service.protocol import header_timeout_protocol, timeout_response, with_path
from service.settings import Settings
from tests.live_server import LiveProcess, live_process, uvicorn_thread
from tests.service.fakes import process_env
from tests.service.images import encode, scene
from tests.service.test_api_metrics import samples
from tests.service.test_limits import read_to_close

HEADER_TIMEOUT_S = 1.5
# Longer than the header deadline, as behind a proxy that reuses idle upstream connections.
KEEP_ALIVE_S = 5
MAX_HEADER_BYTES = 16 * 1024
SEND_TIMEOUT_S = 1.5
# Slack for a busy CI machine: a close is on time when it comes within this much of the
# deadline, and "not cut" means it outlived the deadline by more than this.
SLACK_S = 1.0
REFUSED = "vision_connections_refused_total"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveProcess]:
    tmp = tmp_path_factory.mktemp("protocol")
    env = process_env(
        tmp,
        VISION_HEADER_TIMEOUT_S=str(HEADER_TIMEOUT_S),
        VISION_MAX_HEADER_BYTES=str(MAX_HEADER_BYTES),
        KEEP_ALIVE_S=str(KEEP_ALIVE_S),
        VISION_SEND_TIMEOUT_S=str(SEND_TIMEOUT_S),
    )
    with live_process(env, tmp / "stderr.log") as process:
        yield process


def connect(served: LiveProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", served.port), timeout=10 * HEADER_TIMEOUT_S)


def timed_out(served: LiveProcess) -> dict[str, float]:
    return by_label(served, "vision_connections_timed_out_total")


def by_label(served: LiveProcess, counter: str) -> dict[str, float]:
    """A one-label counter's values in /metrics, by its label's value."""
    metrics = samples(httpx.get(f"{served.url}/metrics").text)
    return {labels[0][1]: value for (name, labels), value in metrics.items() if name == counter}


def recognize_request() -> tuple[bytes, bytes]:
    """The head and body of a raw ``POST /recognize`` of one small PNG."""
    image = encode(scene())
    body = (
        b'--B\r\nContent-Disposition: form-data; name="image"; filename="s.png"\r\n'
        b"Content-Type: image/png\r\n\r\n" + image + b"\r\n--B--\r\n"
    )
    head = (
        b"POST /recognize HTTP/1.1\r\nHost: test\r\n"
        b"Content-Type: multipart/form-data; boundary=B\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    return head, body


def responses(data: bytes) -> list[tuple[int, bytes]]:
    """Status and body of each whole HTTP/1.1 answer in ``data`` (content-length framed);
    a trailing part-answer is left out."""
    found = []
    while b"\r\n\r\n" in data:
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        fields = dict(line.lower().split(b": ", 1) for line in lines[1:])
        length = int(fields[b"content-length"])
        if len(rest) < length:
            break
        found.append((int(lines[0].split(b" ")[1]), rest[:length]))
        data = rest[length:]
    return found


def read_responses(sock: socket.socket, count: int) -> list[tuple[int, bytes]]:
    """Read until ``count`` answers are in. Pipelined answers can share one segment, so one
    ``recv`` may hold several (reading them one at a time lost the second now and then)."""
    data = b""
    while len(found := responses(data)) < count:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {len(found)} of {count} answers: {data!r}"
        data += chunk
    assert len(found) == count, f"more answers than requests: {data!r}"
    return found


def test_a_connection_that_never_sends_a_request_is_closed(served: LiveProcess) -> None:
    before = timed_out(served).get("idle", 0.0)
    started = time.monotonic()
    with connect(served) as sock:
        assert read_to_close(sock) == b""  # closed without a word: nothing was asked
    waited = time.monotonic() - started
    assert HEADER_TIMEOUT_S - 0.1 <= waited <= HEADER_TIMEOUT_S + SLACK_S
    assert timed_out(served)["idle"] == before + 1


def test_a_head_sent_a_byte_at_a_time_gets_408_at_the_deadline(served: LiveProcess) -> None:
    """Slowloris: every byte would reset a per-read timer; the deadline is on the head."""
    before = timed_out(served).get("headers", 0.0)
    started = time.monotonic()
    with connect(served) as sock:
        sock.sendall(b"GET /health/ready HTTP/1.1\r\nHost: test\r\n")
        for _ in range(int(4 * HEADER_TIMEOUT_S / 0.2)):
            sock.sendall(b"X")
            # Wait for the next byte's turn, or stop as soon as the server answers: a
            # send only fails one send after the close, which would eat into the slack.
            readable, _, _ = select.select([sock], [], [], 0.2)
            if readable:
                break
        answer = read_to_close(sock)
    waited = time.monotonic() - started
    assert waited <= HEADER_TIMEOUT_S + SLACK_S
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ") and b"connection: close" in head.lower()
    problem = json.loads(body)
    assert problem["status"] == 408 and "VISION_HEADER_TIMEOUT_S" in problem["detail"]
    assert timed_out(served)["headers"] == before + 1


PING = b"GET /health/live HTTP/1.1\r\nHost: test\r\n\r\n"


def test_an_idle_connection_lives_as_long_as_keep_alive_s(served: LiveProcess) -> None:
    """Between requests only the keep-alive time applies: a request after an idle pause
    longer than the header timeout is answered (the deadline used to run from the last
    answer, so a proxy reusing the connection then had its request fail), and the idle
    connection is closed, without a word, once KEEP_ALIVE_S has passed."""
    with connect(served) as sock:
        sock.sendall(PING)
        assert read_responses(sock, 1)[0][0] == 200
        time.sleep(HEADER_TIMEOUT_S + SLACK_S)
        sock.sendall(PING)
        assert read_responses(sock, 1)[0][0] == 200
        started = time.monotonic()
        assert read_to_close(sock) == b""
    waited = time.monotonic() - started
    assert KEEP_ALIVE_S - 0.1 <= waited <= KEEP_ALIVE_S + SLACK_S


def test_bytes_between_requests_do_not_hold_an_idle_connection(served: LiveProcess) -> None:
    """CRLFs between requests (RFC 9112 allows them; httptools starts no request for them)
    cancelled uvicorn's keep-alive timer, and the connection stayed open for good: the idle
    wait is now the protocol's own, and ends at KEEP_ALIVE_S whatever such bytes come. The
    same after an early answer whose dropped body has all come. Neither close is counted
    as a timeout (keep-alive running out is no client fault)."""
    before = timed_out(served)
    with connect(served) as sock:
        sock.sendall(PING)
        assert read_responses(sock, 1)[0][0] == 200
        started = time.monotonic()
        sock.sendall(b"\r\n")
        time.sleep(0.5)
        sock.sendall(b"\r\n")
        assert read_to_close(sock) == b""
    assert KEEP_ALIVE_S - 0.1 <= time.monotonic() - started <= KEEP_ALIVE_S + SLACK_S
    with connect(served) as sock:
        sock.sendall(b"POST /nowhere HTTP/1.1\r\nHost: test\r\nContent-Length: 10\r\n\r\n")
        assert read_responses(sock, 1)[0][0] == 404
        sock.sendall(b"x" * 10)  # the dropped body, all of it
        started = time.monotonic()
        assert read_to_close(sock) == b""
    assert KEEP_ALIVE_S - 0.1 <= time.monotonic() - started <= KEEP_ALIVE_S + SLACK_S
    assert timed_out(served) == before


def test_a_slow_head_after_an_idle_pause_gets_408_from_its_first_byte(
    served: LiveProcess,
) -> None:
    """After an answer and an idle pause, a head sent a byte at a time still gets its 408
    HEADER_TIMEOUT_S after its first byte: the idle time before it is not the head's, and
    the head is not given the keep-alive time."""
    with connect(served) as sock:
        sock.sendall(PING)
        assert read_responses(sock, 1)[0][0] == 200
        time.sleep(HEADER_TIMEOUT_S)
        started = time.monotonic()
        sock.sendall(b"GET /health/ready HTTP/1.1\r\n")
        for _ in range(int(4 * HEADER_TIMEOUT_S / 0.2)):
            sock.sendall(b"X")
            if select.select([sock], [], [], 0.2)[0]:
                break
        answer = read_to_close(sock)
    waited = time.monotonic() - started
    assert HEADER_TIMEOUT_S - 0.1 <= waited <= HEADER_TIMEOUT_S + SLACK_S
    assert answer.startswith(b"HTTP/1.1 408 ")


def test_a_slow_body_and_keep_alive_requests_are_not_cut(served: LiveProcess) -> None:
    """Once a head is in, the deadline is off: a body that takes longer than the header
    timeout (within the body timeout) is answered, and so is a second request on the same
    connection sent soon after the answer; two pipelined requests are both answered."""
    head, body = recognize_request()
    with connect(served) as sock:
        sock.sendall(head + body[:100])
        time.sleep(HEADER_TIMEOUT_S + SLACK_S)
        sock.sendall(body[100:])
        assert read_responses(sock, 1)[0][0] == 200
        time.sleep(HEADER_TIMEOUT_S / 3)
        ping = b"GET /health/live HTTP/1.1\r\nHost: test\r\n\r\n"
        sock.sendall(ping + ping)
        assert [status for status, _ in read_responses(sock, 2)] == [200, 200]


def test_the_408_of_a_head_pipelined_behind_an_answer_names_no_request(
    served: LiveProcess,
) -> None:
    """A head that begins before the answer to the request ahead of it has its deadline
    armed as that answer completes; its 408 log line carries no request id, not the
    answered request's (the timer used to inherit that request's context)."""
    ping = PING.replace(b"\r\n\r\n", b"\r\nX-Request-ID: answered-before-408\r\n\r\n")
    with connect(served) as sock:
        sock.sendall(ping + b"GET /health/ready HTTP/1.1\r\n")
        answer = read_to_close(sock)
    assert [status for status, _ in responses(answer)] == [200, 408]
    lines = served.stderr.read_text().splitlines()
    timed_out_lines = [line for line in lines if "408, connection closed" in line]
    assert timed_out_lines and "answered-before-408" not in timed_out_lines[-1], timed_out_lines[-1]


def test_a_body_still_arriving_after_an_early_answer_is_not_cut(served: LiveProcess) -> None:
    """An upload to a path that does not exist is answered 404 before its body is read;
    uvicorn reads and drops the rest. The deadline waits for that body to end: the client
    keeps sending past the header timeout, then asks again on the same connection."""
    chunks, size = 10, 100
    with connect(served) as sock:
        sock.sendall(
            b"POST /nowhere HTTP/1.1\r\nHost: test\r\nContent-Length: %d\r\n\r\n" % (chunks * size)
        )
        assert read_responses(sock, 1)[0][0] == 404
        for _ in range(chunks):  # over (HEADER_TIMEOUT_S + SLACK_S) in all
            time.sleep((HEADER_TIMEOUT_S + SLACK_S) / chunks)
            sock.sendall(b"x" * size)
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: test\r\n\r\n")
        assert read_responses(sock, 1)[0][0] == 200


def test_a_dropped_body_that_stops_arriving_is_closed(served: LiveProcess) -> None:
    """After the early 404, one more byte of the body and then nothing: uvicorn's keep-alive
    timer never restarts, so without the deadline the connection stayed open for good."""
    before = timed_out(served).get("body", 0.0)
    with connect(served) as sock:
        sock.sendall(b"POST /nowhere HTTP/1.1\r\nHost: test\r\nContent-Length: 100000\r\n\r\n")
        assert read_responses(sock, 1)[0][0] == 404
        sock.sendall(b"x")
        started = time.monotonic()
        assert read_to_close(sock) == b""
    assert time.monotonic() - started <= HEADER_TIMEOUT_S + SLACK_S
    assert timed_out(served)["body"] == before + 1


def send_in_pieces(sock: socket.socket, data: bytes, piece: int = 4096) -> bool:
    """Send ``data`` a piece at a time, each its own read on the server; False when the
    server answered or closed first."""
    for start in range(0, len(data), piece):
        if select.select([sock], [], [], 0)[0]:
            return False
        try:
            sock.sendall(data[start : start + piece])
        except OSError:
            return False
        time.sleep(0.01)
    return True


def test_a_head_past_the_size_limit_gets_431_and_is_closed(served: LiveProcess) -> None:
    """One header of 1 MB, sent in pieces: httptools would hold all of it (copying it again
    for each piece); the server stops reading at the limit, answers 431 and closes."""
    head = b"GET /health/live HTTP/1.1\r\nHost: test\r\nX-Big: " + b"a" * 1_000_000
    before = by_label(served, REFUSED).get("head_too_large", 0)
    with connect(served) as sock:
        assert not send_in_pieces(sock, head)  # cut off long before the end
        answer = read_to_close(sock)
    status, body = responses(answer)[0]
    assert status == 431
    problem = json.loads(body)
    assert problem["status"] == 431 and "VISION_MAX_HEADER_BYTES" in problem["detail"]
    assert by_label(served, REFUSED)["head_too_large"] == before + 1


def test_a_head_under_the_limit_is_answered_in_pieces_too(served: LiveProcess) -> None:
    """Headers of three quarters of the limit, in pieces, then a second request on the same
    connection: the count starts again with each head."""
    head = (
        b"GET /health/live HTTP/1.1\r\nHost: test\r\nX-Fill: "
        + b"a" * (3 * MAX_HEADER_BYTES // 4)
        + b"\r\n\r\n"
    )
    with connect(served) as sock:
        for _ in range(2):
            assert send_in_pieces(sock, head)
            assert read_responses(sock, 1)[0][0] == 200


def test_a_head_split_across_reads_is_not_charged_for_the_body_after_it(
    served: LiveProcess,
) -> None:
    """The read that ends a head may carry a body much larger than the head limit: only
    the head's bytes count, and the rest goes on to the request."""
    body = b"x" * (3 * MAX_HEADER_BYTES)
    with connect(served) as sock:
        sock.sendall(b"POST /nowhere HTTP/1.1\r\nHost: test\r\n")
        time.sleep(0.2)  # a read of its own: the head began in it
        sock.sendall(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        assert read_responses(sock, 1)[0][0] == 404


def test_a_pipelined_head_over_the_limit_waits_for_the_answer_before_it(
    served: LiveProcess,
) -> None:
    """A request, then a head that passes the limit while the request is still being
    handled: its answer comes first, whole, then the 431, then the close."""
    head, body = recognize_request()
    with connect(served) as sock:
        sock.sendall(head + body + b"GET /health/live HTTP/1.1\r\nHost: test\r\nX-Big: ")
        time.sleep(0.001)
        with contextlib.suppress(OSError):  # closed while sending: its answers are read below
            sock.sendall(b"a" * (2 * MAX_HEADER_BYTES))
        answers = responses(read_to_close(sock))
    assert [status for status, _ in answers] == [200, 431]
    assert json.loads(answers[0][1])["model"]["name"] == "landmark"


def test_chunked_trailers_past_the_limit_close_the_connection(served: LiveProcess) -> None:
    """httptools gathers a trailer field like a header, after the head: an upload in
    chunks whose trailer grows past the limit is cut off at once (not at the 30 s body
    timeout); the same upload with a short trailer is answered."""
    head, body = recognize_request()
    chunked = head.replace(b"Content-Length: %d" % len(body), b"Transfer-Encoding: chunked")
    chunks = b"".join(
        b"%x\r\n" % len(body[i : i + 4096]) + body[i : i + 4096] + b"\r\n"
        for i in range(0, len(body), 4096)
    )
    with connect(served) as sock:
        sock.sendall(chunked + chunks + b"0\r\nX-Trailer: ")
        time.sleep(0.1)
        started = time.monotonic()
        with contextlib.suppress(OSError):  # the server closes while this is sent
            for _ in range(4 * MAX_HEADER_BYTES // 4096 + len(body) // 4096 + 2):
                sock.sendall(b"a" * 4096)
                time.sleep(0.01)
        assert read_to_close(sock) == b""  # the app never saw its body end
    assert time.monotonic() - started < HEADER_TIMEOUT_S + SLACK_S
    with connect(served) as sock:
        sock.sendall(chunked + chunks + b"0\r\nX-Trailer: short\r\n\r\n")
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: test\r\n\r\n")
        assert [status for status, _ in read_responses(sock, 2)] == [200, 200]


@pytest.mark.parametrize("length", [b"abc", b"-5", b"5, 5", b"1" * 23])
def test_a_malformed_request_gets_a_400_problem(served: LiveProcess, length: bytes) -> None:
    """uvicorn answers what httptools refuses with a text/plain 400."""
    request = b"POST /recognize HTTP/1.1\r\nHost: test\r\nContent-Length: " + length
    with connect(served) as sock:
        sock.sendall(request + b"\r\n\r\nhello")
        answer = read_to_close(sock)
    head = answer.partition(b"\r\n\r\n")[0].lower()
    assert b"content-type: application/problem+json" in head and b"connection: close" in head
    status, body = responses(answer)[0]
    problem = json.loads(body)
    assert status == 400 and problem["status"] == 400
    assert problem["type"].endswith(":malformed-request") and "HTTP/1.1" in problem["detail"]


def test_a_request_target_past_what_the_parser_reads_gets_414(served: LiveProcess) -> None:
    """httptools parses no target over 65 535 bytes; its refusal was the 400 of malformed
    bytes. The longest it reads is still answered; the refusal is counted."""
    before = by_label(served, REFUSED).get("uri_too_long", 0.0)
    # (A target sent past MAX_HEADER_BYTES beyond its first read is that limit's 431.)
    for length, status in ((65535, 200), (65536, 414), (70_000, 414)):
        target = b"/health/live?q=" + b"a" * (length - len(b"/health/live?q="))
        with connect(served) as sock:
            sock.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            ((answered, body),) = responses(read_to_close(sock))
        assert answered == status, length
        if status == 414:
            problem = json.loads(body)
            assert problem["type"].endswith(":uri-too-long") and "65535" in problem["detail"]
    assert by_label(served, REFUSED)["uri_too_long"] == before + 2


def test_a_broken_chunk_size_mid_body_gets_a_400_problem_with_its_protocol_s_members(
    served: LiveProcess,
) -> None:
    """httptools refuses a bad chunk size after the head, while the route reads the body: the
    400 then knows the path, and on /v2 carries the ``error`` member V2 clients read."""
    head = (
        b"POST /v2/models/landmark/infer HTTP/1.1\r\nHost: test\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    with connect(served) as sock:
        sock.sendall(head + b"2\r\n{}\r\nzz\r\n")
        answer = read_to_close(sock)
    status, body = responses(answer)[0]
    problem = json.loads(body)
    assert status == 400 and problem["error"] == problem["detail"]


def test_a_head_with_a_declared_body_over_the_limit_is_a_413_and_the_server_serves_on(
    served: LiveProcess,
) -> None:
    """A HEAD to a GET route passed for a path no route takes (FastAPI's GET routes do not
    take HEAD; a middleware inside makes it a GET) and got the app's own answer, with a
    receive that answered at once forever: /ui's file response, waiting for a disconnect
    on it, never yielded, and the whole server hung (found by a review)."""
    for target in (b"/ui", b"/health/live"):
        with connect(served) as sock:
            sock.sendall(
                b"HEAD %s HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999\r\n\r\n" % target
            )
            answer = read_to_close(sock)
        assert answer.startswith(b"HTTP/1.1 413 "), (target, answer[:200])
    assert httpx.get(f"{served.url}/health/live", timeout=10).status_code == 200


def test_a_gzip_chunked_upload_gets_a_400_naming_its_coding_and_keeps_the_connection(
    served: LiveProcess,
) -> None:
    """httptools frames ``Transfer-Encoding: gzip, chunked`` as chunked and hands the body
    on compressed (the form parser called it "Invalid multipart data"): the answer is a 400
    that names the coding (RFC 9112's 501 would be the one 5xx a client's choice earns),
    after the body was read, so a request behind it on the connection is answered."""
    head, body = recognize_request()
    packed = gzip.compress(body)
    coded = head.replace(b"Content-Length: %d" % len(body), b"Transfer-Encoding: gzip, chunked")
    refused = "vision_request_bodies_refused_total"
    before = by_label(served, refused).get("transfer_coding", 0.0)
    with connect(served) as sock:
        sock.sendall(coded + b"%x\r\n" % len(packed) + packed + b"\r\n0\r\n\r\n")
        sock.sendall(head + body)
        (status, answer), (after, _) = read_responses(sock, 2)
    problem = json.loads(answer)
    assert status == 400 and problem["type"].endswith(":unsupported-transfer-coding")
    assert "'gzip, chunked'" in problem["detail"] and after == 200
    assert by_label(served, refused)["transfer_coding"] == before + 1


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (b"http://h", b"http://h/"),
        (b"http://h?a=/b", b"http://h/?a=/b"),
        (b"HTTP://h:80#f", b"HTTP://h:80/#f"),
        (b"http://h/", b"http://h/"),
        (b"http://h/p?q", b"http://h/p?q"),
        (b"/p", b"/p"),
        (b"*", b"*"),
    ],
)
def test_with_path_gives_an_absolute_target_without_a_path_its_slash(
    target: bytes, expected: bytes
) -> None:
    assert with_path(target) == expected


def test_an_absolute_form_target_with_an_empty_path_is_the_root(served: LiveProcess) -> None:
    """``GET http://host?x=1`` is ``GET /?x=1`` (RFC 3986 6.2.3); uvicorn refused it as
    malformed. The root serves nothing here, so both are its 404; a path is kept."""
    answers = []
    for target in (b"http://test?x=1", b"/?x=1", b"http://test/health/live"):
        with connect(served) as sock:
            sock.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
            ((status, body),) = responses(read_to_close(sock))
        answers.append((status, json.loads(body).get("type")))
    assert answers[0] == answers[1] == (404, "about:blank") and answers[2] == (200, None)


def test_bytes_that_are_no_request_line_get_a_400_problem(served: LiveProcess) -> None:
    before = by_label(served, REFUSED).get("malformed", 0)
    with connect(served) as sock:
        sock.sendall(b"\x00\x01\x02 not http\r\n\r\n")
        answer = read_to_close(sock)
    status, body = responses(answer)[0]
    problem = json.loads(body)
    assert status == 400 and problem["type"].endswith(":malformed-request")
    assert "error" not in problem
    assert by_label(served, REFUSED)["malformed"] == before + 1


@pytest.mark.parametrize("pipelined", ["ping", "upload"])
def test_bytes_that_are_no_request_after_requests_get_their_400_after_those_answers(
    served: LiveProcess, pipelined: str
) -> None:
    """Junk pipelined behind whole requests is refused only once they are answered: the
    400 used to go out at once and closed the connection, so a request still being handled
    (a saved teacher record among them) lost its answer."""
    head, body = recognize_request()
    first = PING if pipelined == "ping" else head + body
    with connect(served) as sock:
        sock.sendall(first + PING + b"GARBAGE\r\n\r\n")
        answers = responses(read_to_close(sock))
    assert [status for status, _ in answers] == [200, 200, 400]
    if pipelined == "upload":
        assert json.loads(answers[0][1])["model"]["name"] == "landmark"
    assert json.loads(answers[2][1])["type"].endswith(":malformed-request")


def test_a_broken_chunked_body_queued_behind_an_answer_waits_for_it(served: LiveProcess) -> None:
    """A chunked upload whose chunk size is broken, pipelined behind a request still being
    answered, never runs; its 400 comes after that answer (which it used to replace)."""
    head, body = recognize_request()
    broken = (
        b"POST /v2/models/landmark/infer HTTP/1.1\r\nHost: test\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nZZZ\r\n"
    )
    with connect(served) as sock:
        sock.sendall(head + body + broken)
        answers = responses(read_to_close(sock))
    assert [status for status, _ in answers] == [200, 400]
    assert json.loads(answers[0][1])["model"]["name"] == "landmark"


def test_a_deferred_400_logs_no_request_s_id_and_nothing_after_a_close(
    served: LiveProcess,
) -> None:
    """The refusal of junk behind an answer is logged as no request's (it ran in the
    answered request's context and carried its id); behind an answer that closed the
    connection (an Expect 404) nothing is sent, and nothing is logged as sent."""
    ping = PING.replace(b"\r\n\r\n", b"\r\nX-Request-ID: answered-before-junk\r\n\r\n")
    with connect(served) as sock:
        sock.sendall(ping + b"JUNK\x00\r\n\r\n")
        assert [status for status, _ in responses(read_to_close(sock))] == [200, 400]
    lines = served.stderr.read_text().splitlines()
    refused = [line for line in lines if "bytes that are no request" in line]
    assert refused and "answered-before-junk" not in refused[-1], refused[-1]
    closing = (  # answered 404 with Connection: close: it waits for a 100 Continue
        b"POST /nowhere HTTP/1.1\r\nHost: test\r\nExpect: 100-continue\r\n"
        b"Content-Length: 0\r\nX-Request-ID: closed-before-junk\r\n\r\n"
    )
    with connect(served) as sock:
        sock.sendall(closing + b"JUNK\x00\r\n\r\n")
        assert [status for status, _ in responses(read_to_close(sock))] == [404]
    lines = served.stderr.read_text().splitlines()
    assert len([line for line in lines if "bytes that are no request" in line]) == len(refused)


OPENAPI = b"GET /openapi.json HTTP/1.1\r\nHost: test\r\n\r\n"  # about 56 kB of answer


def gauges(served: LiveProcess) -> tuple[float, float]:
    """Requests in flight and request-body bytes reserved, from /metrics."""
    metrics = samples(httpx.get(f"{served.url}/metrics").text)
    return (
        metrics[("vision_http_requests_in_flight", ())],
        metrics[("vision_request_body_bytes_in_flight", ())],
    )


def test_an_answer_left_untaken_is_dropped_with_the_requests_behind_it(
    served: LiveProcess,
) -> None:
    """A client that asks for answers and reads none: uvicorn waited for ever to write the
    next one, holding it and the request (with its body's reservation) that made it."""
    before = timed_out(served).get("answer", 0.0)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: the window
    sock.connect(("127.0.0.1", served.port))
    head, body = recognize_request()
    with sock:
        sock.sendall((OPENAPI + head + body) * 100)  # some 5.6 MB of answers, none read
        deadline = time.monotonic() + 10 * SEND_TIMEOUT_S
        while timed_out(served).get("answer", 0.0) == before:
            assert time.monotonic() < deadline, "the connection was never dropped"
            time.sleep(0.2)
        assert gauges(served) == (0.0, 0.0)
        # What the kernel had taken still comes, then the end: the rest was dropped.
        assert len(responses(read_to_close(sock))) < 200


def test_a_steady_reader_slower_than_the_answers_is_not_cut(served: LiveProcess) -> None:
    """Untaken means no progress: a client reading 64 kB each 20 ms takes 100 answers of
    56 kB over longer than the send timeout, its buffer full and drained again and again."""
    before = timed_out(served).get("answer", 0.0)
    with connect(served) as sock:
        sock.sendall(OPENAPI * 100)
        data, started = b"", time.monotonic()
        while len(found := responses(data)) < 100:
            chunk = sock.recv(65536)
            assert chunk, f"closed after {len(found)} answers"
            data += chunk
            time.sleep(0.02)
        assert time.monotonic() - started > SEND_TIMEOUT_S
    assert {status for status, _ in found} == {200}
    assert timed_out(served).get("answer", 0.0) == before


def test_requests_pipelined_then_closed_are_all_told_the_client_left(
    served: LiveProcess,
) -> None:
    """uvicorn told only the queued request: the running one wrote on into the closed
    transport, an "Exception in ASGI application" with two tracebacks per connection."""
    head, body = recognize_request()
    for _ in range(10):
        with connect(served) as sock:
            sock.sendall((head + body) * 2)
    deadline = time.monotonic() + 10.0
    while gauges(served) != (0.0, 0.0):
        assert time.monotonic() < deadline, gauges(served)
        time.sleep(0.1)
    log = served.stderr.read_text()
    assert "Exception in ASGI application" not in log and "unhandled error" not in log


async def large_answers(scope: Scope, receive: Receive, send: Send) -> None:
    """``GET /?n=N``: N bytes in one body message, as a large V2 answer is written."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    size = int(scope["query_string"].decode().removeprefix("n="))
    length = [(b"content-length", str(size).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": length})
    await send({"type": "http.response.body", "body": b"x" * size})


@contextlib.contextmanager
def protocol_server(
    send_timeout_s: float = SEND_TIMEOUT_S,
) -> Iterator[tuple[int, uvicorn.Server]]:
    """``large_answers`` under the entry command's protocol, in a thread, on uvloop as
    there; yields the port and the server (its connections are looked at)."""
    http = header_timeout_protocol(HEADER_TIMEOUT_S, MAX_HEADER_BYTES, send_timeout_s)
    with uvicorn_thread(large_answers, loop="uvloop", http=http, timeout_keep_alive=1) as served:
        yield served


def small_window(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: the window
    sock.connect(("127.0.0.1", port))
    sock.settimeout(30)
    return sock


def test_a_slow_reader_of_one_large_write_is_not_cut() -> None:
    """The send timer times progress, not the whole drain: 8 MiB written at once and read
    at about 2 MB/s takes longer than the timeout to leave the buffer (it was cut)."""
    size = 8 * 2**20
    with protocol_server() as (port, _), socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)  # the kernel takes less
        sock.connect(("127.0.0.1", port))
        sock.sendall(b"GET /?n=%d HTTP/1.1\r\nHost: t\r\n\r\n" % size)
        data, started = b"", time.monotonic()
        while (chunk := sock.recv(65536)) and len(data) + len(chunk) < size:
            data += chunk
            time.sleep(0.03)
        assert time.monotonic() - started > SEND_TIMEOUT_S
        assert len(data) + len(chunk) >= size, f"cut after {len(data)} bytes"


def test_a_keep_alive_reader_slower_than_the_kernel_queue_frees_is_not_cut() -> None:
    """A first answer read at once, then a 4 MiB one read at about 640 kB/s, 320 kB in each
    0.5 s timeout: a timer on the transport's buffer saw no progress (the kernel's
    megabytes sit in front of it) and reset the client; the kernel's own timeout counts
    every acknowledged byte."""
    size, timeout_s = 4 * 2**20, 0.5
    with protocol_server(timeout_s) as (port, _), socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)  # the kernel takes less
        sock.connect(("127.0.0.1", port))
        sock.settimeout(30)
        for pause_s in (0.0, 0.1):
            sock.sendall(b"GET /?n=%d HTTP/1.1\r\nHost: t\r\n\r\n" % size)
            head = b""
            while b"\r\n\r\n" not in head:
                head += sock.recv(1)
            taken, started = 0, time.monotonic()
            while taken < size:
                chunk = sock.recv(min(65536, size - taken))
                assert chunk, f"cut after {taken} bytes"
                taken += len(chunk)
                time.sleep(pause_s)
        assert time.monotonic() - started > 4 * timeout_s


def test_an_unread_answer_under_the_high_water_mark_is_dropped_too() -> None:
    """Part of an answer left in the buffer, under the mark that pauses writing, when the
    answer completes: the keep-alive close waited for it for ever, the connection held."""
    with protocol_server() as (port, server):
        with small_window(port) as probe:  # how much the kernel takes for an unread client
            probe.sendall(b"GET /?n=8000000 HTTP/1.1\r\nHost: t\r\n\r\n")
            time.sleep(0.5)
            (held,) = server.server_state.connections
            kernel = 8_000_000 - held.transport.get_write_buffer_size()
        time.sleep(1)
        with small_window(port) as sock:
            sock.sendall(b"GET /?n=%d HTTP/1.1\r\nHost: t\r\n\r\n" % (kernel + 40_000))
            time.sleep(0.5)
            (held,) = server.server_state.connections
            assert 0 < held.transport.get_write_buffer_size() < 65536
            deadline = time.monotonic() + 1 + SEND_TIMEOUT_S + 10 * SLACK_S
            while server.server_state.connections:
                assert time.monotonic() < deadline, "the connection is still held"
                time.sleep(0.1)


def test_the_raw_408_is_well_formed() -> None:
    raw = timeout_response(2.5, [(b"server", b"uvicorn")])
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("ascii").split("\r\n")
    assert lines[0] == "HTTP/1.1 408 Request Timeout"
    fields = dict(line.split(": ", 1) for line in lines[1:])
    assert fields["server"] == "uvicorn" and fields["connection"] == "close"
    assert fields["content-type"] == "application/problem+json"
    assert int(fields["content-length"]) == len(body)
    assert json.loads(body)["detail"].startswith("the request headers did not arrive within 2.5 s")


def test_header_timeout_must_be_positive() -> None:
    for bad in ("0", "-1", "nan"):
        with pytest.raises(ValidationError):
            Settings(header_timeout_s=bad)


def test_send_timeout_fits_the_kernel_s_millisecond_int() -> None:
    """3 000 000 s passed as 3e9 ms made every setsockopt raise and every connection go
    unanswered; under a millisecond rounded to 0, which turns the timeout off."""
    for bad in ("0", "0.0004", "3000000", "inf"):
        with pytest.raises(ValidationError):
            Settings(send_timeout_s=bad)
    assert Settings(send_timeout_s=2_147_483).send_timeout_s == 2_147_483
