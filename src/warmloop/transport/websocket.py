"""WebSocket mode on `/v1/responses`: one socket per agent session.

The reader task parses frames and queues `response.create` events (bounded); one worker
runs them in order and writes their events, one JSON text frame each. Every client
mistake gets a nested error event and the socket lives on. Closing the socket cancels
the running response and releases the connection's engine slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from fastapi import APIRouter
from starlette.responses import JSONResponse
from starlette.websockets import WebSocket, WebSocketDisconnect

from warmloop.protocol.errors import APIError, InvalidRequest, TooManyRequests, Unauthorized
from warmloop.protocol.requests import CreateRequest, parse_create
from warmloop.serving.responses_service import CallContext
from warmloop.session.connection import Connection
from warmloop.transport.errors import ws_error
from warmloop.transport.runtime import Runtime

log = logging.getLogger("warmloop.websocket")
router = APIRouter()

IGNORED_CLIENT_EVENTS = frozenset({"response.processed"})
TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})


class ConnectionLimitReached(APIError):
    status = 400
    type = "invalid_request_error"
    code = "websocket_connection_limit_reached"


def _refuse(status: int, message: str, code: str) -> JSONResponse:
    body = {
        "error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}
    }
    return JSONResponse(body, status_code=status)


class _Session:
    def __init__(self, ws: WebSocket, rt: Runtime, conn: Connection) -> None:
        self.ws = ws
        self.rt = rt
        self.conn = conn
        self.queue: asyncio.Queue[CreateRequest] = asyncio.Queue(rt.config.ws_queue_size)
        self.busy = False
        self.expired = False
        self._send_lock = asyncio.Lock()

    async def send(self, event: dict[str, Any]) -> None:
        async with self._send_lock:
            await self.ws.send_text(json.dumps(event, ensure_ascii=False))

    async def reader(self) -> None:
        limit = self.rt.config.ws_max_frame_bytes
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            if text is None:
                data = message.get("bytes") or b""
                if len(data) > limit:
                    await self._frame_too_large(len(data))
                    continue
                try:
                    text = data.decode("utf-8")
                except UnicodeDecodeError:
                    await self.send(
                        ws_error(
                            InvalidRequest("Frames must be UTF-8 JSON text.", code="invalid_json")
                        )
                    )
                    continue
            if len(text.encode()) > limit:
                await self._frame_too_large(len(text.encode()))
                continue
            await self.handle_frame(text)

    async def _frame_too_large(self, size: int) -> None:
        limit = self.rt.config.ws_max_frame_bytes
        err = InvalidRequest(
            f"Frame of {size} bytes is over the limit of {limit} bytes.", code="message_too_large"
        )
        await self.send(ws_error(err))

    async def handle_frame(self, text: str) -> None:
        try:
            event = json.loads(text)
        except ValueError as exc:
            await self.send(
                ws_error(InvalidRequest(f"Frame is not valid JSON: {exc}", code="invalid_json"))
            )
            return
        if not isinstance(event, dict):
            await self.send(
                ws_error(InvalidRequest("Frame must be a JSON object.", code="invalid_json"))
            )
            return
        kind = event.get("type")
        if kind in IGNORED_CLIENT_EVENTS:
            return
        if kind != "response.create":
            err = InvalidRequest(
                f"Unknown event type '{kind}'. Supported: 'response.create'.",
                param="type",
                code="unknown_event_type",
            )
            await self.send(ws_error(err))
            return
        body = {k: v for k, v in event.items() if k != "type"}
        body.pop("stream", None)  # implied on a socket
        try:
            create = parse_create(body, websocket=True)
            self.queue.put_nowait(create)
        except APIError as exc:
            await self.send(ws_error(exc))
        except asyncio.QueueFull:
            full = TooManyRequests(
                f"Too many queued response.create events (limit {self.queue.maxsize}); "
                "wait for a response to finish.",
                code="queue_full",
            )
            await self.send(ws_error(full))

    async def worker(self) -> None:
        service = self.rt.service
        ctx = CallContext(tenant=self.conn.tenant, connection=self.conn)
        while True:
            create = await self.queue.get()
            self.busy = True
            try:
                previous_id = create.body.previous_response_id
                try:
                    prepared = service.prepare(create, ctx)
                except APIError as exc:
                    if previous_id is not None:
                        self.conn.forget(previous_id)
                    await self.send(ws_error(exc))
                    continue
                async with contextlib.aclosing(service.stream(prepared)) as events:
                    async for event in events:
                        await self.send(event)
            finally:
                self.busy = False
            if self.expired:
                await self._close_expired()
                return

    async def watchdog(self) -> None:
        await asyncio.sleep(self.rt.config.ws_max_age_s)
        self.expired = True
        if not self.busy:
            await self._close_expired()
            return
        # A response is running: the worker closes the socket once it has finished.
        await asyncio.Event().wait()

    async def _close_expired(self) -> None:
        minutes = self.rt.config.ws_max_age_s / 60
        err = ConnectionLimitReached(
            f"Responses websocket connection limit reached ({minutes:g} minutes). "
            "Create a new websocket connection to continue."
        )
        with contextlib.suppress(Exception):
            await self.send(ws_error(err))
            await self.ws.close(code=1000)


@router.websocket("/v1/responses")
async def responses_socket(ws: WebSocket) -> None:
    rt: Runtime = ws.app.state.runtime
    if not rt.config.websocket:
        await ws.send_denial_response(
            _refuse(
                426, "WebSocket mode is disabled on this server; use HTTP.", "websocket_disabled"
            )
        )
        return
    try:
        tenant = rt.keys.tenant(ws.headers.get("authorization"))
    except Unauthorized as exc:
        await ws.send_denial_response(JSONResponse({"error": exc.body()}, status_code=401))
        return
    if rt.connections >= rt.config.max_connections:
        await ws.send_denial_response(
            _refuse(426, "Too many WebSocket connections; use HTTP.", "websocket_capacity")
        )
        return
    rt.connections += 1
    conn = Connection(tenant=tenant)
    session = _Session(ws, rt, conn)
    try:
        await ws.accept()
        log.debug("connection %s opened", conn.id)
        tasks = [
            asyncio.create_task(session.reader(), name=f"{conn.id}-reader"),
            asyncio.create_task(session.worker(), name=f"{conn.id}-worker"),
            asyncio.create_task(session.watchdog(), name=f"{conn.id}-watchdog"),
        ]
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for task in done:
            failure = task.exception()
            if failure is not None and not isinstance(failure, WebSocketDisconnect | RuntimeError):
                log.error("connection %s task failed: %r", conn.id, failure)
    finally:
        rt.connections -= 1
        rt.service.connection_closed(conn)
        log.debug("connection %s closed", conn.id)
