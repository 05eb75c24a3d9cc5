"""The one place where typed errors become wire errors (HTTP JSON, SSE, WebSocket)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from warmloop.protocol.errors import APIError


def http_error(exc: APIError) -> JSONResponse:
    """`{"error": {"message","type","param","code"}}` with the error's status."""
    return JSONResponse({"error": exc.body()}, status_code=exc.status, headers=exc.headers)


def ws_error(exc: APIError) -> dict[str, Any]:
    """The nested WebSocket error event (a flat one crashes the SDK's WS client)."""
    return {"type": "error", "status": exc.status, "error": exc.body()}


def sse_error(exc: APIError) -> dict[str, Any]:
    """The flat SSE error event."""
    return {"type": "error", "code": exc.code, "message": exc.message, "param": exc.param}


async def api_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, APIError)
    return http_error(exc)
