"""Responses after `create`: the registry of running ones, and GET, DELETE, cancel and
input_items over it and the store.

A running response is answered from its live snapshot, a finished one from the store;
DELETE cancels a running one (it is then never saved) and makes every open connection
of the tenant forget it, so no socket can continue a deleted id.

Threads: everything here but the store is the event loop's (the registry of running
responses, their jobs' cancel flags, the connections' caches). The methods are
coroutines that change that state on the loop, in one step, and only then hand the
store's reads and writes to a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from warmloop.engine.request import Job
from warmloop.protocol.errors import InvalidRequest, NotFound, StoreUnavailable
from warmloop.protocol.items import item_to_wire
from warmloop.session.connection import Connection
from warmloop.session.conversations import ConversationLock
from warmloop.session.response_store import RecentIds, ResponseStore, StoredResponse

log = logging.getLogger("warmloop.responses")


@dataclass
class Live:
    """A response that was admitted and has not ended: enough to answer GET, cancel and
    DELETE."""

    job: Job
    snapshot: dict[str, Any]
    deleted: bool = False  # DELETE arrived while it ran: it is cancelled and never saved
    started: bool = False  # its stream began (else its client left before it did)
    conversation_lock: ConversationLock | None = None  # released when it ends

    def hand_over(self, job: Job) -> None:
        """The response's next phase runs `job` (its summary's job came first): a cancel
        that reached the first holds for it."""
        job.cancelled = job.cancelled or self.job.cancelled
        self.job = job


class LiveResponses:
    """Running responses by id. Owned by the event loop: only code running there adds,
    removes or reads entries."""

    def __init__(self) -> None:
        self._live: dict[str, Live] = {}

    def add(self, response_id: str, live: Live) -> None:
        self._live[response_id] = live

    def pop(self, response_id: str) -> Live | None:
        return self._live.pop(response_id, None)

    def of(self, response_id: str, tenant: str) -> Live | None:
        live = self._live.get(response_id)
        return live if live is not None and live.job.tenant == tenant else None

    def __len__(self) -> int:
        return len(self._live)


class Retrieval:
    def __init__(
        self, store: ResponseStore, live: LiveResponses, cancel: Callable[[Job], None]
    ) -> None:
        self.store = store
        self.live = live
        self.cancel_job = cancel
        # Open WebSocket connections, so a DELETE can drop a response from their caches.
        self.connections: weakref.WeakSet[Connection] = weakref.WeakSet()
        # Ids deleted lately: a create prepared before the DELETE and started after it
        # must not continue one
        self._deleted = RecentIds()

    def was_deleted(self, response_id: str) -> bool:
        return response_id in self._deleted

    async def get(self, response_id: str, tenant: str) -> dict[str, Any]:
        live = self.live.of(response_id, tenant)
        if live is not None and not live.deleted:
            return live.snapshot
        return (await self._record(response_id, tenant)).response

    async def delete(self, response_id: str, tenant: str) -> dict[str, Any]:
        """Delete a stored response. A running one is cancelled and will not be saved
        (one being saved deletes its own record: `ResponsesService._stream`); no
        connection can continue a deleted id afterwards."""
        self._deleted.add(response_id)
        live = self.live.of(response_id, tenant)
        if live is not None:
            live.deleted = True
            self.cancel_job(live.job)
        for connection in list(self.connections):
            if connection.tenant == tenant:
                connection.forget(response_id)
        deleted = await asyncio.to_thread(self.store.delete, response_id, tenant)
        if not deleted and live is None:
            raise _not_found(response_id)
        return {"id": response_id, "object": "response.deleted", "deleted": True}

    async def delete_saved(self, response_id: str, tenant: str) -> None:
        """A running response was deleted while its record was being saved: the record
        goes now (the DELETE's own store delete may have run before the save)."""
        try:
            await asyncio.to_thread(self.store.delete, response_id, tenant)
        except StoreUnavailable:
            log.warning(
                "response %s was deleted while it was saved; the store is down, "
                "so its record stays",
                response_id,
            )

    async def cancel(self, response_id: str, tenant: str) -> dict[str, Any]:
        live = self.live.of(response_id, tenant)
        if live is not None:
            self.cancel_job(live.job)
            return {**live.snapshot, "status": "cancelled"}
        # Already finished: answer with the response as it is (the SDK retries cancels).
        return await self.get(response_id, tenant)

    async def input_items(
        self, response_id: str, tenant: str, *, after: str | None, limit: int, order: str
    ) -> dict[str, Any]:
        record = await self._record(response_id, tenant)
        items = [item_to_wire(i) for i in record.input_items]
        if order == "desc":
            items.reverse()
        if after is not None:
            ids = [i["id"] for i in items]
            if after not in ids:
                raise InvalidRequest(f"Item '{after}' is not in this list.", param="after")
            items = items[ids.index(after) + 1 :]
        page = items[:limit]
        return {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(items) > limit,
        }

    async def _record(self, response_id: str, tenant: str) -> StoredResponse:
        record = await asyncio.to_thread(self.store.get, response_id, tenant)
        if record is None:
            raise _not_found(response_id)
        return record


def _not_found(response_id: str) -> NotFound:
    return NotFound(f"No response found with id '{response_id}'.", param="response_id")
