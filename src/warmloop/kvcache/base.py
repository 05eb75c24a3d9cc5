"""The KV cache interface the engine uses, and the types it speaks in.

A `Slot` is one engine sequence; `slot.tokens` is the exact token list whose KV the
sequence holds. The engine asks a `KVCache` to `place` a request on a slot for a request (a
`KVRequest`: the engine's job satisfies it as is) and runs the job on it; the cache
decides which slot, and moves KV into it first through the backend's `KVOps`. This
package imports nothing from the engine: the engine imports it.

Invariants every implementation keeps (engine thread only, so no locks):
- `slot.tokens` is exactly what the backend's sequence `slot.id` holds.
- A busy slot (its job is running) is never evicted, copied from through the index, or
  matched; its token list grows every step.
- A connection (`lease`) pins at most one slot.
- What leaves host RAM is recomputed later, never served wrong; nothing is matched
  across tenants.
`check_integrity()` verifies these against the backend and raises `KVIntegrityError`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

Tier = Literal["slot", "host", "disk", "prefix", "none"]
Retention = Literal["in_memory", "24h"]  # prompt_cache_retention's values (as on the wire)


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def reuse_cap(req: KVRequest) -> int:
    """At most this many of `req`'s prompt tokens can come from KV already computed: all
    of a warm-up's, all but the last of a prompt that samples (the last one is computed
    again for its logits)."""
    return len(req.tokens) if req.prefill_only else max(len(req.tokens) - 1, 0)


def reuse_of(held: Sequence[int], req: KVRequest, *, can_cut: bool) -> tuple[int, bool]:
    """The one rule for how many of `req`'s prompt tokens a sequence holding `held` can
    provide (never more than `reuse_cap`), and whether that needs the cut of `req.drop`
    first: a truncated prompt continues a chain with the tokens [start, end) removed,
    and a sequence holding that chain keeps what follows them after cutting them out
    and shifting the rest down (only where the model's positions can shift)."""
    cap = reuse_cap(req)
    plain = common_prefix(held, req.tokens)
    drop = req.drop
    if not can_cut or drop is None or plain < drop[0] or len(held) <= drop[1]:
        return min(plain, cap), False
    start, end = drop
    after = start + common_prefix(held[end:], req.tokens[start:])
    return (min(after, cap), True) if after > plain else (min(plain, cap), False)


@dataclass(eq=False)
class Slot:
    id: int
    tokens: list[int] = field(default_factory=list)
    tenant: str = ""
    lease: str | None = None  # connection that keeps this slot pinned across tool pauses
    busy: bool = False  # a job runs on it (the engine knows which)
    last_used: float = 0.0
    shared_prefix: int = 0  # leading tokens that are instructions/tools, not conversation
    # The owner left while a job ran: forget the conversation when that job finishes.
    forget_after_job: bool = False
    # The chain may be written to disk (store: true or a conversation) and for how long
    durable: bool = False
    retention: Retention = "in_memory"


@dataclass(frozen=True)
class Placement:
    slot: Slot
    reuse: int  # prompt tokens whose KV the job keeps
    tier: Tier  # where those tokens came from


class KVRequest(Protocol):
    """What the cache needs to know about a job to place it."""

    @property
    def tenant(self) -> str: ...
    @property
    def tokens(self) -> Sequence[int]: ...  # the whole prompt
    @property
    def lease(self) -> str | None: ...  # connection that keeps the slot pinned after the job
    @property
    def prefill_only(self) -> bool: ...  # no token is sampled: the whole prompt may be reused
    @property
    def shared_prefix(self) -> int: ...  # leading tokens that are instructions/tools
    @property
    def drop(self) -> tuple[int, int] | None: ...  # see reuse_of: a truncated chain's cut
    @property
    def durable(self) -> bool: ...  # the chain may outlive the process (written to disk)
    @property
    def retention(self) -> Retention: ...  # prompt_cache_retention: how long on disk


class KVOps(Protocol):
    """Sequence operations the backend provides to the cache."""

    def seq_truncate(self, seq: int, keep: int) -> None: ...
    def seq_copy(self, src: int, dst: int) -> None: ...
    def seq_state_get(self, seq: int) -> bytearray: ...
    def seq_state_set(self, seq: int, data: bytes | bytearray) -> None: ...
    def seq_len(self, seq: int) -> int: ...  # tokens the sequence holds (0 when empty)
    def seq_cut(self, seq: int, start: int, end: int) -> None: ...  # drop [start, end), shift
    @property
    def can_cut(self) -> bool: ...  # seq_cut works for this model (its positions can shift)


class KVIntegrityError(RuntimeError):
    """The cache's bookkeeping disagrees with itself or with the backend (a bug)."""


class KVCache(Protocol):
    slots: list[Slot]

    def can_place(self, req: KVRequest) -> bool:
        """True when `place(req)` would place it now (no side effects)."""
        ...

    def reusable(self, req: KVRequest) -> int:
        """Prompt tokens of `req` whose KV exists somewhere now (its own slot, an idle slot,
        host RAM, or a running chain of its tenant): what a placement could reuse at best."""
        ...

    def place(self, req: KVRequest) -> Placement | None:
        """Mark a slot busy for `req`, holding the longest reusable prefix of its prompt,
        or None when it must wait. The slot stays pinned to `req.lease` after the job."""
        ...

    def finish(self, slot: Slot) -> None:
        """The slot's job ended (what it computed was added with `computed`):
        it is idle and matchable again; the pin stays."""
        ...

    def clear(self, slot: Slot) -> None:
        """Forget the slot's KV (its content is unknown after a failed decode)."""
        ...

    def computed(self, slot: Slot, tokens: Sequence[int]) -> None:
        """A busy slot's sequence now holds the KV of `tokens` too (the engine decoded
        them): the one way a slot's tokens grow."""
        ...

    def trim(self, slot: Slot, keep: int) -> None:
        """Drop a busy slot's KV beyond its first `keep` tokens (draft tokens that
        verification rejected)."""
        ...

    def release(self, lease: str, *, drop_kv: bool) -> None:
        """The connection is gone: unpin its slot; with `drop_kv` forget its conversation
        (slot and host RAM) except the shared instructions/tools prefix."""
        ...

    def snapshot_idle(self, idle_s: float) -> int:
        """Move chains idle for longer than `idle_s` to host RAM; how many moved."""
        ...

    def in_use(self) -> int:
        """Busy slots."""
        ...

    def leased(self) -> int:
        """Slots pinned to a connection."""
        ...

    def host_bytes(self) -> int:
        """Bytes of KV held in host RAM."""
        ...

    def host_snapshots(self) -> int:
        """Chains held in host RAM."""
        ...

    def disk_bytes(self) -> int:
        """Bytes of KV files this server knows in its disk directory."""
        ...

    def disk_files(self) -> int:
        """Chains held on disk."""
        ...

    def disk_pending(self) -> int:
        """Disk writes, deletes and touches queued, not yet done."""
        ...

    def persist(self, *, drain: bool) -> int:
        """Write every durable chain held in a slot or host RAM to disk (not yet there);
        with `drain`, also each running one as its job finishes. How many were queued."""
        ...

    def persist_idle(self) -> int:
        """`--kv-disk-sync idle`: the engine has nothing to do; write durable chains not
        yet on disk. How many were queued."""
        ...

    def close(self, timeout_s: float = 60.0) -> None:
        """Finish queued disk writes (the process is ending)."""
        ...

    def check_integrity(self) -> None:
        """Raise `KVIntegrityError` naming every invariant that does not hold."""
        ...


KVCacheFactory = Callable[[KVOps], KVCache]
"""Builds the cache once the engine has its backend (the engine is built first)."""
