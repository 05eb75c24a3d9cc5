"""WebSocket mode on `/v1/responses`: one socket per agent session. The socket, its
lanes and tasks only: what a frame means is `protocol/frames.py`'s.

The reader task parses frames and queues `response.create` events on their lane
(bounded); each lane runs its creates in order and writes their events, one JSON text
frame each. Every client mistake gets a nested error event and the socket lives on.
Closing the socket cancels the running responses and releases the connection's slots.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from fastapi import APIRouter
from starlette.websockets import WebSocket, WebSocketDisconnect

from warmloop.protocol.errors import (
    APIError,
    ConnectionLimitReached,
    QueueFull,
    ServerDraining,
    ServerError,
    StreamLimitReached,
    TooManyRequests,
    Unauthorized,
    UpgradeRefused,
)
from warmloop.protocol.frames import ClientFrame, CreateFrame, FrameError, parse_frame
from warmloop.protocol.requests import CreateRequest
from warmloop.serving.prepared import CallContext
from warmloop.session.connection import Connection
from warmloop.transport.connections import ClientGone
from warmloop.transport.errors import http_error, ws_error
from warmloop.transport.runtime import Runtime

log = logging.getLogger("warmloop.websocket")
router = APIRouter()


class _Lane:
    """One named lane (`stream_id`) of a socket: its own queue, chain and slot lease."""

    def __init__(self, stream_id: str | None, queue_size: int) -> None:
        self.stream_id = stream_id
        self.queue: asyncio.Queue[CreateRequest] = asyncio.Queue(queue_size)
        self.busy = False


class _Session:
    """One socket's lanes, queue and counters; owned by the event loop (its tasks)."""

    def __init__(self, ws: WebSocket, rt: Runtime, conn: Connection) -> None:
        self.ws = ws
        self.rt = rt
        self.config = rt.config
        self.conn = conn
        self.lanes: dict[str | None, _Lane] = {}
        # Creates accepted and not finished, across lanes: each lane runs one and at most
        # --ws-queue-size more may wait on the whole connection.
        self.pending = 0
        self.in_flight = asyncio.Semaphore(self.config.ws_max_in_flight)
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
        timeout = self.config.write_timeout_s
        async with self._send_lock:
            try:  # a deadline, not wait_for: no task per frame
                async with asyncio.timeout(timeout):
                    await self.ws.send_text(text)
            except TimeoutError:
                log.warning(
                    "connection %s read nothing for %g s; dropping it", self.conn.id, timeout
                )
                self._drop()
                raise ClientGone() from None
            except (WebSocketDisconnect, OSError, RuntimeError):
                # Gone, or closed under us (uvicorn's keepalive timeout sends a close and
                # then refuses sends): either way nobody will read this socket again.
                self._drop()
                raise ClientGone() from None

    async def send_error(self, error: APIError, stream_id: str | None = None) -> None:
        await self.send(ws_error(error), stream_id)

    def _drop(self) -> None:
        """Cut the TCP connection (a polite close would wait for a client that does not
        read) and end the session: its tasks stop and everything it held is freed."""
        self.rt.transports.abort(self.ws.scope)
        self.closed.set()

    async def reader(self) -> None:
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            data = text if text is not None else message.get("bytes") or b""
            if log.isEnabledFor(logging.DEBUG):
                log.debug("frame on %s (%d bytes): %.4000r", self.conn.id, len(data), data)
            frame = parse_frame(
                data, max_bytes=self.config.ws_max_frame_bytes, max_depth=self.config.max_json_depth
            )
            try:
                await self.handle(frame)
            except (ClientGone, WebSocketDisconnect):
                raise
            except Exception:  # a bug in one frame must not take the socket down
                log.exception("connection %s: frame failed", self.conn.id)
                await self.send_error(ServerError("The server failed to handle this event."))

    async def handle(self, frame: ClientFrame) -> None:
        if isinstance(frame, FrameError):
            await self.send_error(frame.error, frame.stream_id)
        elif isinstance(frame, CreateFrame):
            if self.expired:  # past --ws-max-age or draining: finish what runs, start nothing
                await self.send_error(self._ending(), frame.stream_id)
                return
            try:
                self._queue(frame)
            except APIError as exc:
                await self.send_error(exc, frame.stream_id)

    def _queue(self, frame: CreateFrame) -> None:
        lane = self._lane(frame.stream_id)
        config = self.config
        if self.pending >= config.ws_max_lanes + config.ws_queue_size or lane.queue.full():
            raise QueueFull(
                f"Too many queued response.create events (at most {config.ws_queue_size} "
                "may wait); wait for a response to finish."
            )
        lane.queue.put_nowait(frame.request)
        self.pending += 1

    def _lane(self, stream_id: str | None) -> _Lane:
        lane = self.lanes.get(stream_id)
        if lane is None:
            max_lanes = self.config.ws_max_lanes
            if len(self.lanes) >= max_lanes:
                raise StreamLimitReached(
                    f"This connection already has {max_lanes} streams.", param="stream_id"
                )
            # The connection-wide bound on queued creates is what limits memory.
            lane = self.lanes[stream_id] = _Lane(stream_id, self.config.ws_queue_size)
            self.rt.lanes += 1
            task = asyncio.create_task(self.run_lane(lane), name=f"{self.conn.id}-{stream_id}")
            self.workers.add(task)
        return lane

    def close_lanes(self) -> None:
        self.rt.lanes -= len(self.lanes)
        self.lanes.clear()

    async def run_lane(self, lane: _Lane) -> None:
        ctx = CallContext(tenant=self.conn.tenant, connection=self.conn, lane=lane.stream_id)
        while True:
            create = await lane.queue.get()
            async with self.in_flight:
                lane.busy = True
                try:
                    await self._respond(ctx, create, lane.stream_id)
                except ClientGone:
                    return
                except Exception:  # one failed create must not kill the lane
                    log.exception("connection %s: response failed", self.conn.id)
                    err = ServerError("The server failed while handling this response.")
                    await self.send_error(err, lane.stream_id)
                finally:
                    lane.busy = False
                    self.pending -= 1
            if self.expired and not self.busy:
                await self._close_expired()

    async def _respond(self, ctx: CallContext, create: CreateRequest, sid: str | None) -> None:
        try:
            events = await self.rt.service.open(create, ctx)
        except APIError as exc:
            await self.send_error(exc, sid)
            return
        async with contextlib.aclosing(events) as stream:
            async for event in stream:
                await self.send(event, sid)

    async def watchdog(self) -> None:
        """End the socket at --ws-max-age, or when the server drains (SIGTERM)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.rt.draining.wait(), self.config.ws_max_age)
        self.expired = True
        if not self.busy:
            await self._close_expired()
        # Otherwise the last lane to finish closes the socket.

    def _ending(self) -> APIError:
        if self.rt.draining.is_set():
            return ServerDraining("This worker is shutting down; reconnect to continue.")
        minutes = self.config.ws_max_age / 60
        return ConnectionLimitReached(
            f"Responses websocket connection limit reached ({minutes:g} minutes). "
            "Create a new websocket connection to continue."
        )

    async def _close_expired(self) -> None:
        with contextlib.suppress(Exception):
            if self.rt.draining.is_set():
                # 1012 "service restart": a client reconnects (through the proxy, to a
                # worker that takes it) and continues its chain there.
                await self.ws.close(code=1012, reason="worker draining; reconnect")
            else:
                await self.send_error(self._ending())
                await self.ws.close(code=1000)
        self.closed.set()


def _tenant_for_upgrade(ws: WebSocket, rt: Runtime) -> str:
    """The tenant of an upgrade this server takes, or the APIError it is refused with."""
    if not rt.config.websocket:
        raise UpgradeRefused(
            "WebSocket mode is disabled on this server; use HTTP.", code="websocket_disabled"
        )
    tenant = rt.keys.tenant(ws.headers.get("authorization"))
    rt.refuse_if_draining()
    if rt.connections >= rt.config.max_connections:
        raise UpgradeRefused("Too many WebSocket connections; use HTTP.")
    if rt.tenant_connections[tenant] >= rt.config.max_connections_per_key:
        raise TooManyRequests("Too many WebSocket connections for this key.")
    return tenant


@router.websocket("/v1/responses")
async def responses_socket(ws: WebSocket) -> None:
    rt: Runtime = ws.app.state.runtime
    try:
        tenant = _tenant_for_upgrade(ws, rt)
    except (UpgradeRefused, Unauthorized, TooManyRequests, ServerDraining) as exc:
        await ws.send_denial_response(http_error(exc))
        return
    rt.connections += 1
    rt.tenant_connections[tenant] += 1
    conn = Connection(
        tenant=tenant,
        max_recent=rt.config.ws_recent_responses,
        max_bytes=rt.config.ws_recent_bytes,
    )
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
            expected = WebSocketDisconnect | RuntimeError | ClientGone
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
