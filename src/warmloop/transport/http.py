"""HTTP routes of the Responses API: JSON and Server-Sent Events. Framing only."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from warmloop.protocol.errors import APIError, InvalidRequest, PayloadTooLarge
from warmloop.protocol.requests import parse_create
from warmloop.serving.responses_service import CallContext
from warmloop.transport.errors import sse_error
from warmloop.transport.runtime import Runtime

router = APIRouter()


def runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


def tenant_of(request: Request) -> str:
    return runtime(request).keys.tenant(request.headers.get("authorization"))


async def read_json(request: Request, limit: int) -> Any:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"Request body is larger than the limit of {limit} bytes.")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"Request body is larger than the limit of {limit} bytes.")
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(
            f"The request body is not valid JSON: {exc}", code="invalid_json"
        ) from exc


def sse_frame(event: dict[str, Any]) -> bytes:
    return f"event: {event['type']}\ndata: {json.dumps(event, ensure_ascii=False)}\n\n".encode()


async def sse_stream(events: AsyncGenerator[dict[str, Any], None]) -> AsyncIterator[bytes]:
    last_seq = -1
    async with contextlib.aclosing(events) as stream:
        try:
            async for event in stream:
                last_seq = event.get("sequence_number", last_seq)
                yield sse_frame(event)
        except APIError as exc:
            err = sse_error(exc)
            err["sequence_number"] = last_seq + 1
            yield sse_frame(err)


@router.post("/v1/responses")
async def create_response(request: Request) -> Response:
    rt = runtime(request)
    tenant = tenant_of(request)
    raw = await read_json(request, rt.config.max_body_bytes)
    create = parse_create(raw)
    prepared = rt.service.prepare(create, CallContext(tenant=tenant))
    if create.body.stream:
        return StreamingResponse(
            sse_stream(rt.service.stream(prepared)),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    return JSONResponse(await rt.service.create(prepared))


@router.get("/v1/responses/{response_id}")
async def get_response(request: Request, response_id: str) -> Response:
    # store reads and writes may touch the disk: never on the event loop
    service = runtime(request).service
    return JSONResponse(await asyncio.to_thread(service.get, response_id, tenant_of(request)))


@router.delete("/v1/responses/{response_id}")
async def delete_response(request: Request, response_id: str) -> Response:
    service = runtime(request).service
    return JSONResponse(await asyncio.to_thread(service.delete, response_id, tenant_of(request)))


@router.post("/v1/responses/{response_id}/cancel")
async def cancel_response(request: Request, response_id: str) -> Response:
    service = runtime(request).service
    return JSONResponse(await asyncio.to_thread(service.cancel, response_id, tenant_of(request)))


@router.get("/v1/responses/{response_id}/input_items")
async def list_input_items(
    request: Request,
    response_id: str,
    after: str | None = None,
    limit: int = 20,
    order: str = "desc",
) -> Response:
    if not 1 <= limit <= 100:
        raise InvalidRequest("'limit' must be between 1 and 100.", param="limit")
    if order not in ("asc", "desc"):
        raise InvalidRequest("'order' must be 'asc' or 'desc'.", param="order")
    page = await asyncio.to_thread(
        runtime(request).service.input_items,
        response_id,
        tenant_of(request),
        after=after,
        limit=limit,
        order=order,
    )
    return JSONResponse(page)


@router.get("/v1/models")
async def list_models(request: Request) -> Response:
    rt = runtime(request)
    tenant_of(request)
    model = {
        "id": rt.service.model_id,
        "object": "model",
        "created": rt.started_at,
        "owned_by": "warmloop",
    }
    return JSONResponse({"object": "list", "data": [model]})


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    body = runtime(request).metrics.render()
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")


@router.get("/healthz")
async def healthz(request: Request) -> Response:
    rt = runtime(request)
    return JSONResponse(
        {
            "status": "ok",
            "model": rt.service.model_id,
            "websocket_connections": rt.connections,
            **rt.service.engine_status(),
        }
    )
