"""Orchestration of one response: admit a prepared create, run its engine job, and turn
the job's tokens into Responses events; the same stream serves JSON, SSE and WebSocket.

Beside it: `prepare.py` (checks, prompt tokens), `run.py` (one running response: its
output, final event, record, metrics, log line), `compacting.py` (compaction first),
`retrieval.py` (GET, DELETE, cancel), `conversations.py` (the Conversations API, and
what a response on a conversation reads and adds), `session/limits.py` (rate,
concurrency).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import AsyncGenerator
from typing import Any

from warmloop.config import Config
from warmloop.engine.request import EngineHandle, Failed, Finished, Placed, TokenOut
from warmloop.metrics import Metrics
from warmloop.protocol.errors import APIError, PreviousResponseNotFound, StoreUnavailable
from warmloop.protocol.requests import CreateRequest
from warmloop.serving import event_builder as ev
from warmloop.serving.background import BackgroundRun, BackgroundRuns
from warmloop.serving.compacting import CompactionPhase
from warmloop.serving.conversations import Conversations
from warmloop.serving.output import response_object
from warmloop.serving.prepare import Preparer
from warmloop.serving.prepared import CallContext, Prepared
from warmloop.serving.retrieval import Live, LiveResponses, Retrieval
from warmloop.serving.run import ResponseRun
from warmloop.session.connection import Connection
from warmloop.session.limits import Admission
from warmloop.session.response_store import ResponseStore, StoredResponse

log = logging.getLogger("warmloop.responses")


class ResponsesService:
    """Runs on the event loop, which owns what it changes (admission, live responses,
    the sockets' chains); the engine is reached through its inbox."""

    def __init__(
        self,
        config: Config,
        engine: EngineHandle,
        store: ResponseStore,
        preparer: Preparer,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.engine = engine
        self.store = store
        self.preparer = preparer
        self.model_id = preparer.model_id
        self.metrics = metrics
        self.admission = Admission(
            rate_per_minute=config.rate_limit_per_minute,
            max_concurrent=config.max_concurrent_per_key,
        )
        self.live = LiveResponses()
        self.retrieval = Retrieval(store, self.live, engine.cancel)
        self.background = BackgroundRuns(config.background_ttl)
        self.conversations = Conversations(
            preparer.conversations, preparer.sealer, config.conversation_chain_bytes
        )

    # ----- admission -------------------------------------------------------------------
    async def open(self, request: CreateRequest, ctx: CallContext) -> AsyncGenerator[ev.Event]:
        """Prepare `request` off the event loop and admit it: its event stream, or the
        APIError that refused it before anything was sent."""
        try:
            return self.start(await self.prepare_off_loop(request, ctx))
        except APIError as exc:
            self._continuation_failed(ctx, request.body.previous_response_id, refused=exc)
            raise

    async def open_background(
        self, request: CreateRequest, ctx: CallContext
    ) -> tuple[BackgroundRun, dict[str, Any]]:
        """A background create: admitted, its `queued` record durable, and running as a
        server task; returns the run and the `queued` response object."""
        try:
            p = await self.prepare_off_loop(request, ctx)
        except APIError as exc:
            self._continuation_failed(ctx, request.body.previous_response_id, refused=exc)
            raise
        events = self.start(p)  # 429 here, before anything is saved
        queued = response_object(p, self.model_id, "queued", [])
        record = StoredResponse(
            id=p.id,
            owner=ctx.tenant,
            response=queued,
            input_items=p.new_items,
            output_items=(),
            history=p.history_in,
            chain=None,
            stored=True,
        )
        try:
            await self.store.save(record)
        except BaseException:
            await events.aclose()
            self._release(p.id)
            raise
        run = BackgroundRun(p.id, ctx.tenant)
        run.task = asyncio.create_task(run.consume(events), name=f"background {p.id}")
        self.background.add(run)
        return run, queued

    async def prepare_off_loop(self, request: CreateRequest, ctx: CallContext) -> Prepared:
        """Every check that needs no engine slot, and the prompt's tokens. What the loop
        owns is read here (the rate check, the socket's cached parent, the conversation's
        chain and its hold); the rest runs in a worker thread (store reads, tokenizing)
        and changes nothing. A hold on a conversation is released by the response's end
        (`_release`), or here if it is refused first."""
        self.admission.check(ctx.tenant)
        parent_id = request.body.previous_response_id
        cached = ctx.connection.lookup(parent_id) if ctx.connection and parent_id else None
        if request.conversation is None:
            return await asyncio.to_thread(self.preparer.prepare, request, ctx, cached)
        lock = self.conversations.hold(request.conversation, ctx.tenant)
        chain = self.conversations.chain(request.conversation, ctx.tenant)
        try:
            return await asyncio.to_thread(self.preparer.prepare, request, ctx, None, chain, lock)
        except BaseException:
            lock.release()
            raise

    def start(self, p: Prepared) -> AsyncGenerator[ev.Event]:
        """Admit `p` and return its event stream, or raise 429 before anything is sent.

        Runs on the event loop, so the concurrency check and the reservation are one
        step. The reservation ends when the stream ends, is closed, or is dropped
        unstarted (the finalizer), whichever comes first.
        """
        lock = p.conversation.lock if p.conversation else None
        try:
            if p.previous is not None and self.retrieval.was_deleted(p.previous.id):
                raise PreviousResponseNotFound(p.previous.id)  # deleted while it was prepared
            # A response that compacts first runs its summary's job first (compacting.py).
            job = (p.compaction or p).job(p.id)
            snapshot = response_object(p, self.model_id, "in_progress", [])
            live = Live(job, snapshot, conversation_lock=lock)
            self.admission.admit(p.ctx.tenant)  # nothing after this can fail before the finalizer
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        self.live.add(p.id, live)
        events = self._stream(p, live)
        weakref.finalize(events, self._dropped, p)
        return events

    def _dropped(self, p: Prepared) -> None:
        """The stream is gone: a response whose stream never started (its client left
        first) is logged and counted as such, then released."""
        live = self.live.of(p.id, p.ctx.tenant)
        if live is not None and not live.started:
            ResponseRun(p, self.model_id, self.metrics).left()
        self._release(p.id)

    def _release(self, response_id: str) -> None:
        """End an admission (idempotent): the live entry, its concurrency count and its
        hold on a conversation."""
        live = self.live.pop(response_id)
        if live is not None:
            self.admission.release(live.job.tenant)
            if live.conversation_lock is not None:
                live.conversation_lock.release()

    def _continuation_failed(
        self, ctx: CallContext, parent_id: str | None, *, refused: APIError | None = None
    ) -> None:
        """The one rule for a continuation that fails: its socket forgets the parent, so
        a retry cannot build on a broken state. A create refused before it started for
        a transient reason (a limit, an outage) leaves the chain as it was."""
        if refused is not None and (refused.status == 429 or refused.status >= 500):
            return
        if ctx.connection is not None and parent_id is not None:
            ctx.connection.forget(parent_id)

    # ----- running ---------------------------------------------------------------------
    async def _stream(self, p: Prepared, live: Live) -> AsyncGenerator[ev.Event]:
        run = ResponseRun(p, self.model_id, self.metrics)
        live.started = True
        seq = run.seq
        connection = p.ctx.connection
        try:
            if connection is not None and live.job.lease is not None:
                connection.leases.add(live.job.lease)
            yield seq(ev.response_lifecycle("created", live.snapshot))
            yield seq(ev.response_lifecycle("in_progress", live.snapshot))
            if p.compaction is not None:
                phase = CompactionPhase(self.engine, self.preparer)
                async for event in phase.events(run, live.job):
                    yield event
                if phase.after is None:
                    assert phase.error is not None
                    yield self._failed(run, phase.error)
                    return
                run.continue_with(phase.after)
                live.hand_over(phase.after.job(p.id))
            async for e in self.engine.run(live.job):
                if isinstance(e, Placed):
                    run.placed(e)
                elif isinstance(e, TokenOut):
                    for event in run.token(e):
                        yield event
                elif isinstance(e, Finished):
                    for event in run.out.finish():
                        yield event
                    final, record = run.finished(e, cancelled=live.job.cancelled)
                    if record.stored and not live.deleted:
                        try:
                            await self.store.save(record)  # durable before "completed"
                        except StoreUnavailable as exc:
                            yield self._failed(run, exc.body())
                            return
                        if live.deleted:  # DELETE came during the save: it holds
                            await self.retrieval.delete_saved(p.id, live.job.tenant)
                    if p.conversation is not None and _adds_to_conversation(record, live):
                        try:  # its items, then its chain, before "completed"
                            await self.conversations.record(p.conversation.id, record)
                        except StoreUnavailable as exc:
                            yield self._failed(run, exc.body())
                            return
                    if connection is not None and not live.deleted:
                        # Only now can the socket continue it: saved, or store:false.
                        dropped = connection.remember(record, p.ctx.lease)
                        if dropped and self.metrics:
                            self.metrics.recent_dropped.inc(dropped)
                    # Finished: cancel and GET see the record now, not the live snapshot.
                    self._release(p.id)
                    run.report()
                    yield seq(final)
                elif isinstance(e, Failed):
                    yield self._failed(run, {"code": "server_error", "message": e.message})
        except Exception as exc:  # a bug here must not leak the response or kill a lane
            log.exception("response %s failed", p.id)
            yield self._failed(
                run, {"code": "server_error", "message": f"internal error: {type(exc).__name__}"}
            )
        finally:
            if not run.ended:  # the client left (the stream was closed): say so
                run.left()
            self._release(p.id)

    def _failed(self, run: ResponseRun, error: dict[str, Any]) -> ev.Event:
        p = run.p
        self._continuation_failed(p.ctx, p.previous.id if p.previous else None)
        self._release(p.id)
        return run.failed(error)

    # ----- connections and status --------------------------------------------------------
    def connection_opened(self, connection: Connection) -> None:
        self.retrieval.connections.add(connection)

    def connection_closed(self, connection: Connection) -> None:
        """Unpin the connection's slots. A lane whose latest response was store:false
        loses its KV with the socket; a store:true chain's KV stays as a tenant-scoped
        prefix a later continuation (on any connection) can find."""
        self.retrieval.connections.discard(connection)
        for lease in connection.leases:
            self.engine.release_lease(lease, drop_kv=not connection.lane_is_stored(lease))

    def leak_counters(self) -> dict[str, int]:
        """What must return to 0 once every client is gone (tests and /metrics read it)."""
        return {
            "responses_running": len(self.live),
            "concurrency_reserved": self.admission.reserved(),
        }

    def engine_status(self) -> dict[str, int]:
        slots = self.engine.kv
        return {
            "slots": len(slots.slots),
            "slots_busy": slots.in_use(),
            "slots_leased": slots.leased(),
            "responses_running": len(self.live),
        }


def _adds_to_conversation(record: StoredResponse, live: Live) -> bool:
    """A response adds its input and output to its conversation when it completed (or
    ended at max_output_tokens); not when it was cancelled, deleted or failed."""
    return not live.deleted and record.response.get("status") in ("completed", "incomplete")
