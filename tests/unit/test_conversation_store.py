"""Conversation stores: the in-memory one and SQLite keep the same contract (owners,
order, unique item ids, pagination, all-or-nothing appends); the chains and the locks
the event loop keeps of each conversation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from warmloop.protocol.errors import ConversationLocked, InvalidRequest
from warmloop.protocol.items import (
    FunctionCallItem,
    FunctionCallOutputItem,
    Item,
    MessageItem,
    ReasoningItem,
)
from warmloop.session.conversation_sql import SQLConversationStore
from warmloop.session.conversations import (
    ConversationChains,
    ConversationLocks,
    ConversationStore,
    InMemoryConversationStore,
    new_conversation,
    page_of,
    unique_ids,
)
from warmloop.session.response_store import ChainState, InMemoryResponseStore
from warmloop.session.store_sql import SQLiteResponseStore


def msg(n: int, role: str = "user") -> MessageItem:
    return MessageItem(f"msg_{n}", role, f"text {n}")  # type: ignore[arg-type]


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ConversationStore]:
    if request.param == "memory":
        yield InMemoryConversationStore(100, 10**9)
        return
    db = SQLiteResponseStore(tmp_path / "c.db", cache=InMemoryResponseStore(10, 10**6))
    try:
        yield SQLConversationStore(db)
    finally:
        db.close()


def test_items_keep_their_order_kind_and_owner(store: ConversationStore) -> None:
    conv = new_conversation("a", {"k": "v"})
    first: list[Item] = [
        msg(0),
        FunctionCallItem("fc_1", "call_1", "f", '{"x": 1}'),
        FunctionCallOutputItem("fco_1", "call_1", "out"),
        ReasoningItem("rs_1", "thinking"),
    ]
    assert store.create(conv, first) == tuple(first)
    got = store.get(conv.id, "a")
    assert got is not None and got.metadata == {"k": "v"} and got.owner == "a"
    assert int(got.created_at) == int(conv.created_at)
    assert store.items(conv.id, "a") == tuple(first)
    assert store.append(conv.id, "a", [msg(1, "assistant"), msg(2)]) == (
        msg(1, "assistant"),
        msg(2),
    )
    assert [i.id for i in store.items(conv.id, "a") or ()] == [
        "msg_0",
        "fc_1",
        "fco_1",
        "rs_1",
        "msg_1",
        "msg_2",
    ]
    assert store.item(conv.id, "a", "fc_1") == first[1]
    # another owner sees, changes and deletes nothing
    assert store.get(conv.id, "b") is None and store.items(conv.id, "b") is None
    assert store.item(conv.id, "b", "fc_1") is None
    assert store.append(conv.id, "b", [msg(9)]) is None
    assert store.set_metadata(conv.id, "b", {}) is None
    assert not store.delete_item(conv.id, "b", "msg_0") and not store.delete(conv.id, "b")
    assert store.page(conv.id, "b", after=None, limit=5, order="asc") is None
    assert len(store.items(conv.id, "a") or ()) == 6


def test_taken_ids_get_new_ones(store: ConversationStore) -> None:
    conv = new_conversation("a")
    stored = store.create(conv, [msg(0), msg(0)])
    assert stored[0].id == "msg_0" and stored[1].id.startswith("msg_") and stored[1].id != "msg_0"
    again = store.append(conv.id, "a", [msg(0), FunctionCallOutputItem("msg_0", "c", "o")])
    assert again is not None
    ids = [i.id for i in store.items(conv.id, "a") or ()]
    assert len(set(ids)) == 4
    assert again[1].id.startswith("fco_") and again[1] == FunctionCallOutputItem(
        again[1].id, "c", "o"
    )


def test_metadata_update_replaces_it(store: ConversationStore) -> None:
    conv = new_conversation("a", {"x": "1"})
    store.create(conv, [])
    updated = store.set_metadata(conv.id, "a", {"y": "2"})
    assert updated is not None and updated.metadata == {"y": "2"}
    assert (store.get(conv.id, "a") or conv).metadata == {"y": "2"}
    assert store.set_metadata("conv_nope", "a", {}) is None


def test_delete_item_and_conversation(store: ConversationStore) -> None:
    conv = new_conversation("a")
    store.create(conv, [msg(0), msg(1), msg(2)])
    assert store.delete_item(conv.id, "a", "msg_1")
    assert not store.delete_item(conv.id, "a", "msg_1")
    assert [i.id for i in store.items(conv.id, "a") or ()] == ["msg_0", "msg_2"]
    assert store.append(conv.id, "a", [msg(3)]) is not None  # order holds after a delete
    assert [i.id for i in store.items(conv.id, "a") or ()] == ["msg_0", "msg_2", "msg_3"]
    assert store.delete(conv.id, "a")
    assert not store.delete(conv.id, "a")
    assert store.get(conv.id, "a") is None and store.items(conv.id, "a") is None
    assert store.append(conv.id, "a", [msg(4)]) is None
    assert store.append(conv.id, "a", []) is None
    assert store.item(conv.id, "a", "msg_0") is None


@pytest.mark.parametrize("order", ["asc", "desc"])
@pytest.mark.parametrize("limit", [1, 2, 3, 5, 7, 100])
def test_paging_walks_every_item_once(store: ConversationStore, order: str, limit: int) -> None:
    conv = new_conversation("a")
    store.create(conv, [msg(k) for k in range(7)])
    seen: list[str] = []
    after = None
    while True:
        page = store.page(conv.id, "a", after=after, limit=limit, order=order)  # type: ignore[arg-type]
        assert page is not None and len(page.items) <= limit
        seen += [i.id for i in page.items]
        if not page.has_more:
            break
        after = page.items[-1].id
    expected = [f"msg_{k}" for k in range(7)]
    assert seen == (expected if order == "asc" else expected[::-1])
    # the same pages as the pure rule the in-memory store uses
    ref = page_of([msg(k) for k in range(7)], after=None, limit=limit, order=order)  # type: ignore[arg-type]
    first = store.page(conv.id, "a", after=None, limit=limit, order=order)  # type: ignore[arg-type]
    assert first == ref


def test_page_edges(store: ConversationStore) -> None:
    conv = new_conversation("a")
    store.create(conv, [msg(k) for k in range(3)])
    last = store.page(conv.id, "a", after="msg_2", limit=5, order="asc")
    assert last is not None and last.items == () and not last.has_more
    exact = store.page(conv.id, "a", after=None, limit=3, order="desc")
    assert exact is not None and not exact.has_more and exact.items[0].id == "msg_2"
    more = store.page(conv.id, "a", after="msg_2", limit=1, order="desc")
    assert more is not None and more.items == (msg(1),) and more.has_more
    with pytest.raises(InvalidRequest) as err:
        store.page(conv.id, "a", after="msg_nope", limit=5, order="asc")
    assert err.value.param == "after"
    empty = new_conversation("a")
    store.create(empty, [])
    page = store.page(empty.id, "a", after=None, limit=20, order="desc")
    assert page is not None and page.items == () and not page.has_more


def test_unique_ids_keeps_free_ones() -> None:
    items = unique_ids([msg(0), msg(1)], {"msg_1"})
    assert items[0] == msg(0) and items[1].id != "msg_1" and items[1].id.startswith("msg_")


def test_in_memory_bounds_drop_the_least_recently_used() -> None:
    store = InMemoryConversationStore(max_conversations=2, max_bytes=10**9)
    a, b, c = (new_conversation("o") for _ in range(3))
    store.create(a, [msg(0)])
    store.create(b, [msg(0)])
    assert store.get(a.id, "o") is not None  # a is now the most recent
    store.create(c, [msg(0)])
    assert store.get(b.id, "o") is None and store.get(a.id, "o") is not None
    small = InMemoryConversationStore(max_conversations=10, max_bytes=2000)
    big = new_conversation("o")
    small.create(big, [MessageItem("m", "user", "x" * 1500)])
    other = new_conversation("o")
    small.create(other, [MessageItem("m", "user", "y" * 1500)])
    assert small.get(big.id, "o") is None and small.get(other.id, "o") is not None
    assert len(small) == 1


def test_chains_are_per_owner_and_bounded() -> None:
    one = ChainState.of("hello", range(10))
    chains = ConversationChains(max_bytes=2 * (40 + 5))
    chains.put("a", "conv_1", one)
    assert chains.get("a", "conv_1") is one and chains.get("b", "conv_1") is None
    chains.put("a", "conv_2", one)
    chains.get("a", "conv_1")  # conv_1 is now the most recent
    chains.put("a", "conv_3", one)
    assert chains.get("a", "conv_2") is None and chains.get("a", "conv_1") is one
    assert chains.bytes_used == 2 * 45
    chains.drop("a", "conv_1")
    assert chains.get("a", "conv_1") is None and chains.bytes_used == 45


def test_a_conversation_runs_one_response_at_a_time() -> None:
    locks = ConversationLocks()
    held = locks.acquire("a", "conv_1")
    with pytest.raises(ConversationLocked) as err:
        locks.acquire("a", "conv_1")
    assert (err.value.status, err.value.code, err.value.param) == (
        400,
        "conversation_locked",
        "conversation",
    )
    other = locks.acquire("b", "conv_1")  # another owner's conversation of that id
    held.release()
    held.release()  # idempotent
    assert len(locks) == 1
    locks.acquire("a", "conv_1").release()
    other.release()
    assert len(locks) == 0


def test_a_long_append_checks_every_id(store: ConversationStore) -> None:
    """More items than one id query takes (conversation_sql.IDS_PER_QUERY): a taken id
    past the first chunk still gets a new one."""
    conv = new_conversation("a")
    store.create(conv, [msg(1200)])
    stored = store.append(conv.id, "a", [msg(k) for k in range(1201)])
    assert stored is not None and len(stored) == 1201
    assert stored[1200].id != "msg_1200" and stored[1199].id == "msg_1199"
    ids = [i.id for i in store.items(conv.id, "a") or ()]
    assert len(ids) == len(set(ids)) == 1202
