"""HTTP routes of the Responses API: JSON and Server-Sent Events. Framing only."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Coroutine
from typing import Any

from fastapi import APIRouter, Request
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from warmloop.protocol import wire_json
from warmloop.protocol.errors import APIError, InvalidRequest, PayloadTooLarge
from warmloop.protocol.requests import parse_create
from warmloop.serving.compaction import compact
from warmloop.serving.output import collect
from warmloop.serving.prepared import CallContext
from warmloop.transport.connections import ClientGone, Transports
from warmloop.transport.errors import sse_error
from warmloop.transport.runtime import Runtime

log = logging.getLogger("warmloop.http")
router = APIRouter()


def runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


def tenant_of(request: Request) -> str:
    return runtime(request).keys.tenant(request.headers.get("authorization"))


async def read_json(request: Request, limit: int, max_depth: int) -> Any:
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
    return wire_json.loads(b"".join(chunks), max_depth=max_depth)


def sse_frame(event: dict[str, Any]) -> bytes:
    return f"event: {event['type']}\ndata: {json.dumps(event, ensure_ascii=False)}\n\n".encode()


async def sse_stream(
    first: dict[str, Any], events: AsyncGenerator[dict[str, Any], None]
) -> AsyncIterator[bytes]:
    """`first` (already taken from `events`, so the stream had started) and the rest."""
    last_seq = first.get("sequence_number", -1)
    async with contextlib.aclosing(events) as stream:
        yield sse_frame(first)
        try:
            async for event in stream:
                last_seq = event.get("sequence_number", last_seq)
                yield sse_frame(event)
        except APIError as exc:
            err = sse_error(exc)
            err["sequence_number"] = last_seq + 1
            yield sse_frame(err)


async def sse_frames(events: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    async for event in events:
        yield sse_frame(event)


class TimedStreamingResponse(StreamingResponse):
    """A streaming response whose every write must finish within `write_timeout_s`: a
    client that stops reading is cut off (its TCP connection aborted), so it cannot
    hold a slot, a concurrency count and a buffer forever."""

    def __init__(self, content: AsyncIterator[bytes], rt: Runtime) -> None:
        super().__init__(
            content,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self.write_timeout_s = rt.config.write_timeout_s
        self.transports: Transports = rt.transports

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def timed_send(message: Message) -> None:
            try:  # a deadline, not wait_for: no task per write of every token
                async with asyncio.timeout(self.write_timeout_s):
                    await send(message)
            except TimeoutError:
                log.warning(
                    "SSE client %s read nothing for %g s; dropping it",
                    scope.get("client"),
                    self.write_timeout_s,
                )
                self.transports.abort(scope)
                raise ClientGone() from None

        with contextlib.suppress(ClientGone, ClientDisconnect):
            await super().__call__(scope, receive, timed_send)
        if isinstance(self.body_iterator, AsyncGenerator):
            await self.body_iterator.aclose()  # ends the response's job and reservation


@router.post("/v1/responses")
async def create_response(request: Request) -> Response:
    rt = runtime(request)
    tenant = tenant_of(request)
    rt.refuse_if_draining()
    raw = await read_json(request, rt.config.max_body_bytes, rt.config.max_json_depth)
    create = parse_create(raw)
    if create.body.background:
        run, queued = await rt.service.open_background(create, CallContext(tenant=tenant))
        if not create.body.stream:
            return JSONResponse(queued)
        # The run is the server's: a client that leaves stops reading, not the response.
        return TimedStreamingResponse(sse_frames(run.follow(-1)), rt)
    events = await rt.service.open(create, CallContext(tenant=tenant))
    if not create.body.stream:
        return await _until_done_or_gone(request, collect(events))
    first = await anext(events)  # started: from here its `finally` always runs
    return TimedStreamingResponse(sse_stream(first, events), rt)


async def _until_done_or_gone(
    request: Request, work: Coroutine[Any, Any, dict[str, Any]]
) -> Response:
    """Run a non-streamed create; a client that hangs up cancels it (its job stops at
    the next engine step) instead of leaving it generating for nobody."""

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    task = asyncio.create_task(work)
    gone = asyncio.create_task(disconnected())
    try:
        await asyncio.wait((task, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if task.cancelled():
        log.info("client %s left before its response was ready", request.client)
        return Response(status_code=499)  # nobody reads this; the connection is gone
    return JSONResponse(task.result())


@router.post("/v1/responses/compact")
async def compact_response(request: Request) -> Response:
    rt = runtime(request)
    ctx = CallContext(tenant=tenant_of(request))
    rt.refuse_if_draining()
    raw = await read_json(request, rt.config.max_body_bytes, rt.config.max_json_depth)
    work = compact(rt.service, raw, ctx, rt.config.compact_summary_tokens)
    return await _until_done_or_gone(request, work)


@router.get("/v1/responses/{response_id}")
async def get_response(
    request: Request, response_id: str, stream: bool = False, starting_after: int = -1
) -> Response:
    """The response (running: its latest state; a background one polls this way); with
    `stream=true`, a background response's events after `starting_after`, then live."""
    rt = runtime(request)
    tenant = tenant_of(request)
    if stream:
        run = rt.service.background.get(response_id, tenant)
        return TimedStreamingResponse(sse_frames(run.follow(starting_after)), rt)
    return JSONResponse(await rt.service.retrieval.get(response_id, tenant))


@router.delete("/v1/responses/{response_id}")
async def delete_response(request: Request, response_id: str) -> Response:
    retrieval = runtime(request).service.retrieval
    return JSONResponse(await retrieval.delete(response_id, tenant_of(request)))


@router.post("/v1/responses/{response_id}/cancel")
async def cancel_response(request: Request, response_id: str) -> Response:
    retrieval = runtime(request).service.retrieval
    return JSONResponse(await retrieval.cancel(response_id, tenant_of(request)))


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
    page = await runtime(request).service.retrieval.input_items(
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
    rt = runtime(request)
    rt.keys.check_metrics(request.headers.get("authorization"), rt.config.metrics_key)
    body = rt.metrics.render()
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")


@router.get("/healthz")
async def healthz(request: Request) -> Response:
    """200 only when the engine thread, the store writer and the store itself answer;
    otherwise 503 naming what is failing."""
    rt = runtime(request)
    failing = await rt.health_failures()
    body: dict[str, Any] = {
        "status": "unavailable" if failing else "ok",
        "model": rt.service.model_id,
        "websocket_connections": rt.connections,
        **rt.service.engine_status(),
    }
    if failing:
        body["failing"] = failing
    return JSONResponse(body, status_code=503 if failing else 200)
