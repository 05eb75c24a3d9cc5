"""uvicorn's configuration for one server, and the hook that lets a route drop a
client's TCP connection.

ASGI gives an app no way to abort a connection, and closing one politely waits for the
client to read what is buffered: a client that never reads would hold its socket open
forever. uvicorn's HTTP and WebSocket protocols are subclassed only to note each
connection's transport by the client's address (asyncio's `connection_made` and
`connection_lost`) in the server's `Transports`, so `abort(scope)` can cut it after a
write timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import Any

from uvicorn import Config as UvicornConfig
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from warmloop.config import Config


class ClientGone(Exception):
    """The client stopped reading (or its socket was closed under us) and was cut off."""


class Transports:
    """The TCP transports of one server's connections, by client address, so a route
    can cut its client off. Owned by the server's event loop thread: uvicorn's protocols
    add and remove entries there and routes abort there; nothing else touches it."""

    def __init__(self) -> None:
        self._by_peer: dict[tuple[str, int], asyncio.Transport] = {}

    def note(self, transport: asyncio.BaseTransport) -> None:
        key = _key(transport)
        if key is not None and isinstance(transport, asyncio.Transport):
            self._by_peer[key] = transport

    def forget(self, transport: asyncio.BaseTransport | None) -> None:
        key = _key(transport) if transport is not None else None
        if key is not None and self._by_peer.get(key) is transport:
            del self._by_peer[key]

    def abort(self, scope: MutableMapping[str, Any]) -> bool:
        """Cut the TCP connection of this request or socket at once (buffered data is
        discarded). False when the server is not ours (e.g. a test client)."""
        client = scope.get("client")
        if not client:
            return False
        transport = self._by_peer.pop((str(client[0]), int(client[1])), None)
        if transport is None:
            return False
        transport.abort()
        return True

    def protocols(self) -> tuple[type[HttpToolsProtocol], type[WebSocketsSansIOProtocol]]:
        """uvicorn's HTTP and WebSocket protocols, noting their transports here."""
        transports = self

        class HTTP(HttpToolsProtocol):
            def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
                super().connection_made(transport)
                transports.note(transport)

            def connection_lost(self, exc: Exception | None) -> None:
                transports.forget(self.transport)
                super().connection_lost(exc)

        class WebSocket(WebSocketsSansIOProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                super().connection_made(transport)
                transports.note(transport)

            def connection_lost(self, exc: Exception | None) -> None:
                transports.forget(self.transport)
                super().connection_lost(exc)

        return HTTP, WebSocket


def _key(transport: asyncio.BaseTransport) -> tuple[str, int] | None:
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return (str(peer[0]), int(peer[1]))
    return None


def uvicorn_config(
    config: Config, app: Any, transports: Transports, *, log_level: str | None = None
) -> UvicornConfig:
    http, ws = transports.protocols()
    return UvicornConfig(
        app,
        host=config.host,
        port=config.port,
        log_level=log_level or config.log_level,
        http=http,
        ws=ws,
        # uvicorn closes frames over ws_max_size with 1009; keep it above our own limit
        # so an oversize frame gets a clear error event instead.
        ws_max_size=config.ws_max_frame_bytes * 2 + 65536,
        ws_ping_interval=config.ws_ping_interval,
        ws_ping_timeout=config.ws_ping_interval,
        timeout_graceful_shutdown=5,
        lifespan="on",
    )
