"""Admission checks, shared by HTTP and WebSocket: per-tenant rate (a sliding one-minute
window) and concurrency, and the context budget of one response."""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, defaultdict, deque

from warmloop.protocol.errors import ContextLengthExceeded, InvalidRequest, TooManyRequests

WINDOW_S = 60.0


class RateLimiter:
    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute  # 0: unlimited
        self._hits: defaultdict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def check(self, tenant: str) -> None:
        """Raise 429 if `tenant` is at its limit now, without counting anything."""
        self._admit(tenant, count=False)

    def hit(self, tenant: str) -> None:
        """Count one admitted create for `tenant`, or raise 429 with the seconds until a
        slot frees. A refused create is not counted."""
        self._admit(tenant, count=True)

    def _admit(self, tenant: str, *, count: bool) -> None:
        if self.per_minute <= 0:
            return
        now = time.monotonic()
        with self._lock:
            hits = self._hits[tenant]
            while hits and now - hits[0] >= WINDOW_S:
                hits.popleft()
            if len(hits) >= self.per_minute:
                retry = max(1, math.ceil(WINDOW_S - (now - hits[0])))
                raise TooManyRequests(
                    f"Rate limit reached: {self.per_minute} responses per minute for this key. "
                    f"Retry in {retry} s.",
                    headers={"Retry-After": str(retry)},
                )
            if count:
                hits.append(now)
            elif not hits:
                del self._hits[tenant]  # a check alone leaves no entry behind


class Admission:
    """Who may start a response now: each tenant's rate and its responses running at once.

    `check` (any thread) raises 429 without changing anything; `admit` (the event loop)
    checks and counts in one step, so parallel creates cannot both pass the last free
    place; `release` ends what `admit` counted.
    """

    def __init__(self, *, rate_per_minute: int, max_concurrent: int) -> None:
        self.rate = RateLimiter(rate_per_minute)
        self.max_concurrent = max_concurrent
        self._running: Counter[str] = Counter()
        self._lock = threading.Lock()

    def check(self, tenant: str) -> None:
        self._check_running(tenant)
        self.rate.check(tenant)

    def admit(self, tenant: str) -> None:
        with self._lock:
            self._check_running(tenant)
            self.rate.hit(tenant)  # only admitted creates count against the rate
            self._running[tenant] += 1

    def release(self, tenant: str) -> None:
        with self._lock:
            self._running[tenant] -= 1
            if self._running[tenant] <= 0:
                del self._running[tenant]

    def reserved(self) -> int:
        """Admissions not yet released, over all tenants (a leak check reads it)."""
        with self._lock:
            return sum(self._running.values())

    def _check_running(self, tenant: str) -> None:
        running = self._running[tenant]
        if running >= self.max_concurrent:
            raise TooManyRequests(
                f"This key already has {running} responses running "
                f"(limit {self.max_concurrent}); wait for one to finish.",
                code="concurrency_limit_exceeded",
            )


def output_budget(
    prompt_tokens: int,
    requested: int | None,
    *,
    ctx: int,
    max_output: int,
    max_input: int,
    generate: bool = True,
) -> int:
    """How many tokens the response may generate: what it asked for, else what is left
    of the context up to `max_output` (at least `output_room` when the prompt was cut
    to `fits`). 400 when the input or the request cannot fit."""
    if max_input and prompt_tokens > max_input:
        raise InvalidRequest(
            f"The input has {prompt_tokens} tokens; this server accepts at most {max_input}.",
            param="input",
            code="input_too_long",
        )
    room = ctx - prompt_tokens
    if requested is not None:
        if requested > max_output:
            raise InvalidRequest(
                f"max_output_tokens is too large: {requested}. This server allows at most "
                f"{max_output} output tokens per response.",
                param="max_output_tokens",
                code="integer_above_max_value",
            )
        if requested > room:
            raise ContextLengthExceeded(
                f"This model's context is {ctx} tokens; the input has {prompt_tokens} "
                f"tokens and max_output_tokens asks for {requested}.",
                param="input",
            )
        return requested
    if room < (1 if generate else 0):
        raise ContextLengthExceeded(
            f"This model's context is {ctx} tokens; the input has {prompt_tokens} tokens.",
            param="input",
        )
    return min(max_output, room)


def output_room(requested: int | None, *, ctx: int, max_output: int, generate: bool) -> int:
    """The room for the output a prompt must leave free in the context when the server
    chooses what to keep (truncation "auto"): max_output_tokens when asked for, else an
    eighth of the context up to `max_output`; nothing for a warm-up."""
    if not generate:
        return 0
    return requested if requested is not None else min(max_output, ctx // 8)


def fits(
    prompt_tokens: int,
    requested: int | None,
    *,
    ctx: int,
    max_output: int,
    max_input: int,
    generate: bool = True,
    share: float = 1.0,
) -> bool:
    """Whether a prompt this long is accepted and leaves `output_room` within `share`
    of the context."""
    if max_input and prompt_tokens > max_input:
        return False
    room = output_room(requested, ctx=ctx, max_output=max_output, generate=generate)
    return prompt_tokens + room <= int(share * ctx)
