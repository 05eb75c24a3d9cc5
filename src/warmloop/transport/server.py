"""The one uvicorn launcher (`serve`, the demo and the bench use it), and the hook that
lets a route drop a client's TCP connection.

ASGI gives an app no way to abort a connection, and closing one politely waits for the
client to read what is buffered: a client that never reads would hold its socket open
forever. uvicorn's HTTP and WebSocket protocols are subclassed only to note each
connection's transport by the client's address (asyncio's `connection_made` and
`connection_lost`), so `abort(scope)` can cut it after a write timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import Any

from uvicorn import Config as UvicornConfig
from uvicorn import Server
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from warmloop.config import Config

_transports: dict[tuple[str, int], asyncio.Transport] = {}


def _key(transport: asyncio.BaseTransport) -> tuple[str, int] | None:
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return (str(peer[0]), int(peer[1]))
    return None


def _note(transport: asyncio.BaseTransport) -> None:
    key = _key(transport)
    if key is not None and isinstance(transport, asyncio.Transport):
        _transports[key] = transport


def _forget(transport: asyncio.BaseTransport | None) -> None:
    key = _key(transport) if transport is not None else None
    if key is not None and _transports.get(key) is transport:
        del _transports[key]


class _HTTP(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        _note(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        _forget(self.transport)
        super().connection_lost(exc)


class _WebSocket(WebSocketsSansIOProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        _note(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        _forget(self.transport)
        super().connection_lost(exc)


class ClientGone(Exception):
    """The client stopped reading (or its socket was closed under us) and was cut off."""


def abort(scope: MutableMapping[str, Any]) -> bool:
    """Cut the TCP connection of this request or socket at once (buffered data is
    discarded). False when the server is not ours (e.g. a test client)."""
    client = scope.get("client")
    if not client:
        return False
    transport = _transports.pop((str(client[0]), int(client[1])), None)
    if transport is None:
        return False
    transport.abort()
    return True


def uvicorn_config(config: Config, app: Any, *, log_level: str | None = None) -> UvicornConfig:
    return UvicornConfig(
        app,
        host=config.host,
        port=config.port,
        log_level=log_level or config.log_level,
        http=_HTTP,
        ws=_WebSocket,
        # uvicorn closes frames over ws_max_size with 1009; keep it above our own limit
        # so an oversize frame gets a clear error event instead.
        ws_max_size=config.ws_max_frame_bytes * 2 + 65536,
        ws_ping_interval=config.ws_ping_interval,
        ws_ping_timeout=config.ws_ping_interval,
        timeout_graceful_shutdown=5,
        lifespan="on",
    )


def server(config: Config, *, log_level: str | None = None) -> Server:
    """A uvicorn server for `create_app(config)` (not started); SIGTERM drains it."""
    from warmloop.app import create_app
    from warmloop.transport.worker import DrainingServer, WorkerHeader

    app = create_app(config)
    uvicorn = uvicorn_config(config, WorkerHeader(app, config.worker), log_level=log_level)
    return DrainingServer(uvicorn, app, config.drain_timeout)
