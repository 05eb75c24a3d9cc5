"""The Conversations API (`/v1/conversations...`) over a `ConversationStore`, and what a
conversation is to the responses that run on it: the items before their input, the
place their input and output go once they complete, and the chain of the latest one.

Threads: the chains and locks are the event loop's (these coroutines and the responses
service run there); the store is read and written in worker threads, never on the loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from warmloop.protocol.conversations import ConversationCreate, ItemsQuery
from warmloop.protocol.errors import ConversationNotFound, NotFound
from warmloop.protocol.items import Item, ReasoningItem, item_to_wire
from warmloop.serving.sealing import Sealer
from warmloop.session.conversations import (
    Conversation,
    ConversationChains,
    ConversationLock,
    ConversationLocks,
    ConversationStore,
    new_conversation,
)
from warmloop.session.response_store import ChainState, StoredResponse

log = logging.getLogger("warmloop.conversations")


def conversation_object(c: Conversation) -> dict[str, Any]:
    return {
        "id": c.id,
        "object": "conversation",
        "created_at": int(c.created_at),
        "metadata": c.metadata,
    }


def item_list(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


class Conversations:
    def __init__(self, store: ConversationStore, sealer: Sealer, chain_bytes: int) -> None:
        self.store = store
        self.sealer = sealer
        self.chains = ConversationChains(chain_bytes)
        self.locks = ConversationLocks()

    # ----- the API ---------------------------------------------------------------------
    async def create(self, body: ConversationCreate, tenant: str) -> dict[str, Any]:
        conversation = new_conversation(tenant, body.metadata)
        items = self._opened(body.items, tenant)
        await asyncio.to_thread(self.store.create, conversation, items)
        return conversation_object(conversation)

    async def get(self, conversation_id: str, tenant: str) -> dict[str, Any]:
        return conversation_object(await self._conversation(conversation_id, tenant))

    async def update(
        self, conversation_id: str, tenant: str, metadata: dict[str, str]
    ) -> dict[str, Any]:
        found = await asyncio.to_thread(self.store.set_metadata, conversation_id, tenant, metadata)
        if found is None:
            raise ConversationNotFound(conversation_id)
        return conversation_object(found)

    async def delete(self, conversation_id: str, tenant: str) -> dict[str, Any]:
        self.chains.drop(tenant, conversation_id)
        if not await asyncio.to_thread(self.store.delete, conversation_id, tenant):
            raise ConversationNotFound(conversation_id)
        return {"id": conversation_id, "object": "conversation.deleted", "deleted": True}

    async def list_items(
        self, conversation_id: str, tenant: str, query: ItemsQuery
    ) -> dict[str, Any]:
        page = await asyncio.to_thread(
            lambda: self.store.page(
                conversation_id, tenant, after=query.after, limit=query.limit, order=query.order
            )
        )
        if page is None:
            raise ConversationNotFound(conversation_id)
        return item_list(self._wire(page.items, tenant, query.include), page.has_more)

    async def add_items(
        self, conversation_id: str, tenant: str, items: tuple[Item, ...], include: tuple[str, ...]
    ) -> dict[str, Any]:
        """Append `items` (what the client adds goes after everything there); the chain
        stays: the next turn uses it only if its rendering still extends it."""
        opened = self._opened(items, tenant)
        stored = await asyncio.to_thread(self.store.append, conversation_id, tenant, opened)
        if stored is None:
            raise ConversationNotFound(conversation_id)
        return item_list(self._wire(stored, tenant, include), False)

    async def get_item(
        self, conversation_id: str, item_id: str, tenant: str, include: tuple[str, ...]
    ) -> dict[str, Any]:
        item = await asyncio.to_thread(self.store.item, conversation_id, tenant, item_id)
        if item is None:
            await self._conversation(conversation_id, tenant)  # which of the two is missing
            raise _item_not_found(item_id)
        return self._wire((item,), tenant, include)[0]

    async def delete_item(self, conversation_id: str, item_id: str, tenant: str) -> dict[str, Any]:
        """Delete one item; returns the conversation. The chain goes with it (the next
        turn's rendering no longer extends it)."""
        conversation = await self._conversation(conversation_id, tenant)
        self.chains.drop(tenant, conversation_id)
        if not await asyncio.to_thread(self.store.delete_item, conversation_id, tenant, item_id):
            raise _item_not_found(item_id)
        return conversation_object(conversation)

    # ----- for the responses that run on a conversation (event loop) ---------------------
    def hold(self, conversation_id: str, tenant: str) -> ConversationLock:
        """The conversation for one response, from its preparation to its end; a second
        one while it runs is a 400 `conversation_locked`."""
        return self.locks.acquire(tenant, conversation_id)

    def chain(self, conversation_id: str, tenant: str) -> ChainState | None:
        return self.chains.get(tenant, conversation_id)

    async def record(self, conversation_id: str, record: StoredResponse) -> None:
        """A response on the conversation completed: its input and output items go to the
        end of it (one transaction), and its chain becomes the conversation's. Raises
        StoreUnavailable; a conversation deleted meanwhile keeps nothing."""
        items = record.input_items + record.output_items
        owner = record.owner
        stored = await asyncio.to_thread(self.store.append, conversation_id, owner, items)
        if stored is None:
            log.info("conversation %s was deleted while %s ran", conversation_id, record.id)
        elif record.chain is not None:
            self.chains.put(owner, conversation_id, record.chain)

    # ----- helpers ---------------------------------------------------------------------
    async def _conversation(self, conversation_id: str, tenant: str) -> Conversation:
        found = await asyncio.to_thread(self.store.get, conversation_id, tenant)
        if found is None:
            raise ConversationNotFound(conversation_id)
        return found

    def _opened(self, items: Iterable[Item], tenant: str) -> tuple[Item, ...]:
        """Reasoning sent back sealed (`encrypted_content`) is kept as its text."""
        out: list[Item] = []
        for n, item in enumerate(items):
            if isinstance(item, ReasoningItem) and item.sealed is not None:
                where = f"items[{n}].encrypted_content"
                item = replace(item, text=self.sealer.open(item.sealed, tenant, where), sealed=None)
            out.append(item)
        return tuple(out)

    def _wire(
        self, items: Iterable[Item], tenant: str, include: tuple[str, ...]
    ) -> list[dict[str, Any]]:
        seal = "reasoning.encrypted_content" in include
        out = []
        for item in items:
            wire = item_to_wire(item)
            if seal and isinstance(item, ReasoningItem):
                wire["encrypted_content"] = self.sealer.seal(item.text, tenant)
            out.append(wire)
        return out


def _item_not_found(item_id: str) -> NotFound:
    return NotFound(f"Item with id '{item_id}' not found.", param="item_id")
