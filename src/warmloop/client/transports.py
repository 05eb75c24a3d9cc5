"""How one turn reaches the server: WebSocket mode or HTTP streaming, behind one interface.

Both run on the official SDK (`client.responses.connect()` and
`client.responses.create(stream=True)`) and yield the SDK's event objects. Failures
come out as three exceptions the agent loop can act on:

- `UpgradeRefused`: the server will not do WebSocket mode (HTTP 426, or the upgrade
  failed): fall back to HTTP at once.
- `ConnectionLost`: the socket dropped, or the server ended it
  (`websocket_connection_limit_reached`, or `server_draining` from a worker that is
  shutting down): reconnect and go on.
- `ResponseError`: the server answered the request with an error (bad request, unknown
  `previous_response_id`, rate limit...): not a transport problem.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import openai
from openai.types.responses import ResponseStreamEvent
from pydantic import TypeAdapter, ValidationError

from warmloop.protocol.events import TERMINAL_EVENTS

_EVENTS: TypeAdapter[ResponseStreamEvent] = TypeAdapter(ResponseStreamEvent)
# Error codes that end the socket, not the turn: reconnect and send the turn again.
_RECONNECT_CODES = ("websocket_connection_limit_reached", "server_draining")

Headers = Callable[[], dict[str, str]]  # the routing headers of the next request


class TransportError(Exception):
    pass


class UpgradeRefused(TransportError):
    """The server refused WebSocket mode; HTTP works."""


class ConnectionLost(TransportError):
    """The connection ended before the turn did."""


class ResponseError(Exception):
    """An error the server answered with (in OpenAI's error shape)."""

    def __init__(
        self, message: str, *, code: str | None = None, param: str | None = None, status: int = 0
    ) -> None:
        super().__init__(message)
        self.code = code
        self.param = param
        self.status = status


class Transport(Protocol):
    name: str
    # Bumped on every (re)connect: a store:false response can only be continued on the
    # same connection generation that produced it.
    generation: int

    def can_continue(self, store: bool) -> bool:
        """Whether a response of this transport's current connection can be continued
        by `previous_response_id` (store:false responses live only on their socket)."""
        ...

    def stream(self, body: dict[str, Any]) -> AsyncIterator[ResponseStreamEvent]: ...

    async def reset(self) -> None:
        """Drop the current connection (the next turn opens a new one)."""
        ...

    async def close(self) -> None: ...


class WebSocketTransport:
    """WebSocket mode on `/v1/responses`: one socket, opened on first use, one turn at a time."""

    name = "websocket"

    def __init__(self, client: openai.AsyncOpenAI, headers: Headers = dict) -> None:
        self.client = client
        self.headers = headers
        self.generation = 0
        self._conn: Any = None

    def can_continue(self, store: bool) -> bool:
        return True  # within one generation; store:true ids also load from the server's store

    async def _connection(self) -> Any:
        if self._conn is None:
            try:
                connect = self.client.responses.connect(extra_headers=self.headers())
                self._conn = await connect.enter()
            except Exception as exc:  # handshake refused (426, 4xx) or connection failed
                status = getattr(getattr(exc, "response", None), "status_code", 0)
                if status >= 500:  # e.g. 503 from a draining worker: try again, still WS
                    raise ConnectionLost(f"WebSocket upgrade answered {status}") from exc
                raise UpgradeRefused(f"WebSocket upgrade failed: {exc}") from exc
            self.generation += 1
        return self._conn

    async def stream(self, body: dict[str, Any]) -> AsyncIterator[ResponseStreamEvent]:
        conn = await self._connection()
        frame = {"type": "response.create", **{k: v for k, v in body.items() if k != "stream"}}
        try:
            await conn.send(frame)
            while True:
                raw = json.loads(await conn.recv_bytes())
                if raw.get("type") == "error":
                    err = raw.get("error") or raw
                    if err.get("code") in _RECONNECT_CODES:
                        await self.reset()
                        raise ConnectionLost(err.get("message") or "the server ended the socket")
                    raise ResponseError(
                        err.get("message") or "error",
                        code=err.get("code"),
                        param=err.get("param"),
                        status=int(raw.get("status") or 400),
                    )
                try:
                    event = _EVENTS.validate_python(raw)
                except ValidationError as exc:  # an event type this SDK does not know: skip it
                    if raw.get("type") in TERMINAL_EVENTS:
                        raise ResponseError(
                            f"malformed {raw['type']} event: {exc}", code="invalid_response"
                        ) from exc
                    continue
                yield event
                if event.type in TERMINAL_EVENTS:
                    return
        except (ResponseError, ConnectionLost):
            raise
        except Exception as exc:  # websockets.ConnectionClosed, OSError, ...
            await self.reset()
            raise ConnectionLost(f"WebSocket connection lost: {exc!r}") from exc

    async def reset(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # already broken: nothing to close cleanly
                await conn.close()

    async def close(self) -> None:
        await self.reset()


class HTTPTransport:
    """`POST /v1/responses` with `stream: true` (Server-Sent Events), one request per turn."""

    name = "http"

    def __init__(self, client: openai.AsyncOpenAI, headers: Headers = dict) -> None:
        self.client = client
        self.headers = headers
        self.generation = 1

    def can_continue(self, store: bool) -> bool:
        return store  # only stored responses can be named over HTTP

    async def stream(self, body: dict[str, Any]) -> AsyncIterator[ResponseStreamEvent]:
        try:
            headers = self.headers()
            events = await self.client.responses.create(**body, stream=True, extra_headers=headers)
            async with events:
                async for event in events:
                    yield event
                    if event.type in TERMINAL_EVENTS:
                        return
        except openai.APIStatusError as exc:
            raise _status_error(exc) from exc
        except openai.APIError as exc:
            if isinstance(exc, openai.APIConnectionError) or exc.body is None:
                raise ConnectionLost(f"HTTP request failed: {exc}") from exc
            raise ResponseError(str(exc), code=exc.code, param=exc.param) from exc
        raise ConnectionLost("the event stream ended before the response did")

    async def reset(self) -> None:
        pass

    async def close(self) -> None:
        pass


def _status_error(exc: openai.APIStatusError) -> Exception:
    body = exc.body if isinstance(exc.body, dict) else {}
    err = body.get("error", body) if isinstance(body, dict) else {}
    if exc.status_code >= 500:
        return ConnectionLost(f"server error {exc.status_code}: {exc.message}")
    return ResponseError(
        str(err.get("message") or exc.message),
        code=err.get("code"),
        param=err.get("param"),
        status=exc.status_code,
    )
