"""The KV cache manager: every placement decision for engine sequences lives here.

The engine asks `lease(job)` for a slot; the manager picks it, moves whatever must move
(saves an idle chain to host RAM, restores a snapshot, copies a shared prefix from
another slot, truncates to the reusable prefix) through the `KVOps` the engine's
backend provides, and says how many prompt tokens are reused and from which tier.

Invariants (engine thread only, so no locks):
- `slot.tokens` is exactly the token list whose KV the sequence holds.
- A slot with a job (`busy`) is never a victim, a copy source, or in the prefix index.
- Every idle slot with tokens and every host snapshot is in the prefix index under its
  tenant; nothing is ever matched across tenants.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Hashable
from dataclasses import dataclass

from warmloop.engine.request import Job
from warmloop.engine.slots import KVOps, Placement, Slot, Tier, common_prefix
from warmloop.kvcache.base import KVCache
from warmloop.kvcache.host_store import HostStore, Snapshot
from warmloop.kvcache.prefix_index import PrefixIndex
from warmloop.metrics import Metrics

log = logging.getLogger("warmloop.kvcache")


@dataclass
class KVStats:
    snapshots: int = 0
    restores: int = 0
    prefix_copies: int = 0
    slot_evictions: int = 0
    host_evictions: int = 0


class KVCacheManager:  # implements kvcache.base.KVCache and the engine's Placer
    def __init__(
        self,
        n_slots: int,
        ops: KVOps,
        *,
        kv_reuse: bool = True,
        host_budget_bytes: int = 0,
        min_snapshot_tokens: int = 4,
        metrics: Metrics | None = None,
    ) -> None:
        self.slots = [Slot(i) for i in range(n_slots)]
        self.ops = ops
        self.kv_reuse = kv_reuse
        self.host = HostStore(host_budget_bytes if kv_reuse else 0)
        self.index = PrefixIndex()
        self.min_snapshot_tokens = min_snapshot_tokens
        self.metrics = metrics
        self.stats = KVStats()

    # ----- queries ---------------------------------------------------------------------
    def leased_to(self, lease: str) -> Slot | None:
        return next((s for s in self.slots if s.lease == lease), None)

    def in_use(self) -> int:
        return sum(1 for s in self.slots if s.busy)

    def leased(self) -> int:
        return sum(1 for s in self.slots if s.lease is not None)

    # ----- matching and leasing --------------------------------------------------------
    def match_prefix(
        self, tenant: str, tokens: list[int], *, exclude: Slot | None = None
    ) -> tuple[int, Slot | Snapshot | None]:
        """The longest prefix of `tokens` whose KV an idle slot or a host snapshot of
        `tenant` holds, and the holder to take it from (an idle slot before a snapshot)."""
        n, holders = self.index.match(tenant, tokens)
        source = self._pick_source(holders - {exclude}) if n else None
        return (n, source) if source is not None else (0, None)

    def can_lease(self, job: Job) -> bool:
        return self._choose(job) is not None

    def lease(self, job: Job) -> Placement | None:
        """Pin a slot to `job` holding the longest reusable prefix, or None if it must wait.

        The slot stays pinned to `job.lease` (the connection lane) after the job, until
        `release` or an eviction."""
        choice = self._choose(job)
        if choice is None:
            return None
        target, evicting = choice
        try:
            return self._place(job, target, evicting)
        except Exception:
            # A KV move failed halfway: the slot's KV no longer matches its tokens.
            log.exception("slot %d: placement failed; clearing it", target.id)
            target.job = None
            target.lease = None
            self.clear(target)
            raise

    def _place(self, job: Job, target: Slot, evicting: bool) -> Placement:
        if evicting:
            # The victim's connection loses its pin; its chain goes to host RAM below.
            self.stats.slot_evictions += 1
            if self.metrics:
                self.metrics.slot_evictions.inc()
        cap = len(job.tokens) if job.prefill_only else len(job.tokens) - 1
        if not self.kv_reuse:
            self._truncate(target, 0)
            return self._claim(target, job, 0, "none")
        own = common_prefix(target.tokens, job.tokens) if target.tenant == job.tenant else 0
        own = min(own, cap)
        best, source = self.match_prefix(job.tenant, job.tokens, exclude=target)
        best = min(best, cap)
        if best <= own:
            source = None
        running, n = self._best_running(job, target)
        if min(n, cap) > max(best if source else 0, own):
            # A fork of a chain that is generating right now: its KV up to here is final.
            source, best = running, min(n, cap)
        if source is None:
            self.snapshot(target, keep=own)
            self._truncate(target, own)
            return self._claim(target, job, own, "slot" if own > 0 else "none")
        self.snapshot(target)
        if isinstance(source, Slot):
            self._copy(source, target, best)
            return self._claim(target, job, best, "prefix")
        self.restore(
            source, target, best, own_chain=job.lease is not None and source.lease == job.lease
        )
        return self._claim(target, job, best, "host")

    def _choose(self, job: Job) -> tuple[Slot, bool] | None:
        """The slot `job` would get, and whether that evicts an idle chain (no side effects).

        Order: the slot the job's connection leases; else the free unleased slot with the
        longest common prefix (least recently used on ties); else the least recently used
        idle leased slot.
        """
        if job.lease is not None:
            own = self.leased_to(job.lease)
            if own is not None:
                return None if own.busy else (own, False)
        free = [s for s in self.slots if not s.busy and s.lease is None]
        if free:

            def score(s: Slot) -> tuple[int, float]:
                same = self.kv_reuse and s.tenant == job.tenant
                return (common_prefix(s.tokens, job.tokens) if same else 0, -s.last_used)

            return max(free, key=score), False
        idle = [s for s in self.slots if not s.busy]
        if not idle:
            return None
        return min(idle, key=lambda s: s.last_used), True

    def _best_running(self, job: Job, target: Slot) -> tuple[Slot | None, int]:
        """The busy slot of the job's tenant sharing the longest prefix (busy slots are
        not in the index: their token lists grow every step)."""
        best: tuple[Slot | None, int] = (None, 0)
        for s in self.slots:
            if s.busy and s is not target and s.tenant == job.tenant:
                n = common_prefix(s.tokens, job.tokens)
                if n > best[1]:
                    best = (s, n)
        return best

    def _pick_source(self, holders: set[Hashable]) -> Slot | Snapshot | None:
        slots = [h for h in holders if isinstance(h, Slot) and not h.busy]
        if slots:  # a device-side copy beats a restore from host RAM
            return max(slots, key=lambda s: s.last_used)
        snaps = [h for h in holders if isinstance(h, Snapshot) and h in self.host]
        return max(snaps, key=lambda s: s.created) if snaps else None

    def _claim(self, slot: Slot, job: Job, reuse: int, tier: Tier) -> Placement:
        self.index.remove(slot)
        slot.job = job
        slot.tenant = job.tenant
        slot.lease = job.lease
        slot.shared_prefix = job.shared_prefix
        if self.metrics:
            self.metrics.lookups.labels(tier).inc()
            if reuse:
                self.metrics.prompt_tokens_reused.labels(tier).inc(reuse)
        return Placement(slot, reuse, tier)

    # ----- moving KV ---------------------------------------------------------------------
    def _truncate(self, slot: Slot, keep: int) -> None:
        if keep < len(slot.tokens) or keep == 0:
            self.ops.seq_truncate(slot.id, keep)
            del slot.tokens[keep:]

    def snapshot(self, slot: Slot, *, keep: int = 0) -> bool:
        """Save `slot`'s chain to host RAM (before it is overwritten beyond `keep`) if worth it.

        Returns True when the slot's whole token list is held somewhere else afterwards.
        """
        lost = len(slot.tokens) - keep
        if not self.kv_reuse or lost < self.min_snapshot_tokens or slot.busy:
            return False
        if self._held_elsewhere(slot):
            return True
        t0 = time.perf_counter()
        data = self.ops.seq_state_get(slot.id)
        snap = Snapshot(tuple(slot.tokens), data, slot.tenant, slot.lease, slot.shared_prefix)
        if not self.host.fits(snap.nbytes):
            return False
        for old in self.host.put(snap):
            self.index.remove(old)
            self.stats.host_evictions += 1
            if self.metrics:
                self.metrics.host_evictions.inc()
        self.index.insert(snap.tenant, snap.tokens, snap)
        self.stats.snapshots += 1
        if self.metrics:
            self.metrics.snapshots.inc()
            self.metrics.snapshot_bytes.observe(snap.nbytes)
            self.metrics.snapshot_seconds.observe(time.perf_counter() - t0)
        log.debug(
            "slot %d: saved %d tokens (%d bytes) to host", slot.id, len(snap.tokens), len(data)
        )
        return True

    def _prefix_held(self, snap: Snapshot) -> bool:
        n, _ = self.index.match(snap.tenant, snap.tokens[: snap.shared_prefix])
        return n >= snap.shared_prefix

    def _held_elsewhere(self, slot: Slot) -> bool:
        """True if another idle slot or a snapshot already holds all of `slot`'s tokens."""
        n, holders = self.index.match(slot.tenant, slot.tokens)
        return n == len(slot.tokens) and bool(holders - {slot})

    def _copy(self, src: Slot, dst: Slot, n: int) -> None:
        self.ops.seq_truncate(dst.id, 0)
        self.ops.seq_copy(src.id, dst.id)
        self.ops.seq_truncate(dst.id, n)
        dst.tokens = list(src.tokens[:n])
        self.stats.prefix_copies += 1
        if self.metrics:
            self.metrics.prefix_copies.inc()

    def restore(self, snap: Snapshot, dst: Slot, n: int, *, own_chain: bool) -> None:
        """Load the first `n` tokens of `snap` into `dst`; a chain back in its own
        connection's slot leaves host RAM (a later eviction saves it again)."""
        t0 = time.perf_counter()
        self.ops.seq_truncate(dst.id, 0)
        self.ops.seq_state_set(dst.id, snap.data)
        self.ops.seq_truncate(dst.id, n)
        dst.tokens = list(snap.tokens[:n])
        self.host.touch(snap)
        if own_chain:  # the chain lives in a slot again; a later eviction re-saves it
            self.host.drop(snap)
            self.index.remove(snap)
        self.stats.restores += 1
        if self.metrics:
            self.metrics.restores.inc()
            self.metrics.restore_seconds.observe(time.perf_counter() - t0)

    # ----- lifecycle -------------------------------------------------------------------
    def finish(self, slot: Slot) -> None:
        """The slot's job ended: it is idle, and its tokens can be matched again."""
        slot.job = None
        slot.last_used = time.monotonic()
        if slot.forget_after_job:
            slot.forget_after_job = False
            self._truncate(slot, min(slot.shared_prefix, len(slot.tokens)))
        if self.kv_reuse and slot.tokens:
            self.index.insert(slot.tenant, slot.tokens, slot)

    def clear(self, slot: Slot) -> None:
        """Forget the slot's KV (after a failed decode, or when its owner is gone)."""
        self.index.remove(slot)
        self.ops.seq_truncate(slot.id, 0)
        slot.tokens.clear()

    def release(self, lease: str, *, drop_kv: bool) -> None:
        """The connection is gone: unpin its slot. With drop_kv its conversation is
        forgotten; only the tenant's shared instructions/tools prefix stays reusable."""
        slot = self.leased_to(lease)
        if slot is not None:
            slot.lease = None
            if drop_kv and slot.busy:  # the cancelled job finishes later: forget then
                slot.forget_after_job = True
            elif drop_kv:
                keep = min(slot.shared_prefix, len(slot.tokens))
                self.index.remove(slot)
                self._truncate(slot, keep)
                if slot.tokens:
                    self.index.insert(slot.tenant, slot.tokens, slot)
        if drop_kv:
            for snap in self.host:
                if snap.lease != lease:
                    continue
                self.index.remove(snap)
                if snap.shared_prefix and not self._prefix_held(snap):
                    # Only the shared instructions stay matchable (restores truncate to
                    # the match), so the conversation itself can never be reached again.
                    snap.tokens = snap.tokens[: snap.shared_prefix]
                    snap.lease = None
                    self.index.insert(snap.tenant, snap.tokens, snap)
                else:
                    self.host.drop(snap)

    def snapshot_idle(self, idle_s: float) -> int:
        """Move chains idle for longer than `idle_s` from their slots to host RAM."""
        now = time.monotonic()
        moved = 0
        for slot in self.slots:
            if slot.busy or slot.lease is None or not slot.tokens or now - slot.last_used < idle_s:
                continue
            moved += self.evict(slot)
        return moved

    def evict(self, slot: Slot) -> bool:
        """Move an idle chain out of its slot into host RAM and unpin the slot. False (and
        nothing changes) when it cannot be saved: the chain is never dropped here."""
        if slot.busy or not self.snapshot(slot):
            return False
        slot.lease = None
        self.clear(slot)
        return True


def _conforms(manager: KVCacheManager) -> KVCache:  # mypy checks the interface here
    return manager
