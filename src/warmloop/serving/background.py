"""Background responses (`background: true`, HTTP only, store:true).

The create answers at once with the response `queued`; the response runs as a task of
the server, not of the request, so it survives its client. Its events are kept in
order, so `GET /v1/responses/{id}?stream=true&starting_after=N` replays them from any
sequence number and then follows the run live; they are kept until --background-ttl
seconds after the response ended (then only GET of the stored response remains).
`cancel` stops it like any running response.

Durability: a `queued` record is in the store before the create answers, and the final
record replaces it when the run ends. A server that stops mid-run leaves that record
behind; the next start marks it `failed` (`ResponseStore.fail_unfinished`), so a
background response is never lost and never stays `in_progress` forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from warmloop.protocol.errors import InvalidRequest
from warmloop.protocol.events import TERMINAL_EVENTS

Event = dict[str, Any]


@dataclass(eq=False)
class BackgroundRun:
    id: str
    tenant: str
    events: list[Event] = field(default_factory=list)
    ended_at: float | None = None
    task: asyncio.Task[None] | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def consume(self, stream: AsyncGenerator[Event]) -> None:
        """Run the response to its end, keeping every event (the server's task)."""
        try:
            async with contextlib.aclosing(stream) as events:
                async for event in events:
                    self.events.append(event)
                    self._wake()
        finally:
            self.ended_at = time.monotonic()
            self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def follow(self, after: int) -> AsyncIterator[Event]:
        """Events with a sequence number above `after`, then new ones as they come,
        until the run's last event."""
        i = 0
        while True:
            while i < len(self.events):
                event = self.events[i]
                i += 1
                if event.get("sequence_number", -1) > after:
                    yield event
                if event["type"] in TERMINAL_EVENTS:
                    return
            if self.ended_at is not None:
                return
            await self._changed.wait()


class BackgroundRuns:
    """Background runs by id, each kept until `ttl_s` after it ended. Owned by the event
    loop."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._runs: dict[str, BackgroundRun] = {}

    def add(self, run: BackgroundRun) -> None:
        self._purge()
        self._runs[run.id] = run

    def get(self, response_id: str, tenant: str) -> BackgroundRun:
        """The run whose events a GET may stream, or a clear error."""
        self._purge()
        run = self._runs.get(response_id)
        if run is None or run.tenant != tenant:
            raise InvalidRequest(
                f"Response '{response_id}' has no events to stream: only background "
                "responses stream from GET, until --background-ttl seconds after they end.",
                param="stream",
            )
        return run

    def _purge(self) -> None:
        now = time.monotonic()
        for key, run in list(self._runs.items()):
            if run.ended_at is not None and now - run.ended_at > self.ttl_s:
                del self._runs[key]

    async def close(self) -> None:
        """Stop every run (server shutdown): their records stay `queued` or
        `in_progress` in the store, and the next start marks them failed."""
        tasks = [r.task for r in self._runs.values() if r.task is not None and not r.task.done()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
