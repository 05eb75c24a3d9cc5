"""HTTP routes of the Conversations API (`/v1/conversations...`). Framing only: the
bodies and queries are `protocol/conversations.py`'s, the work `serving/conversations.py`'s.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from warmloop.protocol.conversations import (
    parse_conversation_create,
    parse_include,
    parse_items_create,
    parse_items_query,
    parse_metadata_update,
)
from warmloop.serving.conversations import Conversations
from warmloop.transport.http import read_json, runtime, tenant_of

router = APIRouter()


def _conversations(request: Request) -> tuple[Conversations, str]:
    """The service and the caller's tenant (a 401 before anything else)."""
    tenant = tenant_of(request)
    return runtime(request).service.conversations, tenant


async def _body(request: Request) -> Any:
    """The JSON body (within the server's limits); an empty one (Content-Length: 0) is None."""
    config = runtime(request).config
    if request.headers.get("content-length") == "0":
        return None
    return await read_json(request, config.max_body_bytes, config.max_json_depth)


def _include(request: Request) -> tuple[str, ...]:
    q = request.query_params
    return parse_include(q.getlist("include") + q.getlist("include[]"))


@router.post("/v1/conversations")
async def create_conversation(request: Request) -> Response:
    conversations, tenant = _conversations(request)
    body = parse_conversation_create(await _body(request))
    return JSONResponse(await conversations.create(body, tenant))


@router.get("/v1/conversations/{conversation_id}")
async def get_conversation(request: Request, conversation_id: str) -> Response:
    conversations, tenant = _conversations(request)
    return JSONResponse(await conversations.get(conversation_id, tenant))


@router.post("/v1/conversations/{conversation_id}")
async def update_conversation(request: Request, conversation_id: str) -> Response:
    conversations, tenant = _conversations(request)
    metadata = parse_metadata_update(await _body(request))
    return JSONResponse(await conversations.update(conversation_id, tenant, metadata))


@router.delete("/v1/conversations/{conversation_id}")
async def delete_conversation(request: Request, conversation_id: str) -> Response:
    conversations, tenant = _conversations(request)
    return JSONResponse(await conversations.delete(conversation_id, tenant))


@router.get("/v1/conversations/{conversation_id}/items")
async def list_conversation_items(request: Request, conversation_id: str) -> Response:
    conversations, tenant = _conversations(request)
    q = request.query_params
    query = parse_items_query(
        after=q.get("after"),
        limit=q.get("limit"),
        order=q.get("order"),
        include=q.getlist("include") + q.getlist("include[]"),
    )
    return JSONResponse(await conversations.list_items(conversation_id, tenant, query))


@router.post("/v1/conversations/{conversation_id}/items")
async def create_conversation_items(request: Request, conversation_id: str) -> Response:
    conversations, tenant = _conversations(request)
    include = _include(request)
    items = parse_items_create(await _body(request))
    return JSONResponse(await conversations.add_items(conversation_id, tenant, items, include))


@router.get("/v1/conversations/{conversation_id}/items/{item_id}")
async def get_conversation_item(request: Request, conversation_id: str, item_id: str) -> Response:
    conversations, tenant = _conversations(request)
    include = _include(request)
    return JSONResponse(await conversations.get_item(conversation_id, item_id, tenant, include))


@router.delete("/v1/conversations/{conversation_id}/items/{item_id}")
async def delete_conversation_item(
    request: Request, conversation_id: str, item_id: str
) -> Response:
    conversations, tenant = _conversations(request)
    return JSONResponse(await conversations.delete_item(conversation_id, item_id, tenant))
