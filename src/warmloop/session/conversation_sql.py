"""Conversations in the response store's database (SQLite or PostgreSQL; the tables are
`store_sql.MIGRATIONS[1]`): every change is one transaction on that store's writer
thread, reads go to its read connection. Nothing is cached in memory: workers of a
fleet share the database, and a turn reads its conversation whole anyway.

Items keep their order by `position`; an append reserves its positions by moving the
conversation's `next_position` (an UPDATE, which also locks the conversation's row on
PostgreSQL until the transaction ends, so two workers appending at once do not collide).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from warmloop.protocol.items import Item, ItemReference, item_to_wire, parse_item
from warmloop.session.conversations import (
    Conversation,
    ItemPage,
    Order,
    unique_ids,
    unknown_after,
)
from warmloop.session.store_sql import SQLResponseStore

IDS_PER_QUERY = 500  # SQLite and PostgreSQL bound the parameters of one statement


def _item_json(item: Item) -> str:
    return json.dumps(item_to_wire(item, stored=True), ensure_ascii=False)


def _item(raw: str) -> Item:
    item = parse_item(json.loads(raw), 0)
    assert not isinstance(item, ItemReference)
    return item


class SQLConversationStore:
    """The ConversationStore over `db`'s connections and writer thread (thread-safe)."""

    def __init__(self, db: SQLResponseStore) -> None:
        self.db = db

    def _insert(self, db: Any, conversation_id: str, start: int, items: Sequence[Item]) -> None:
        sql = self.db.query(
            "INSERT INTO conversation_items (conversation_id, position, id, item) "
            "VALUES (?, ?, ?, ?)"
        )
        for k, item in enumerate(items):
            db.execute(sql, (conversation_id, start + k, item.id, _item_json(item)))

    def create(self, conversation: Conversation, items: Sequence[Item]) -> tuple[Item, ...]:
        stored = unique_ids(items, set())
        c = conversation

        def write(db: Any) -> None:
            db.execute(
                self.db.query(
                    "INSERT INTO conversations (id, owner, created_at, metadata, next_position) "
                    "VALUES (?, ?, ?, ?, ?)"
                ),
                (c.id, c.owner, c.created_at, json.dumps(c.metadata), len(stored)),
            )
            self._insert(db, c.id, 0, stored)

        self.db.transaction(write)
        return stored

    def get(self, conversation_id: str, owner: str) -> Conversation | None:
        rows = self.db.rows(
            "SELECT created_at, metadata FROM conversations WHERE id = ? AND owner = ?",
            (conversation_id, owner),
        )
        if not rows:
            return None
        created_at, metadata = rows[0]
        return Conversation(conversation_id, owner, float(created_at), json.loads(metadata))

    def set_metadata(
        self, conversation_id: str, owner: str, metadata: dict[str, str]
    ) -> Conversation | None:
        def write(db: Any) -> bool:
            sql = self.db.query("UPDATE conversations SET metadata = ? WHERE id = ? AND owner = ?")
            return bool(db.execute(sql, (json.dumps(metadata), conversation_id, owner)).rowcount)

        if not self.db.transaction(write):
            return None
        return self.get(conversation_id, owner)

    def delete(self, conversation_id: str, owner: str) -> bool:
        def write(db: Any) -> bool:
            sql = self.db.query("DELETE FROM conversations WHERE id = ? AND owner = ?")
            if not db.execute(sql, (conversation_id, owner)).rowcount:
                return False
            sql = self.db.query("DELETE FROM conversation_items WHERE conversation_id = ?")
            db.execute(sql, (conversation_id,))
            return True

        return self.db.transaction(write)

    def items(self, conversation_id: str, owner: str) -> tuple[Item, ...] | None:
        if self.get(conversation_id, owner) is None:
            return None
        rows = self.db.rows(
            "SELECT item FROM conversation_items WHERE conversation_id = ? ORDER BY position",
            (conversation_id,),
        )
        return tuple(_item(r[0]) for r in rows)

    def page(
        self, conversation_id: str, owner: str, *, after: str | None, limit: int, order: Order
    ) -> ItemPage | None:
        if self.get(conversation_id, owner) is None:
            return None
        where, args = "conversation_id = ?", [conversation_id]
        if after is not None:
            found = self.db.rows(
                "SELECT position FROM conversation_items WHERE conversation_id = ? AND id = ?",
                (conversation_id, after),
            )
            if not found:
                raise unknown_after(after)
            where += " AND position > ?" if order == "asc" else " AND position < ?"
            args.append(found[0][0])
        direction = "ASC" if order == "asc" else "DESC"
        rows = self.db.rows(
            f"SELECT item FROM conversation_items WHERE {where} "
            f"ORDER BY position {direction} LIMIT ?",
            (*args, limit + 1),
        )
        return ItemPage(tuple(_item(r[0]) for r in rows[:limit]), len(rows) > limit)

    def item(self, conversation_id: str, owner: str, item_id: str) -> Item | None:
        rows = self.db.rows(
            "SELECT i.item FROM conversation_items i JOIN conversations c "
            "ON c.id = i.conversation_id WHERE c.id = ? AND c.owner = ? AND i.id = ?",
            (conversation_id, owner, item_id),
        )
        return _item(rows[0][0]) if rows else None

    def append(
        self, conversation_id: str, owner: str, items: Sequence[Item]
    ) -> tuple[Item, ...] | None:
        def write(db: Any) -> tuple[Item, ...] | None:
            q = self.db.query
            moved = db.execute(
                q(
                    "UPDATE conversations SET next_position = next_position + ? "
                    "WHERE id = ? AND owner = ?"
                ),
                (len(items), conversation_id, owner),
            )
            if not moved.rowcount:
                return None
            sql = q("SELECT next_position FROM conversations WHERE id = ?")
            end = int(db.execute(sql, (conversation_id,)).fetchone()[0])
            taken: set[str] = set()
            ids = [i.id for i in items]
            select = "SELECT id FROM conversation_items WHERE conversation_id = ? AND id IN "
            for k in range(0, len(ids), IDS_PER_QUERY):  # under the databases' bound
                chunk = ids[k : k + IDS_PER_QUERY]
                sql = q(select + "(" + ", ".join("?" * len(chunk)) + ")")
                taken.update(r[0] for r in db.execute(sql, (conversation_id, *chunk)))
            stored = unique_ids(items, taken)
            self._insert(db, conversation_id, end - len(stored), stored)
            return stored

        if not items:
            return () if self.get(conversation_id, owner) is not None else None
        return self.db.transaction(write)

    def delete_item(self, conversation_id: str, owner: str, item_id: str) -> bool:
        def write(db: Any) -> bool:
            sql = self.db.query(
                "DELETE FROM conversation_items WHERE conversation_id = ? AND id = ? AND "
                "conversation_id IN (SELECT id FROM conversations WHERE id = ? AND owner = ?)"
            )
            return bool(
                db.execute(sql, (conversation_id, item_id, conversation_id, owner)).rowcount
            )

        return self.db.transaction(write)
