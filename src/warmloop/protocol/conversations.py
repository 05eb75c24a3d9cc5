"""The Conversations API's bodies and query parameters (`/v1/conversations...`),
validated: every bad one is a 400 naming its `param`. OpenAI's bounds: at most
MAX_ITEMS items per create or add, `metadata` as on a response, a page of 1-100 items.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from warmloop.protocol.errors import InvalidRequest
from warmloop.protocol.items import Item, ItemReference, parse_item
from warmloop.protocol.requests import (
    INCLUDABLE,
    SAFETY_IDENTIFIER_MAX_CHARS,
    Metadata,
    validation_error,
)

MAX_ITEMS = 20  # items per conversation create or items create
MAX_PAGE = 100
DEFAULT_PAGE = 20
M = TypeVar("M", bound=BaseModel)


class _CreateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[Any] | None = Field(default=None, max_length=MAX_ITEMS)
    metadata: Metadata | None = None
    # accepted for the SDK's sake; a local server does no abuse monitoring with it
    safety_identifier: str | None = Field(default=None, max_length=SAFETY_IDENTIFIER_MAX_CHARS)


class _UpdateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metadata: Metadata | None


class _ItemsBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[Any] = Field(min_length=1, max_length=MAX_ITEMS)


@dataclass(frozen=True)
class ConversationCreate:
    items: tuple[Item, ...]
    metadata: dict[str, str]


@dataclass(frozen=True)
class ItemsQuery:
    """`GET .../items`: the page after `after`, `limit` long, newest first by default."""

    after: str | None = None
    limit: int = DEFAULT_PAGE
    order: Literal["asc", "desc"] = "desc"
    include: tuple[str, ...] = ()


def _validate(model: type[M], raw: Any) -> M:
    if not isinstance(raw, dict):
        raise InvalidRequest("The request body must be a JSON object.", param=None)
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise validation_error(exc) from None


def _items(raw: list[Any]) -> tuple[Item, ...]:
    out: list[Item] = []
    for k, wire in enumerate(raw):
        item = parse_item(wire, k, "items")
        if isinstance(item, ItemReference):
            raise InvalidRequest(
                "A conversation holds items, not references to them: send the item itself.",
                param=f"items[{k}].type",
            )
        out.append(item)
    return tuple(out)


def parse_conversation_create(raw: Any) -> ConversationCreate:
    """`POST /v1/conversations` (an empty body is an empty conversation)."""
    body = _validate(_CreateBody, {} if raw is None else raw)
    return ConversationCreate(_items(body.items or []), dict(body.metadata or {}))


def parse_metadata_update(raw: Any) -> dict[str, str]:
    """`POST /v1/conversations/{id}`: the metadata that replaces the old (null: none)."""
    if isinstance(raw, dict) and "metadata" not in raw:
        raise InvalidRequest("Missing required parameter: 'metadata'.", param="metadata")
    return dict(_validate(_UpdateBody, raw).metadata or {})


def parse_items_create(raw: Any) -> tuple[Item, ...]:
    """`POST /v1/conversations/{id}/items`: 1 to MAX_ITEMS items."""
    if isinstance(raw, dict) and "items" not in raw:
        raise InvalidRequest("Missing required parameter: 'items'.", param="items")
    return _items(_validate(_ItemsBody, raw).items)


def parse_include(values: list[str]) -> tuple[str, ...]:
    """`include` (a repeated query parameter): what a create's `include` takes."""
    for k, value in enumerate(values):
        if value not in INCLUDABLE:
            raise InvalidRequest(
                f"Unsupported include value '{value}' (supported: {', '.join(INCLUDABLE)}).",
                param=f"include[{k}]",
            )
    return tuple(values)


def parse_items_query(
    *, after: str | None, limit: str | None, order: str | None, include: list[str]
) -> ItemsQuery:
    """The query of `GET .../items`, as the URL gives it (strings)."""
    n = DEFAULT_PAGE
    if limit is not None:
        try:
            n = int(limit)
        except ValueError:
            n = 0
        if not 1 <= n <= MAX_PAGE:
            raise InvalidRequest(
                f"'limit' must be an integer from 1 to {MAX_PAGE}; got '{limit}'.", param="limit"
            )
    if order not in (None, "asc", "desc"):
        raise InvalidRequest(f"'order' must be 'asc' or 'desc'; got '{order}'.", param="order")
    if after == "":
        raise InvalidRequest("'after' must be an item id.", param="after")
    return ItemsQuery(after, n, "asc" if order == "asc" else "desc", parse_include(include))
