"""The request body bounded as it arrives, before anything parses it.

The multipart parser writes an upload into a temporary file (on disk past 1 MiB) before the endpoint
sees it, so a limit checked in the endpoint comes after the disk was filled. This middleware refuses a
body whose Content-Length is over the limit without reading a byte of it, and stops a streamed body
(chunked, no Content-Length) as soon as the bytes read pass the limit.

Starlette's RequestBodyLimitMiddleware (FastAPI's ``max_body_size``) counts the same way, but answers a
declared oversize body in plain text, whatever the app would answer; every error of this API is
``{"error": ...}``.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyLimit:
    """ASGI middleware: 413 with ``{"error": message}`` for a body over ``max_bytes``.

    ``paths``: (limit, message) of the paths whose bodies are bounded otherwise; a JSON body carries its media in
    base64, a third larger than the same upload in a form.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, message: str,
                 paths: Mapping[str, tuple[int, str]] | None = None) -> None:
        self.app, self.max_bytes, self.message, self.paths = app, max_bytes, message, dict(paths or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        max_bytes, refusal = self.paths.get(scope["path"], (self.max_bytes, self.message))
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > max_bytes:
            return await JSONResponse({"error": refusal}, status_code=413)(scope, receive, send)
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > max_bytes:
                # Raised inside the endpoint's body parsing: the app's handlers answer it (in JSON).
                raise HTTPException(413, refusal)
            return message

        await self.app(scope, counted, send)
