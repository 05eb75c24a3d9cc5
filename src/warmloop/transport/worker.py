"""What makes a server a worker of a fleet (docs/fleet.md): every answer names the worker
(`x-warmloop-worker`), and SIGTERM drains instead of stopping.

Draining: `/healthz` answers 503 (a proxy stops sending new sessions), new WebSocket
upgrades and creates are refused with 503 `server_draining` (HAProxy retries those on
another worker), each socket is closed with 1012 (service restart: reconnect) as soon
as its running responses have ended, and the server stops once nothing runs or after
--drain-timeout. With --kv-disk-dir, the drain first writes every durable chain it
holds to disk (idle ones at once, running ones as they finish), so the next worker (or
this one, restarted) continues them warm. A second SIGTERM, or Ctrl-C, stops at once.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from types import FrameType
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn import Config as UvicornConfig
from uvicorn import Server

from warmloop.fleet.keys import WORKER_HEADER
from warmloop.transport.runtime import Runtime

log = logging.getLogger("warmloop")

# The ASGI messages that open an answer: their headers get the worker's id.
_STARTS = ("http.response.start", "websocket.accept", "websocket.http.response.start")


class WorkerHeader:
    """ASGI middleware: `x-warmloop-worker: <id>` on every HTTP answer, WebSocket accept
    and upgrade denial (streams pass through untouched)."""

    def __init__(self, app: ASGIApp, worker_id: str) -> None:
        self.app = app
        self.header = (WORKER_HEADER.encode(), worker_id.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return

        async def named(message: Message) -> None:
            if message["type"] in _STARTS:
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        await self.app(scope, receive, named)


class DrainingServer(Server):
    """uvicorn's server, with SIGTERM as a drain (see the module's docstring)."""

    def __init__(self, config: UvicornConfig, app: Any, drain_timeout: float) -> None:
        super().__init__(config)
        self.app = app  # the FastAPI app: its state holds the Runtime once it has started
        self.drain_timeout = drain_timeout
        self._drain_requested = False
        self._drain: asyncio.Task[None] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGTERM and not self._drain_requested and self.started:
            self._drain_requested = True  # on_tick starts it on the event loop
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self._drain_requested and self._drain is None:
            self._drain = asyncio.create_task(self._drain_then_exit(), name="drain")
        return await super().on_tick(counter)

    async def _drain_then_exit(self) -> None:
        runtime: Runtime = self.app.state.runtime
        log.info("SIGTERM: draining (at most %g s)", self.drain_timeout)
        runtime.draining.set()
        deadline = time.monotonic() + self.drain_timeout
        # With a KV disk tier: every durable chain held now is written at once, each
        # running one as it finishes (the engine stops only after the writes are done).
        engine = runtime.service.engine
        try:
            if engine.alive():
                persisted = asyncio.wrap_future(engine.persist(drain=True))
                queued = await asyncio.wait_for(persisted, max(deadline - time.monotonic(), 0))
                if queued:
                    log.info("drain: %d idle chains queued to the KV disk tier", queued)
        except TimeoutError:
            log.warning("drain: the engine did not get to writing chains to disk in time")
        except Exception:
            log.exception("drain: writing chains to disk failed")
        while runtime.busy() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        if runtime.busy():
            log.warning("drain timed out with responses still running; stopping anyway")
        else:
            log.info("drained: nothing runs; stopping")
        self.should_exit = True
