"""Turn a validated create request into an engine job and the job's tokens into events.

`prepare` does every check that can fail before the first event (model, chain,
items, context length, grammar) and builds the prompt tokens: for a continuation whose
rendered history is unchanged it tokenizes only the new text and appends it to the
exact tokens the chain's KV holds. `stream` runs the job and yields Responses events.
Transports consume the same stream for JSON, SSE and WebSocket.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
import weakref
from collections import Counter
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

from warmloop.config import Config
from warmloop.engine.backend import BackendError
from warmloop.engine.engine import Engine
from warmloop.engine.request import Admitted, Failed, Finished, Job, SamplingParams, TokenOut
from warmloop.metrics import Metrics
from warmloop.protocol.errors import (
    ContextLengthExceeded,
    InvalidRequest,
    ModelNotFound,
    NotFound,
    PreviousResponseNotFound,
    ServerError,
    StoreUnavailable,
    TooManyRequests,
)
from warmloop.protocol.items import (
    FunctionCallItem,
    Item,
    ItemReference,
    MessageItem,
    item_to_wire,
    new_id,
)
from warmloop.protocol.requests import CreateRequest
from warmloop.serving import event_builder as ev
from warmloop.serving.prompt import PromptRenderer, system_text
from warmloop.serving.tool_calls import (
    TOOL_CALL_TRIGGER,
    OutputParser,
    TextDelta,
    ToolCall,
    schema_grammar,
    text_format_grammar,
    tool_call_grammar,
)
from warmloop.session.connection import Connection
from warmloop.session.limits import RateLimiter
from warmloop.session.response_store import ChainState, ResponseStore, StoredResponse

log = logging.getLogger("warmloop.responses")

TERMINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})


@dataclass
class CallContext:
    tenant: str = ""
    connection: Connection | None = None
    lane: str | None = None  # WebSocket stream_id: each lane has its own chain and slot

    @property
    def lease(self) -> str | None:
        """Engine lease key: one per connection lane, so a lane's slot stays pinned."""
        if self.connection is None:
            return None
        return self.connection.id if self.lane is None else f"{self.connection.id}#{self.lane}"


@dataclass
class Prepared:
    id: str
    request: CreateRequest
    ctx: CallContext
    previous: StoredResponse | None
    new_items: tuple[Item, ...]
    history_in: tuple[Item, ...]
    prompt_text: str
    tokens: list[int]
    delta_only: bool  # the prompt reused the chain's tokens and tokenized only new text
    params: SamplingParams
    tool_names: tuple[str, ...]
    shared_prefix: int  # tokens of the rendered instructions/tools message
    created_at: float = field(default_factory=time.time)


@dataclass
class _Run:
    """What one running response has seen of its engine job so far."""

    t0: float = field(default_factory=time.perf_counter)
    cached: int = 0
    tier: str = "none"
    t_first: float | None = None
    t_last: float | None = None
    generated: list[str] = field(default_factory=list)


@dataclass
class _Live:
    """A response that was admitted and has not ended: enough to answer GET, cancel and
    DELETE. It counts against its tenant's concurrency from `start` until `_release`."""

    job: Job
    snapshot: dict[str, Any]
    deleted: bool = False  # DELETE arrived while it ran: it is cancelled and never saved


class ResponsesService:
    def __init__(
        self,
        config: Config,
        engine: Engine,
        store: ResponseStore,
        renderer: PromptRenderer,
        model_id: str,
        metrics: Metrics | None = None,
    ) -> None:
        self.metrics = metrics
        self.config = config
        self.engine = engine
        self.store = store
        self.renderer = renderer
        self.model_id = model_id
        self.model_names = {model_id, "default", *config.model_alias}
        # Admitted responses (event loop thread writes; GET/cancel/DELETE threads read).
        self._live: dict[str, _Live] = {}
        self._running: Counter[str] = Counter()  # admitted responses per tenant
        self._live_lock = threading.Lock()
        self.rate = RateLimiter(config.rate_limit_per_minute)
        self._head_tokens: dict[str, int] = {}
        # Open WebSocket connections, so a DELETE can drop a response from their caches.
        self._connections: weakref.WeakSet[Connection] = weakref.WeakSet()

    # ----- preparation: every check that can fail before the first event --------------
    def prepare(self, request: CreateRequest, ctx: CallContext) -> Prepared:
        """Every check that needs no engine slot, and the prompt's tokens. Runs in a worker
        thread (store reads and tokenizing must not block the event loop); it changes no
        state of the service, so a prepared request that is never started costs nothing."""
        body = request.body
        self._check_running(ctx.tenant)
        self.rate.check(ctx.tenant)
        if body.model is not None and body.model not in self.model_names:
            aliases = ", ".join(sorted(self.model_names - {self.model_id}))
            raise ModelNotFound(
                f"The model '{body.model}' does not exist. This server serves "
                f"'{self.model_id}' (aliases: {aliases}).",
                param="model",
            )
        previous = self._previous(body.previous_response_id, ctx)
        base_history = previous.history if previous else ()
        new_items = tuple(self._resolve(request.items, base_history, ctx))
        history_in = base_history + new_items
        if not history_in and request.generate:
            raise InvalidRequest("'input' must contain at least one item.", param="input")
        system = system_text(body.instructions, request.tools)
        # A warm-up (generate:false) stops before the assistant header so the next turn's
        # rendering extends it token for token.
        text = self.renderer.render(system, history_in, add_generation_prompt=request.generate)
        tokens, delta_only = self._tokens(text, previous)

        ctx_limit = self.config.ctx
        max_in = self.config.max_input_tokens
        if max_in and len(tokens) > max_in:
            raise InvalidRequest(
                f"The input has {len(tokens)} tokens; this server accepts at most {max_in}.",
                param="input",
                code="input_too_long",
            )
        room = ctx_limit - len(tokens)
        if body.max_output_tokens is not None:
            max_out = body.max_output_tokens
            if max_out > self.config.max_output_tokens:
                raise InvalidRequest(
                    f"max_output_tokens is too large: {max_out}. This server allows at most "
                    f"{self.config.max_output_tokens} output tokens per response.",
                    param="max_output_tokens",
                    code="integer_above_max_value",
                )
            if len(tokens) + max_out > ctx_limit:
                raise ContextLengthExceeded(
                    f"This model's context is {ctx_limit} tokens; the input has {len(tokens)} "
                    f"tokens and max_output_tokens asks for {max_out}.",
                    param="input",
                )
        else:
            max_out = min(self.config.max_output_tokens, room)
            if room < (1 if request.generate else 0):
                raise ContextLengthExceeded(
                    f"This model's context is {ctx_limit} tokens; "
                    f"the input has {len(tokens)} tokens.",
                    param="input",
                )
        grammar, trigger = self._grammar(request)
        params = SamplingParams(
            max_tokens=max(max_out, 1),
            temperature=(
                self.config.default_temperature if body.temperature is None else body.temperature
            ),
            top_p=1.0 if body.top_p is None else body.top_p,
            seed=body.seed if body.seed is not None else random.getrandbits(32),
            grammar=grammar,
            grammar_trigger=trigger,
        )
        names = () if request.tool_choice == "none" else tuple(t.qualified for t in request.tools)
        return Prepared(
            id=new_id("resp"),
            request=request,
            ctx=ctx,
            previous=previous,
            new_items=new_items,
            history_in=history_in,
            prompt_text=text,
            tokens=tokens,
            delta_only=delta_only,
            params=params,
            tool_names=names,
            shared_prefix=self._shared_prefix(system, history_in, text),
        )

    def _check_running(self, tenant: str) -> None:
        running = self._running[tenant]
        if running >= self.config.max_concurrent_per_key:
            raise TooManyRequests(
                f"This key already has {running} responses running "
                f"(limit {self.config.max_concurrent_per_key}); wait for one to finish.",
                code="concurrency_limit_exceeded",
            )

    def _previous(self, response_id: str | None, ctx: CallContext) -> StoredResponse | None:
        if response_id is None:
            return None
        record = ctx.connection.lookup(response_id) if ctx.connection else None
        if record is None:
            record = self.store.get(response_id, ctx.tenant)
        if record is None:
            raise PreviousResponseNotFound(response_id)
        return record

    def _resolve(
        self, items: list[Item | ItemReference], history: tuple[Item, ...], ctx: CallContext
    ) -> list[Item]:
        out: list[Item] = []
        known = {i.id: i for i in history}
        for n, item in enumerate(items):
            if isinstance(item, ItemReference):
                found = known.get(item.id)
                if found is None:
                    raise InvalidRequest(
                        f"Item with id '{item.id}' not found.", param=f"input[{n}].id"
                    )
                out.append(found)
            else:
                out.append(item)
        return out

    def _tokens(self, text: str, previous: StoredResponse | None) -> tuple[list[int], bool]:
        chain = previous.chain if previous else None
        if chain is not None and text.startswith(chain.text):
            # The earlier turns render exactly as before: keep the chain's own tokens
            # (including the model's sampled ones) and tokenize only the new text.
            return list(chain.tokens) + self.engine.backend.tokenize(text[len(chain.text) :]), True
        return self.engine.backend.tokenize(text), False

    def _shared_prefix(self, system: str | None, history: tuple[Item, ...], text: str) -> int:
        """How many leading tokens are the conversation's fixed head: instructions, tools
        and leading system/developer messages (what sessions of one tenant share)."""
        lead: list[Item] = []
        for item in history:
            if not (isinstance(item, MessageItem) and item.role in ("system", "developer")):
                break
            lead.append(item)
        if not system and not lead:
            return 0
        head = self.renderer.render(system, lead, add_generation_prompt=False)
        if not text.startswith(head):
            return 0
        n = self._head_tokens.get(head)
        if n is None:
            n = len(self.engine.backend.tokenize(head))
            if len(self._head_tokens) > 256:
                self._head_tokens.clear()
            self._head_tokens[head] = n
        # The head ends at a special token, so its tokens are a prefix of the prompt's.
        return n

    def _grammar(self, request: CreateRequest) -> tuple[str | None, str | None]:
        """The request's grammar and lazy trigger, checked by llama.cpp now: a schema that
        converts to a grammar llama.cpp refuses (say `maxLength` over its repetition cap)
        is the client's 400 naming the schema, not a failed response."""
        grammar, trigger = self._build_grammar(request)
        if grammar is None:
            return None, None
        try:
            self.engine.backend.check_grammar(grammar, trigger)
        except BackendError as exc:
            raise self._grammar_error(request, str(exc)) from None
        return grammar, trigger

    def _grammar_error(self, request: CreateRequest, reason: str) -> InvalidRequest:
        """Name the schema llama.cpp refused: each one is checked on its own."""
        candidates: list[tuple[str, dict[str, Any]]] = []
        fmt = request.text_format
        if fmt.kind == "json_schema" and fmt.schema is not None:
            candidates.append(("text.format.schema", fmt.schema))
        candidates.extend((tool.param, tool.parameters) for tool in request.tools)
        for param, schema in candidates:
            try:
                self.engine.backend.check_grammar(schema_grammar(schema, param), None)
            except BackendError:
                return InvalidRequest(
                    f"This JSON schema cannot be enforced by the model's grammar engine "
                    f"({reason}). Bounds such as maxLength, minItems and maxItems must be at "
                    "most 2000.",
                    param=param,
                    code="invalid_json_schema",
                )
        return InvalidRequest(
            f"The tools and text format cannot be enforced together ({reason}).",
            param="tools",
            code="invalid_json_schema",
        )

    def _build_grammar(self, request: CreateRequest) -> tuple[str | None, str | None]:
        fmt_grammar = text_format_grammar(request.text_format)
        tools = request.tools
        choice = request.tool_choice
        parallel = request.body.parallel_tool_calls is not False
        if tools and choice != "none":
            if choice.startswith("function:"):
                name = choice.split(":", 1)[1]
                chosen = tuple(t for t in tools if t.qualified == name)
                return tool_call_grammar(chosen, parallel=False), None
            grammar = tool_call_grammar(tools, parallel=parallel)
            if choice == "required":
                return grammar, None
            if fmt_grammar is None:
                return grammar, TOOL_CALL_TRIGGER
        return fmt_grammar, None

    # ----- running ---------------------------------------------------------------------
    def response_object(
        self,
        p: Prepared,
        status: str,
        output: list[dict[str, Any]],
        usage: dict[str, Any] | None,
        *,
        error: dict[str, Any] | None = None,
        incomplete_reason: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        body = p.request.body
        obj: dict[str, Any] = {
            "id": p.id,
            "object": "response",
            "created_at": int(p.created_at),
            "status": status,
            "background": False,
            "error": error,
            "incomplete_details": {"reason": incomplete_reason} if incomplete_reason else None,
            "instructions": body.instructions,
            "max_output_tokens": body.max_output_tokens,
            "max_tool_calls": body.max_tool_calls,
            "model": self.model_id,
            "output": output,
            "parallel_tool_calls": body.parallel_tool_calls is not False,
            "previous_response_id": body.previous_response_id,
            "prompt_cache_key": body.prompt_cache_key,
            "reasoning": {"effort": None, "summary": None},
            "safety_identifier": body.safety_identifier,
            "service_tier": "default",
            "store": p.request.store,
            "temperature": p.params.temperature,
            "text": {"format": (body.text or {}).get("format") or {"type": "text"}},
            "tool_choice": body.tool_choice if body.tool_choice is not None else "auto",
            "tools": [t for t in (body.tools or []) if t.get("type") in ("function", "namespace")],
            "top_p": p.params.top_p,
            "truncation": body.truncation or "disabled",
            "usage": usage,
            "user": body.user,
            "metadata": body.metadata or {},
        }
        if status in ("completed", "incomplete", "failed", "cancelled"):
            obj["completed_at"] = int(time.time())
        if extra:
            obj["warmloop"] = extra
        return obj

    def start(self, p: Prepared) -> AsyncGenerator[ev.Event, None]:
        """Admit `p` and return its event stream, or raise 429 before anything is sent.

        Runs on the event loop, so the concurrency check and the reservation are one
        step (parallel creates cannot both pass). The reservation ends when the stream
        ends, is closed, or is dropped unstarted (the finalizer), whichever comes first.
        """
        tenant = p.ctx.tenant
        self._check_running(tenant)
        self.rate.hit(tenant)  # only admitted creates count against the rate
        job = Job(
            id=p.id,
            tokens=p.tokens,
            params=p.params,
            tenant=tenant,
            lease=p.ctx.lease,
            prefill_only=not p.request.generate,
            shared_prefix=p.shared_prefix,
        )
        live = _Live(job, self.response_object(p, "in_progress", [], None))
        with self._live_lock:
            self._live[p.id] = live
            self._running[tenant] += 1
        events = self._stream(p, live)
        weakref.finalize(events, self._release, p.id)
        return events

    def _release(self, response_id: str) -> None:
        """End an admission (idempotent): the live entry and its concurrency count."""
        with self._live_lock:
            live = self._live.pop(response_id, None)
            if live is not None:
                tenant = live.job.tenant
                self._running[tenant] -= 1
                if self._running[tenant] <= 0:
                    del self._running[tenant]

    async def _stream(self, p: Prepared, live: _Live) -> AsyncGenerator[ev.Event, None]:
        seq = ev.Sequencer()
        request = p.request
        job = live.job
        namespaced = {t.qualified for t in request.tools if t.namespace}
        out = _OutputBuilder(seq, OutputParser(p.tool_names), namespaced)
        run = _Run()
        try:
            if p.ctx.connection is not None and job.lease is not None:
                p.ctx.connection.leases.add(job.lease)
            yield seq(ev.response_lifecycle("created", live.snapshot))
            yield seq(ev.response_lifecycle("in_progress", live.snapshot))
            async for e in self.engine.run(job):
                if isinstance(e, Admitted):
                    run.cached, run.tier = e.cached_tokens, e.tier
                elif isinstance(e, TokenOut):
                    self._observe_token(run)
                    run.generated.append(e.text)
                    for event in out.feed(e.text):
                        yield event
                elif isinstance(e, Finished):
                    for event in out.finish():
                        yield event
                    final_event, record = self._finish(p, live, seq, out, run, e)
                    if record.stored and not live.deleted:
                        try:
                            # Durable before the client hears "completed".
                            await self.store.save(record)
                        except StoreUnavailable as exc:
                            yield self._failed(p, seq, out, exc.body())
                            return
                    if p.ctx.connection is not None and not live.deleted:
                        # Only now can the socket continue it: saved, or store:false.
                        p.ctx.connection.remember(record, p.ctx.lease)
                    # Finished: cancel and GET see the record now, not the live snapshot.
                    self._release(p.id)
                    yield final_event
                elif isinstance(e, Failed):
                    error = {"code": "server_error", "message": e.message}
                    yield self._failed(p, seq, out, error)
        except Exception as exc:  # a bug here must not leak the response or kill a lane
            log.exception("response %s failed", p.id)
            error = {"code": "server_error", "message": f"internal error: {type(exc).__name__}"}
            yield self._failed(p, seq, out, error)
        finally:
            self._release(p.id)

    def _failed(
        self, p: Prepared, seq: ev.Sequencer, out: _OutputBuilder, error: dict[str, Any]
    ) -> ev.Event:
        """The `response.failed` event; a failed continuation forgets its parent."""
        self.forget_parent(p.ctx.connection, p.previous.id if p.previous else None)
        final = self.response_object(p, "failed", out.items_wire(), None, error=error)
        log.warning("response %s failed: %s", p.id, error.get("message"))
        if self.metrics:
            self.metrics.responses.labels("failed").inc()
        self._release(p.id)
        return seq(ev.response_lifecycle("failed", final))

    def forget_parent(self, connection: Connection | None, parent_id: str | None) -> None:
        """The one rule for failed continuations: the connection forgets the parent, so a
        retry cannot build on a broken state."""
        if connection is not None and parent_id is not None:
            connection.forget(parent_id)

    def _observe_token(self, run: _Run) -> None:
        now = time.perf_counter()
        if self.metrics:
            if run.t_last is None:
                self.metrics.ttft_seconds.observe(now - run.t0)
            else:
                self.metrics.token_seconds.observe(now - run.t_last)
        if run.t_first is None:
            run.t_first = now
        run.t_last = now

    def _finish(
        self,
        p: Prepared,
        live: _Live,
        seq: ev.Sequencer,
        out: _OutputBuilder,
        run: _Run,
        fin: Finished,
    ) -> tuple[ev.Event, StoredResponse]:
        cached = run.cached
        usage = ev.usage(len(p.tokens), cached, fin.output_tokens)
        now = time.perf_counter()
        timings = {
            "ttft_ms": round(((run.t_first or now) - run.t0) * 1000.0, 2),
            "duration_ms": round((now - run.t0) * 1000.0, 2),
            "prefill_ms": round(fin.prefill_ms, 2),
            "decode_ms": round(fin.decode_ms, 2),
            "delta_only": p.delta_only,
            "cache_tier": run.tier,
        }
        if live.job.cancelled or fin.reason == "cancelled":
            status, kind, reason = "cancelled", "incomplete", None
        elif fin.reason == "length":
            status, kind, reason = "incomplete", "incomplete", "max_output_tokens"
        else:
            status, kind, reason = "completed", "completed", None
        final = self.response_object(
            p, status, out.items_wire(), usage, incomplete_reason=reason, extra=timings
        )
        output_items = tuple(out.items)
        record = StoredResponse(
            id=p.id,
            owner=p.ctx.tenant,
            response=final,
            input_items=p.new_items,
            output_items=output_items,
            history=p.history_in + output_items,
            chain=ChainState.of(p.prompt_text + "".join(run.generated), fin.chain_tokens),
            stored=p.request.store,
        )
        if self.metrics:
            self.metrics.prompt_tokens_computed.inc(len(p.tokens) - cached)
            self.metrics.output_tokens.inc(fin.output_tokens)
            self.metrics.responses.labels(status).inc()
        log.info(
            "response id=%s conn=%s status=%s input=%d cached=%d computed=%d output=%d "
            "tier=%s delta_only=%s ttft_ms=%.1f duration_ms=%.1f",
            p.id,
            p.ctx.connection.id if p.ctx.connection else "-",
            status,
            len(p.tokens),
            cached,
            len(p.tokens) - cached,
            fin.output_tokens,
            run.tier,
            p.delta_only,
            timings["ttft_ms"],
            timings["duration_ms"],
        )
        return seq(ev.response_lifecycle(kind, final)), record

    async def create(self, p: Prepared) -> dict[str, Any]:
        """Run to the end and return the final response object (non-streaming). A
        response that failed on the server's side is an error in OpenAI's shape."""
        final: dict[str, Any] | None = None
        async with contextlib.aclosing(self.start(p)) as events:
            async for event in events:
                if event["type"] in TERMINAL_EVENTS:
                    final = event["response"]
        assert final is not None
        error = final.get("error")
        if final["status"] == "failed" and error is not None:
            if error.get("code") == StoreUnavailable.code:
                raise StoreUnavailable(error["message"])
            raise ServerError(error["message"])
        return final

    def connection_opened(self, connection: Connection) -> None:
        self._connections.add(connection)

    def connection_closed(self, connection: Connection) -> None:
        """Unpin the connection's slots. A lane whose latest response was store:false
        loses its KV with the socket; a store:true chain's KV stays as a tenant-scoped
        prefix a later continuation (on any connection) can find."""
        self._connections.discard(connection)
        for lease in connection.leases:
            self.engine.release_lease(lease, drop_kv=not connection.lane_is_stored(lease))

    def leak_counters(self) -> dict[str, int]:
        """What must return to 0 once every client is gone (tests and /metrics read it)."""
        with self._live_lock:
            return {
                "responses_running": len(self._live),
                "concurrency_reserved": sum(self._running.values()),
            }

    def engine_status(self) -> dict[str, int]:
        slots = self.engine.slots
        return {
            "slots": len(slots.slots),
            "slots_busy": slots.in_use(),
            "slots_leased": slots.leased(),
            "responses_running": len(self._live),
        }

    # ----- retrieval ---------------------------------------------------------------------
    def get(self, response_id: str, tenant: str) -> dict[str, Any]:
        live = self._live.get(response_id)
        if live is not None and live.job.tenant == tenant and not live.deleted:
            return live.snapshot
        record = self.store.get(response_id, tenant)
        if record is None:
            raise NotFound(f"No response found with id '{response_id}'.", param="response_id")
        return record.response

    def delete(self, response_id: str, tenant: str) -> dict[str, Any]:
        """Delete a stored response. A running one is cancelled and will not be saved;
        no connection can continue a deleted id afterwards."""
        live = self._live.get(response_id)
        running = live is not None and live.job.tenant == tenant
        if live is not None and running:
            live.deleted = True
            self.engine.cancel(live.job)
        for connection in list(self._connections):
            if connection.tenant == tenant:
                connection.forget(response_id)
        if not self.store.delete(response_id, tenant) and not running:
            raise NotFound(f"No response found with id '{response_id}'.", param="response_id")
        return {"id": response_id, "object": "response.deleted", "deleted": True}

    def cancel(self, response_id: str, tenant: str) -> dict[str, Any]:
        live = self._live.get(response_id)
        if live is not None and live.job.tenant == tenant:
            self.engine.cancel(live.job)
            snapshot = dict(live.snapshot)
            snapshot["status"] = "cancelled"
            return snapshot
        # Already finished: answer with the response as it is (the SDK retries cancels).
        return self.get(response_id, tenant)

    def input_items(
        self, response_id: str, tenant: str, *, after: str | None, limit: int, order: str
    ) -> dict[str, Any]:
        record = self.store.get(response_id, tenant)
        if record is None:
            raise NotFound(f"No response found with id '{response_id}'.", param="response_id")
        items = [item_to_wire(i) for i in record.input_items]
        if order == "desc":
            items.reverse()
        if after is not None:
            ids = [i["id"] for i in items]
            if after not in ids:
                raise InvalidRequest(f"Item '{after}' is not in this list.", param="after")
            items = items[ids.index(after) + 1 :]
        page = items[:limit]
        return {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(items) > limit,
        }


class _OutputBuilder:
    """Turns parser segments into output items and their stream events."""

    def __init__(self, seq: ev.Sequencer, parser: OutputParser, namespaced: set[str]) -> None:
        self.seq = seq
        self.parser = parser
        self.namespaced = namespaced  # qualified names of tools that live in a namespace
        self.items: list[Item] = []
        self._msg_id: str | None = None
        self._msg_text: list[str] = []

    def feed(self, text: str) -> list[ev.Event]:
        return self._segments(self.parser.feed(text))

    def finish(self) -> list[ev.Event]:
        return self._segments(self.parser.finish()) + self._close_message()

    def items_wire(self) -> list[dict[str, Any]]:
        return [item_to_wire(i) for i in self.items]

    def _segments(self, segments: list[TextDelta | ToolCall]) -> list[ev.Event]:
        events: list[ev.Event] = []
        for s in segments:
            if isinstance(s, TextDelta):
                if self._msg_id is None:
                    self._msg_id = new_id("msg")
                    index = len(self.items)
                    events.append(self.seq(ev.message_added(index, self._msg_id)))
                    events.append(self.seq(ev.content_part_added(index, self._msg_id)))
                self._msg_text.append(s.text)
                events.append(self.seq(ev.text_delta(len(self.items), self._msg_id, s.text)))
            else:
                events.extend(self._close_message())
                index = len(self.items)
                ns, _, name = (
                    s.name.rpartition(".") if s.name in self.namespaced else ("", "", s.name)
                )
                item = FunctionCallItem(new_id("fc"), new_id("call"), name, s.arguments, ns or None)
                events.append(
                    self.seq(ev.function_call_added(index, item.id, item.call_id, item.name))
                )
                events.append(self.seq(ev.function_args_delta(index, item.id, item.arguments)))
                events.append(
                    self.seq(ev.function_args_done(index, item.id, item.name, item.arguments))
                )
                self.items.append(item)
                events.append(self.seq(ev.output_item_done(index, item_to_wire(item))))
        return events

    def _close_message(self) -> list[ev.Event]:
        if self._msg_id is None:
            return []
        index = len(self.items)
        text = "".join(self._msg_text)
        item = MessageItem(self._msg_id, "assistant", text)
        self.items.append(item)
        self._msg_id = None
        self._msg_text = []
        return [
            self.seq(ev.text_done(index, item.id, text)),
            self.seq(ev.content_part_done(index, item.id, text)),
            self.seq(ev.output_item_done(index, item_to_wire(item))),
        ]
