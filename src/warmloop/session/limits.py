"""Per-tenant rate limit on creates: a sliding one-minute window, shared by HTTP and WS."""

from __future__ import annotations

import math
import threading
import time
from collections import defaultdict, deque

from warmloop.protocol.errors import TooManyRequests

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
