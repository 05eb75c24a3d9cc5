"""What the routes need from the app: config, the responses service, keys, live counts."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

from warmloop.config import Config
from warmloop.metrics import Metrics
from warmloop.protocol.errors import ServerDraining, StoreUnavailable
from warmloop.serving.responses_service import ResponsesService
from warmloop.transport.auth import KeyRing
from warmloop.transport.connections import Transports


@dataclass
class Runtime:
    """What the routes share; its counters are the event loop's (routes run there)."""

    config: Config
    service: ResponsesService
    keys: KeyRing
    metrics: Metrics
    transports: Transports  # the server's TCP connections, to cut a client off
    started_at: int = field(default_factory=lambda: int(time.time()))
    connections: int = 0
    tenant_connections: Counter[str] = field(default_factory=Counter)
    lanes: int = 0  # named streams open across all sockets
    # SIGTERM: refuse new sockets and creates, close sockets as they go idle, then stop
    draining: asyncio.Event = field(default_factory=asyncio.Event)

    def busy(self) -> bool:
        """Whether a drain must still wait: a socket is open or a response runs."""
        return self.connections > 0 or len(self.service.live) > 0

    def refuse_if_draining(self) -> None:
        if self.draining.is_set():
            raise ServerDraining("This worker is shutting down; retry on another one.")

    async def health_failures(self) -> list[str]:
        """The parts that do not answer now: engine, store_writer, store."""
        failing = []
        if self.draining.is_set():
            failing.append("draining")
        if not self.service.engine.alive():
            failing.append("engine")
        store = self.service.store
        if not store.writer_alive():
            failing.append("store_writer")
        try:
            await asyncio.wait_for(asyncio.to_thread(store.ping), self.config.store_timeout_s)
        except (StoreUnavailable, TimeoutError):
            failing.append("store")
        return failing
