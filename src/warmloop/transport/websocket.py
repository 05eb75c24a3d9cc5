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
import re
from typing import Any

from fastapi import APIRouter
from starlette.responses import JSONResponse
from starlette.websockets import WebSocket, WebSocketDisconnect

from warmloop.protocol import wire_json
from warmloop.protocol.errors import (
    APIError,
    InvalidRequest,
    ServerError,
    TooManyRequests,
    Unauthorized,
)
from warmloop.protocol.requests import CreateRequest, parse_create
from warmloop.serving.responses_service import CallContext, ResponsesService
from warmloop.session.connection import Connection
from warmloop.transport import server
from warmloop.transport.errors import ws_error
from warmloop.transport.runtime import Runtime

log = logging.getLogger("warmloop.websocket")
router = APIRouter()

IGNORED_CLIENT_EVENTS = frozenset({"response.processed"})
STREAM_ID = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")


class ConnectionLimitReached(APIError):
    status = 400
    type = "invalid_request_error"
    code = "websocket_connection_limit_reached"


def _refuse(status: int, message: str, code: str) -> JSONResponse:
    body = {
        "error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}
    }
    return JSONResponse(body, status_code=status)


class _Lane:
    """One named lane (`stream_id`) of a socket: its own queue, chain and slot lease."""

    def __init__(self, stream_id: str | None, queue_size: int) -> None:
        self.stream_id = stream_id
        self.queue: asyncio.Queue[CreateRequest] = asyncio.Queue(queue_size)
        self.busy = False


class _Session:
    def __init__(self, ws: WebSocket, rt: Runtime, conn: Connection) -> None:
        self.ws = ws
        self.rt = rt
        self.conn = conn
        self.lanes: dict[str | None, _Lane] = {}
        # Creates accepted and not finished, across lanes: each lane runs one and at most
        # --ws-queue-size more may wait on the whole connection.
        self.pending = 0
        self.in_flight = asyncio.Semaphore(self.rt.config.ws_max_in_flight)
        self.workers: set[asyncio.Task[None]] = set()
        self.expired = False
        self.closed = asyncio.Event()
        self._send_lock = asyncio.Lock()

    @property
    def busy(self) -> bool:
        return any(lane.busy or not lane.queue.empty() for lane in self.lanes.values())

    async def send(self, event: dict[str, Any], stream_id: str | None = None) -> None:
        """One JSON text frame. A client that reads nothing for --write-timeout-s is cut
        off: it would otherwise hold its slots and our buffers forever."""
        if stream_id is not None:
            event["stream_id"] = stream_id
        text = json.dumps(event, ensure_ascii=False)
        timeout = self.rt.config.write_timeout_s
        async with self._send_lock:
            try:
                await asyncio.wait_for(self.ws.send_text(text), timeout)
            except TimeoutError:
                log.warning(
                    "connection %s read nothing for %g s; dropping it", self.conn.id, timeout
                )
                self._drop()
                raise server.ClientGone() from None
            except (WebSocketDisconnect, OSError, RuntimeError):
                # Gone, or closed under us (uvicorn's keepalive timeout sends a close and
                # then refuses sends): either way nobody will read this socket again.
                self._drop()
                raise server.ClientGone() from None

    def _drop(self) -> None:
        """Cut the TCP connection (a polite close would wait for a client that does not
        read) and end the session: its tasks stop and everything it held is freed."""
        server.abort(self.ws.scope)
        self.closed.set()

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
                    err = InvalidRequest("Frames must be UTF-8 JSON text.", code="invalid_json")
                    await self.send(ws_error(err))
                    continue
            if len(text) > limit or len(text.encode("utf-8", "surrogatepass")) > limit:
                await self._frame_too_large(len(text.encode("utf-8", "surrogatepass")))
                continue
            try:
                await self.handle_frame(text)
            except (server.ClientGone, WebSocketDisconnect):
                raise
            except Exception:  # a bug in one frame must not take the socket down
                log.exception("connection %s: frame failed", self.conn.id)
                failure = ServerError("The server failed to handle this event.")
                await self.send(ws_error(failure))

    async def _frame_too_large(self, size: int) -> None:
        limit = self.rt.config.ws_max_frame_bytes
        err = InvalidRequest(
            f"Frame of {size} bytes is over the limit of {limit} bytes.", code="message_too_large"
        )
        await self.send(ws_error(err))

    async def handle_frame(self, text: str) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("frame on %s (%d bytes): %s", self.conn.id, len(text), text[:4000])
        try:
            event = wire_json.loads(text, what="The frame", max_depth=self.rt.config.max_json_depth)
        except APIError as exc:
            await self.send(ws_error(exc))
            return
        if not isinstance(event, dict):
            await self.send(
                ws_error(InvalidRequest("Frame must be a JSON object.", code="invalid_json"))
            )
            return
        kind = event.get("type")
        if not isinstance(kind, str):
            err = InvalidRequest(
                "'type' must be a string naming the event, e.g. 'response.create'.",
                param="type",
                code="unknown_event_type",
            )
            await self.send(ws_error(err))
            return
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
        if self.expired:  # past --ws-max-age: finish what runs, start nothing new
            await self.send(ws_error(self._limit_reached()))
            return
        body = {k: v for k, v in event.items() if k not in ("type", "stream_id")}
        body.pop("stream", None)  # implied on a socket
        stream_id = event.get("stream_id")
        echo = stream_id if isinstance(stream_id, str) and STREAM_ID.fullmatch(stream_id) else None
        config = self.rt.config
        try:
            create = parse_create(body, websocket=True)
            lane = self._lane(stream_id)
            if self.pending >= config.ws_max_lanes + config.ws_queue_size or lane.queue.full():
                raise TooManyRequests(
                    f"Too many queued response.create events (at most {config.ws_queue_size} "
                    "may wait); wait for a response to finish.",
                    code="queue_full",
                )
            lane.queue.put_nowait(create)
            self.pending += 1
        except APIError as exc:
            await self.send(ws_error(exc), echo)

    def _lane(self, stream_id: object) -> _Lane:
        if stream_id is not None and (
            not isinstance(stream_id, str) or not STREAM_ID.fullmatch(stream_id)
        ):
            raise InvalidRequest(
                "'stream_id' must be 1-64 characters of letters, digits, '_', '-', '.', ':'.",
                param="stream_id",
                code="invalid_stream_id",
            )
        lane = self.lanes.get(stream_id)
        if lane is None:
            max_lanes = self.rt.config.ws_max_lanes
            if len(self.lanes) >= max_lanes:
                raise InvalidRequest(
                    f"This connection already has {max_lanes} streams.",
                    param="stream_id",
                    code="websocket_stream_limit_reached",
                )
            # The connection-wide bound on queued creates is what limits memory.
            lane = self.lanes[stream_id] = _Lane(stream_id, self.rt.config.ws_queue_size)
            self.rt.lanes += 1
            task = asyncio.create_task(self.run_lane(lane), name=f"{self.conn.id}-{stream_id}")
            self.workers.add(task)
        return lane

    def close_lanes(self) -> None:
        self.rt.lanes -= len(self.lanes)
        self.lanes.clear()

    async def run_lane(self, lane: _Lane) -> None:
        service = self.rt.service
        ctx = CallContext(tenant=self.conn.tenant, connection=self.conn, lane=lane.stream_id)
        while True:
            create = await lane.queue.get()
            async with self.in_flight:
                lane.busy = True
                try:
                    await self._respond(service, ctx, create, lane.stream_id)
                except server.ClientGone:
                    return
                except Exception:  # one failed create must not kill the lane
                    log.exception("connection %s: response failed", self.conn.id)
                    err = ServerError("The server failed while handling this response.")
                    await self.send(ws_error(err), lane.stream_id)
                finally:
                    lane.busy = False
                    self.pending -= 1
            if self.expired and not self.busy:
                await self._close_expired()

    async def _respond(
        self, service: ResponsesService, ctx: CallContext, create: CreateRequest, sid: str | None
    ) -> None:
        previous_id = create.body.previous_response_id
        try:
            # Store reads and tokenizing happen off the event loop.
            prepared = await asyncio.to_thread(service.prepare, create, ctx)
            events = service.start(prepared)
        except APIError as exc:
            # A continuation that fails evicts its parent, so a retry cannot build on a
            # broken state; a limit (429) or an outage (503) is transient and leaves the
            # chain alone.
            if exc.status < 500 and exc.status != 429:
                service.forget_parent(self.conn, previous_id)
            await self.send(ws_error(exc), sid)
            return
        async with contextlib.aclosing(events) as stream:
            async for event in stream:
                await self.send(event, sid)

    async def watchdog(self) -> None:
        await asyncio.sleep(self.rt.config.ws_max_age)
        self.expired = True
        if not self.busy:
            await self._close_expired()
        # Otherwise the last lane to finish closes the socket.

    def _limit_reached(self) -> ConnectionLimitReached:
        minutes = self.rt.config.ws_max_age / 60
        return ConnectionLimitReached(
            f"Responses websocket connection limit reached ({minutes:g} minutes). "
            "Create a new websocket connection to continue."
        )

    async def _close_expired(self) -> None:
        with contextlib.suppress(Exception):
            await self.send(ws_error(self._limit_reached()))
            await self.ws.close(code=1000)
        self.closed.set()


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
    if rt.tenant_connections[tenant] >= rt.config.max_connections_per_key:
        refusal = _refuse(
            429, "Too many WebSocket connections for this key.", "rate_limit_exceeded"
        )
        await ws.send_denial_response(refusal)
        return
    rt.connections += 1
    rt.tenant_connections[tenant] += 1
    conn = Connection(tenant=tenant, max_recent=rt.config.ws_recent_responses)
    session = _Session(ws, rt, conn)
    rt.service.connection_opened(conn)
    try:
        await ws.accept()
        log.debug("connection %s opened", conn.id)
        reader = asyncio.create_task(session.reader(), name=f"{conn.id}-reader")
        watchdog = asyncio.create_task(session.watchdog(), name=f"{conn.id}-watchdog")
        closed = asyncio.create_task(session.closed.wait(), name=f"{conn.id}-closed")
        done, _ = await asyncio.wait([reader, closed], return_when=asyncio.FIRST_COMPLETED)
        pending = [t for t in (reader, watchdog, closed, *session.workers) if not t.done()]
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for task in done:
            failure = task.exception()
            expected = WebSocketDisconnect | RuntimeError | server.ClientGone
            if failure is not None and not isinstance(failure, expected):
                log.error("connection %s task failed: %r", conn.id, failure)
    finally:
        rt.connections -= 1
        rt.tenant_connections[tenant] -= 1
        if rt.tenant_connections[tenant] <= 0:
            del rt.tenant_connections[tenant]
        session.close_lanes()
        rt.service.connection_closed(conn)
        log.debug("connection %s closed", conn.id)
