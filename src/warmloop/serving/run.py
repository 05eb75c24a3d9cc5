"""One response while it runs: its output builder and event numbering, what the engine
said about it (cached tokens, tier, timings), and how it ends: the final event, the
record to keep, its metrics and its one log line.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from warmloop.engine.request import Finished, Placed, TokenOut
from warmloop.metrics import Metrics
from warmloop.serving import event_builder as ev
from warmloop.serving.output import OutputBuilder, response_object
from warmloop.serving.prepared import Prepared
from warmloop.session.response_store import ChainState, StoredResponse

log = logging.getLogger("warmloop.responses")


class ResponseRun:
    def __init__(self, p: Prepared, model_id: str, metrics: Metrics | None) -> None:
        self.p = p
        self.model_id = model_id
        self.metrics = metrics
        self.seq = ev.Sequencer()
        tools = p.request.tools
        namespaced = {t.qualified for t in tools if t.namespace}
        kinds = {t.qualified: t.kind for t in tools if t.kind != "function"}
        self.out = OutputBuilder(self.seq, p.parser(), namespaced, p.seal, kinds)
        self.t0 = time.perf_counter()
        self.cached = 0
        self.tier = "none"
        self.t_first: float | None = None
        self.t_last: float | None = None
        self.generated: list[str] = []
        # context_management: the summary's job (prompt, cached, output tokens)
        self.compaction: tuple[int, int, int] | None = None
        self.ended = False  # its end was logged and counted (finished, failed or left)
        self._end: tuple[str, int, int, int, Finished, dict[str, Any]] | None = None

    def response(self, status: str, **extra: Any) -> dict[str, Any]:
        return response_object(self.p, self.model_id, status, self.out.items_wire(), **extra)

    def placed(self, e: Placed) -> None:
        self.cached, self.tier = e.cached_tokens, e.tier

    def continue_with(self, p: Prepared) -> None:
        """The response's next phase (after its compaction) computes `p`: the same
        response, its prompt compacted. Its output and events go on."""
        assert p.id == self.p.id
        self.p = p

    def compacted(self, summary_job: Prepared, cached: int, fin: Finished) -> None:
        """The summary was written: its tokens count in this response's usage."""
        self.compaction = (len(summary_job.tokens), cached, fin.output_tokens)

    def token(self, e: TokenOut) -> list[ev.Event]:
        now = time.perf_counter()
        if self.metrics:
            if self.t_last is None:
                self.metrics.ttft_seconds.observe(now - self.t0)
            else:
                self.metrics.token_seconds.observe(now - self.t_last)
        if self.t_first is None:
            self.t_first = now
        self.t_last = now
        self.generated.append(e.text)
        return self.out.feed(e.text)

    def finished(self, fin: Finished, *, cancelled: bool) -> tuple[ev.Event, StoredResponse]:
        """The final event (not yet numbered: it is sent only once the record is safe)
        and the record to keep."""
        p = self.p
        prompt, cached, output = len(p.tokens), self.cached, fin.output_tokens
        if self.compaction is not None:  # usage counts the summary's job too
            prompt, cached, output = (
                a + b for a, b in zip((prompt, cached, output), self.compaction, strict=True)
            )
        now = time.perf_counter()
        timings: dict[str, Any] = {
            "ttft_ms": round(((self.t_first or now) - self.t0) * 1000.0, 2),
            "duration_ms": round((now - self.t0) * 1000.0, 2),
            "prefill_ms": round(fin.prefill_ms, 2),
            "decode_ms": round(fin.decode_ms, 2),
            "delta_only": p.delta_only,
            "cache_tier": self.tier,
            "draft_tokens": fin.drafted,
            "accepted_tokens": fin.accepted,
            "truncated_items": p.truncated_items,
        }
        if p.request.not_offered:  # hosted tools this server cannot run
            timings["tools_not_offered"] = list(p.request.not_offered)
        if self.compaction is not None:
            keys = ("input_tokens", "cached_tokens", "output_tokens")
            timings["compaction"] = dict(zip(keys, self.compaction, strict=True))
        if cancelled or fin.reason == "cancelled":
            status, kind, reason = "cancelled", "incomplete", None
        elif fin.reason == "length":
            status, kind, reason = "incomplete", "incomplete", "max_output_tokens"
        else:
            status, kind, reason = "completed", "completed", None
        usage = ev.usage(prompt, cached, output, min(self.out.reasoning_tokens, output))
        final = self.response(status, usage=usage, incomplete_reason=reason, extra=timings)
        output_items = tuple(self.out.items)
        # A compaction's summary is already the last item of the prompt's history.
        generated = tuple(i for i in output_items if i is not p.compacted_by)
        record = StoredResponse(
            id=p.id,
            owner=p.ctx.tenant,
            response=final,
            input_items=p.new_items,
            output_items=output_items,
            history=p.history_in + generated,
            chain=ChainState.of(p.prompt_text + "".join(self.generated), fin.chain_tokens),
            stored=p.request.store,
        )
        self._end = (status, prompt, cached, output, fin, timings)
        return ev.response_lifecycle(kind, final), record

    def report(self) -> None:
        """Log and count how the response ended, once its final event goes out (a save
        that fails after `finished` makes it `failed` instead)."""
        assert self._end is not None
        status, prompt, cached, output, fin, timings = self._end
        computed = prompt - cached
        p = self.p
        self.ended = True
        if self.metrics:
            self.metrics.prompt_tokens_computed.inc(computed)
            self.metrics.output_tokens.inc(output)
            self.metrics.draft_tokens.inc(fin.drafted)
            self.metrics.accepted_tokens.inc(fin.accepted)
            self.metrics.responses.labels(status).inc()
        log.info(
            "response id=%s conn=%s status=%s input=%d cached=%d computed=%d output=%d "
            "tier=%s delta_only=%s drafted=%d accepted=%d ttft_ms=%.1f duration_ms=%.1f",
            p.id, p.ctx.connection.id if p.ctx.connection else "-", status, prompt,
            cached, computed, output, self.tier, p.delta_only, fin.drafted,
            fin.accepted, timings["ttft_ms"], timings["duration_ms"],
        )  # fmt: skip

    def failed(self, error: dict[str, Any]) -> ev.Event:
        """The numbered `response.failed` event."""
        log.warning("response %s failed: %s", self.p.id, error.get("message"))
        self.ended = True
        if self.metrics:
            self.metrics.responses.labels("failed").inc()
        return self.seq(ev.response_lifecycle("failed", self.response("failed", error=error)))

    def left(self) -> None:
        """The client went away before the response ended (its stream was closed, or
        never read): the job was cancelled. One log line and one count, as for any end."""
        self.ended = True
        p = self.p
        output = len(self.generated)
        if self.metrics:
            self.metrics.output_tokens.inc(output)
            self.metrics.responses.labels("client_left").inc()
        log.info(
            "response id=%s conn=%s status=client_left input=%d cached=%d output=%d "
            "tier=%s delta_only=%s duration_ms=%.1f",
            p.id, p.ctx.connection.id if p.ctx.connection else "-", len(p.tokens),
            self.cached, output, self.tier, p.delta_only,
            (time.perf_counter() - self.t0) * 1000.0,
        )  # fmt: skip
