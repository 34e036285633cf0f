"""Connections of requests that asked for ``100 Continue`` and were answered without it.

A client that sends ``Expect: 100-continue`` holds its body back until the server asks for
it (uvicorn writes the ``100 Continue`` when the app first reads the body). Answered before
that (a 404, 405 or 415 decided from the head alone), the client may never send the body,
and the server, still expecting it, would read the client's next request as its remainder.
RFC 9110 (10.1.1) asks such a server to say whether it closes the connection or goes on
reading; this one closes it, as the body limits' own early refusals do (service/limits.py).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.limits import closing, expects_continue


class ExpectContinueMiddleware:
    """Add ``Connection: close`` to the answer of a request that waits for ``100 Continue``
    when nothing has read its body before the answer starts; uvicorn then closes the
    connection after the answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not expects_continue(scope):
            await self.app(scope, receive, send)
            return
        asked = False

        async def noting_receive() -> Message:
            nonlocal asked
            asked = True  # the server writes 100 Continue now: the body will come
            return await receive()

        async def closing_send(message: Message) -> None:
            if message["type"] == "http.response.start" and not asked:
                message = closing(message)
            await send(message)

        await self.app(scope, noting_receive, closing_send)
