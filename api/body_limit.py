"""A size limit on every request body of the API (``DEALFLOW_MAX_BODY_BYTES``, as for
webhooks, whose fast path checks its own): a larger body is a 413 problem before any handler
reads it, so no handler, and no Temporal update it would send, ever sees it."""

from __future__ import annotations

from typing import Any

from api.problems import send_problem

Scope = dict[str, Any]


async def limit_body(app: Any, limit: int, scope: Scope, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        await app(scope, receive, send)
        return
    declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            await send_problem(scope, receive, send, 400, "Content-Length is not a number")
            return
        if size > limit:
            await send_problem(
                scope, receive, send, 413, f"the body is {size} bytes; the limit is {limit} bytes"
            )
            return
        await app(scope, receive, send)  # the server holds the body to its declared length
        return
    # No length given (chunked): read the body within the limit, then hand it on.
    chunks: list[bytes] = []
    total = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break  # the client went away; let the app see it
        total += len(message.get("body", b""))
        if total > limit:
            await send_problem(
                scope, receive, send, 413, f"the body is over the limit of {limit} bytes"
            )
            return
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    body = b"".join(chunks)
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    await app(scope, replay, send)
