"""Conversations (OpenAI's Conversations API): the records, the store interface and its
in-memory implementation, and what the event loop keeps of each conversation for the
responses that run on it (its latest chain, and whether one runs now).

A conversation is an owner, its metadata and an ordered list of items; an item's id is
unique within its conversation (an added item whose id is taken gets a new one). The
SQL implementation is `conversation_sql.py`, on the response store's database.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol

from warmloop.protocol.errors import ConversationLocked, InvalidRequest
from warmloop.protocol.items import (
    CompactionItem,
    FunctionCallItem,
    FunctionCallOutputItem,
    Item,
    MessageItem,
    item_size,
    new_id,
)
from warmloop.session.response_store import ChainState

Order = Literal["asc", "desc"]


@dataclass(frozen=True)
class Conversation:
    id: str
    owner: str
    created_at: float  # wall-clock seconds
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ItemPage:
    """One page of a conversation's items, in the order asked for."""

    items: tuple[Item, ...]
    has_more: bool


def new_conversation(owner: str, metadata: dict[str, str] | None = None) -> Conversation:
    return Conversation(new_id("conv"), owner, time.time(), dict(metadata or {}))


def _prefix(item: Item) -> str:
    if isinstance(item, MessageItem):
        return "msg"
    if isinstance(item, FunctionCallItem):
        return "fc"
    if isinstance(item, FunctionCallOutputItem):
        return "fco"
    if isinstance(item, CompactionItem):
        return "cmp"
    return "rs"


def unique_ids(items: Iterable[Item], taken: set[str]) -> tuple[Item, ...]:
    """`items` with a new id for each one whose id is in `taken` or came earlier in
    `items` (a referenced or resent item added again is a new item of the conversation)."""
    seen = set(taken)
    out: list[Item] = []
    for item in items:
        if item.id in seen:
            item = replace(item, id=new_id(_prefix(item)))
        seen.add(item.id)
        out.append(item)
    return tuple(out)


def page_of(items: Sequence[Item], *, after: str | None, limit: int, order: Order) -> ItemPage:
    """The page of `items` (oldest first) after the item `after`, in `order`, at most
    `limit` long. An `after` that is not in the conversation is a 400."""
    ordered = list(items) if order == "asc" else list(reversed(items))
    start = 0
    if after is not None:
        ids = [i.id for i in ordered]
        if after not in ids:
            raise unknown_after(after)
        start = ids.index(after) + 1
    return ItemPage(tuple(ordered[start : start + limit]), len(ordered) > start + limit)


def unknown_after(after: str) -> InvalidRequest:
    return InvalidRequest(f"Item '{after}' is not in this conversation.", param="after")


class ConversationStore(Protocol):
    """Where conversations live; thread-safe, and every call may block (on disk): call
    it from a worker thread, never the event loop. Owners never see each other's."""

    def create(self, conversation: Conversation, items: Sequence[Item]) -> tuple[Item, ...]:
        """Store a new conversation with its first items; returns them as stored."""
        ...

    def get(self, conversation_id: str, owner: str) -> Conversation | None: ...
    def set_metadata(
        self, conversation_id: str, owner: str, metadata: dict[str, str]
    ) -> Conversation | None: ...
    def delete(self, conversation_id: str, owner: str) -> bool: ...
    def items(self, conversation_id: str, owner: str) -> tuple[Item, ...] | None:
        """Every item, oldest first; None: no such conversation."""
        ...

    def page(
        self, conversation_id: str, owner: str, *, after: str | None, limit: int, order: Order
    ) -> ItemPage | None: ...
    def item(self, conversation_id: str, owner: str, item_id: str) -> Item | None: ...
    def append(
        self, conversation_id: str, owner: str, items: Sequence[Item]
    ) -> tuple[Item, ...] | None:
        """Add `items` at the end, all or none, in order; returns them as stored (ids
        made unique), or None when the conversation is gone."""
        ...

    def delete_item(self, conversation_id: str, owner: str, item_id: str) -> bool: ...


@dataclass
class _Held:
    conversation: Conversation
    items: list[Item]
    size: int


class InMemoryConversationStore:
    """`--store memory`: conversations in RAM, at most `max_conversations` and about
    `max_bytes` of items; the least recently used go first. Thread-safe."""

    def __init__(self, max_conversations: int, max_bytes: int) -> None:
        self.max_conversations = max_conversations
        self.max_bytes = max_bytes
        self._held: OrderedDict[str, _Held] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def create(self, conversation: Conversation, items: Sequence[Item]) -> tuple[Item, ...]:
        stored = unique_ids(items, set())
        with self._lock:
            held = _Held(conversation, list(stored), 0)
            self._held[conversation.id] = held
            self._resize(held)
        return stored

    def get(self, conversation_id: str, owner: str) -> Conversation | None:
        with self._lock:
            held = self._find(conversation_id, owner)
            return held.conversation if held else None

    def set_metadata(
        self, conversation_id: str, owner: str, metadata: dict[str, str]
    ) -> Conversation | None:
        with self._lock:
            held = self._find(conversation_id, owner)
            if held is None:
                return None
            held.conversation = replace(held.conversation, metadata=dict(metadata))
            return held.conversation

    def delete(self, conversation_id: str, owner: str) -> bool:
        with self._lock:
            held = self._find(conversation_id, owner)
            if held is None:
                return False
            del self._held[conversation_id]
            self._bytes -= held.size
            return True

    def items(self, conversation_id: str, owner: str) -> tuple[Item, ...] | None:
        with self._lock:
            held = self._find(conversation_id, owner)
            return tuple(held.items) if held else None

    def page(
        self, conversation_id: str, owner: str, *, after: str | None, limit: int, order: Order
    ) -> ItemPage | None:
        items = self.items(conversation_id, owner)
        return None if items is None else page_of(items, after=after, limit=limit, order=order)

    def item(self, conversation_id: str, owner: str, item_id: str) -> Item | None:
        for item in self.items(conversation_id, owner) or ():
            if item.id == item_id:
                return item
        return None

    def append(
        self, conversation_id: str, owner: str, items: Sequence[Item]
    ) -> tuple[Item, ...] | None:
        with self._lock:
            held = self._find(conversation_id, owner)
            if held is None:
                return None
            stored = unique_ids(items, {i.id for i in held.items})
            held.items.extend(stored)
            self._resize(held)
            return stored

    def delete_item(self, conversation_id: str, owner: str, item_id: str) -> bool:
        with self._lock:
            held = self._find(conversation_id, owner)
            kept = [i for i in held.items if i.id != item_id] if held else []
            if held is None or len(kept) == len(held.items):
                return False
            held.items = kept
            self._resize(held)
            return True

    def _find(self, conversation_id: str, owner: str) -> _Held | None:
        held = self._held.get(conversation_id)
        if held is None or held.conversation.owner != owner:
            return None
        self._held.move_to_end(conversation_id)
        return held

    def _resize(self, held: _Held) -> None:
        """Account `held`'s new size, then drop the least recently used conversations
        (never `held`) while over a bound."""
        size = 256 + sum(item_size(i) for i in held.items)
        self._bytes += size - held.size
        held.size = size
        while len(self._held) > 1 and (
            len(self._held) > self.max_conversations or self._bytes > self.max_bytes
        ):
            oldest = next(iter(self._held))
            if oldest == held.conversation.id:
                break
            self._bytes -= self._held.pop(oldest).size

    def __len__(self) -> int:
        return len(self._held)


class ConversationChains:
    """Each conversation's latest chain (`ChainState`: the rendered text and the exact
    tokens of its last response), so that its next turn tokenizes only the new text, as a
    `previous_response_id` continuation does. In memory only, keyed by owner and id, at
    most `max_bytes` (the least recently used go: such a turn is tokenized whole, and the
    engine still finds its KV by prefix). Owner: the event loop."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._chains: OrderedDict[tuple[str, str], ChainState] = OrderedDict()
        self._bytes = 0

    @staticmethod
    def _size(chain: ChainState) -> int:
        return 4 * len(chain.tokens) + len(chain.text)

    def get(self, owner: str, conversation_id: str) -> ChainState | None:
        chain = self._chains.get((owner, conversation_id))
        if chain is not None:
            self._chains.move_to_end((owner, conversation_id))
        return chain

    def put(self, owner: str, conversation_id: str, chain: ChainState) -> None:
        self.drop(owner, conversation_id)
        self._chains[(owner, conversation_id)] = chain
        self._bytes += self._size(chain)
        while len(self._chains) > 1 and self._bytes > self.max_bytes:
            _, oldest = self._chains.popitem(last=False)
            self._bytes -= self._size(oldest)

    def drop(self, owner: str, conversation_id: str) -> None:
        chain = self._chains.pop((owner, conversation_id), None)
        if chain is not None:
            self._bytes -= self._size(chain)

    @property
    def bytes_used(self) -> int:
        return self._bytes


@dataclass(eq=False)
class ConversationLock:
    """A conversation held by one response, from its preparation to its end."""

    key: tuple[str, str]  # owner, conversation id
    held: set[tuple[str, str]]

    def release(self) -> None:
        """Idempotent: every way a response ends may call it."""
        self.held.discard(self.key)


class ConversationLocks:
    """The conversations a response runs on now: one at a time per conversation, so
    that every turn sees the one before it (OpenAI answers a second one the same way).
    Owner: the event loop."""

    def __init__(self) -> None:
        self._held: set[tuple[str, str]] = set()

    def acquire(self, owner: str, conversation_id: str) -> ConversationLock:
        key = (owner, conversation_id)
        if key in self._held:
            raise ConversationLocked(
                f"Another response is running on conversation '{conversation_id}'; "
                "retry once it has finished.",
                param="conversation",
            )
        self._held.add(key)
        return ConversationLock(key, self._held)

    def __len__(self) -> int:
        return len(self._held)
