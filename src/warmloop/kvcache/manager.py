"""The KV cache manager: the one `KVCache` the engine uses.

`lease(req)` orchestrates: the policy plans which slot the request gets (and whether
that evicts an idle chain); the manager matches the longest reusable prefix (the slot's
own tokens, an idle slot or a host snapshot in the prefix index, or a chain running
right now); the mover carries it out (saves what would be overwritten to host RAM,
copies or restores the prefix, truncates). The manager keeps the bookkeeping around
it: which slot is busy or leased, and which idle slots are in the index.

Invariants: those of `kvcache.base`, plus every idle slot with tokens and every host
snapshot is in the prefix index under its tenant with exactly its tokens (with
kv_reuse; without it nothing is indexed or snapshotted). `check_integrity` checks them
(integrity.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Hashable, Sequence
from typing import Literal

from warmloop.kvcache.base import (
    KVCache,
    KVIntegrityError,
    KVOps,
    KVRequest,
    Placement,
    Retention,
    Slot,
    Tier,
    common_prefix,
    reuse_cap,
    reuse_of,
)
from warmloop.kvcache.disk_store import DiskEntry, DiskRejected, DiskStore
from warmloop.kvcache.host_store import HostStore, Snapshot
from warmloop.kvcache.integrity import problems
from warmloop.kvcache.mover import KVMover, KVStats
from warmloop.kvcache.policy import EvictionPolicy, LRUPolicy, SlotPlan
from warmloop.kvcache.prefix_index import PrefixIndex
from warmloop.metrics import Metrics

log = logging.getLogger("warmloop.kvcache")

DiskSync = Literal["turn", "idle", "off"]
_EXPIRE_EVERY_S = 60.0
_DRAIN_WAIT_S = 30.0  # how long a drain's write may wait for room in the writer's queue


class KVCacheManager(KVCache):
    """Owned by the engine thread (no locks): slots, their tokens, the index and the
    host store change only in its methods, called there. Gauges read counts."""

    def __init__(
        self,
        n_slots: int,
        ops: KVOps,
        *,
        kv_reuse: bool = True,
        host_budget_bytes: int = 0,
        min_snapshot_tokens: int = 4,
        metrics: Metrics | None = None,
        policy: EvictionPolicy | None = None,
        disk: DiskStore | None = None,
        disk_sync: DiskSync = "off",
    ) -> None:
        self.slots = [Slot(i) for i in range(n_slots)]
        self.ops = ops
        self.kv_reuse = kv_reuse
        self.host = HostStore(host_budget_bytes if kv_reuse else 0)
        self.index = PrefixIndex()
        self.policy: EvictionPolicy = policy if policy is not None else LRUPolicy()
        self.min_snapshot_tokens = min_snapshot_tokens
        self.metrics = metrics
        self.stats = KVStats()
        self.mover = KVMover(ops, self.host, self.index, self.stats, metrics)
        self.disk = disk if kv_reuse else None
        self.disk_sync = disk_sync
        self.draining = False  # persist each chain as its job finishes
        self._too_big: dict[int, int] = {}  # slot id -> token count that did not fit
        self._expired_at = 0.0
        self.poll_disk()

    # ----- queries ---------------------------------------------------------------------
    def leased_to(self, lease: str) -> Slot | None:
        return next((s for s in self.slots if s.lease == lease), None)

    def in_use(self) -> int:
        return sum(1 for s in self.slots if s.busy)

    def leased(self) -> int:
        return sum(1 for s in self.slots if s.lease is not None)

    def host_bytes(self) -> int:
        return self.host.bytes_used

    def host_snapshots(self) -> int:
        return len(self.host)

    def disk_bytes(self) -> int:
        return self.disk.bytes_used if self.disk else 0

    def disk_files(self) -> int:
        return len(self.disk) if self.disk else 0

    def disk_pending(self) -> int:
        return self.disk.pending() if self.disk else 0

    # ----- matching and leasing --------------------------------------------------------
    def match_prefix(
        self, tenant: str, tokens: Sequence[int], *, exclude: Slot | None = None
    ) -> tuple[int, Slot | Snapshot | DiskEntry | None]:
        """The longest prefix of `tokens` whose KV an idle slot, a host snapshot or a file
        of `tenant` holds, and the holder to take it from (the fastest to move)."""
        n, holders = self.index.match(tenant, tokens)
        source = self._pick_source(holders - {exclude}) if n else None
        return (n, source) if source is not None else (0, None)

    def reusable(self, req: KVRequest) -> int:
        if not self.kv_reuse:
            return 0
        self.poll_disk()
        own = self.leased_to(req.lease) if req.lease is not None else None
        n = 0
        if own is not None and own.tenant == req.tenant:
            n = reuse_of(own.tokens, req, can_cut=self.ops.can_cut)[0]
        n = max(n, self.index.match(req.tenant, req.tokens)[0])
        return min(max(n, self._best_running(req, None)[1]), reuse_cap(req))

    def can_place(self, req: KVRequest) -> bool:
        return self._plan(req) is not None

    def place(self, req: KVRequest) -> Placement | None:
        self.poll_disk()
        plan = self._plan(req)
        if plan is None:
            return None
        try:
            return self._fill(req, plan)
        except Exception:
            # A KV move failed halfway: the slot's KV no longer matches its tokens.
            log.exception("slot %d: placement failed; clearing it", plan.slot.id)
            plan.slot.busy = False
            plan.slot.lease = None
            self.clear(plan.slot)
            raise

    def _plan(self, req: KVRequest) -> SlotPlan | None:
        return self.policy.plan_slot(
            self.slots, req, kv_reuse=self.kv_reuse, can_cut=self.ops.can_cut
        )

    def _fill(self, req: KVRequest, plan: SlotPlan) -> Placement:
        target = plan.slot
        if plan.evicts:
            # The victim's connection loses its pin; its chain goes to host RAM below.
            self.stats.slot_evictions += 1
            if self.metrics:
                self.metrics.slot_evictions.inc()
        if not self.kv_reuse:
            self.mover.truncate(target, 0)
            return self._claim(target, req, 0, "none")
        while True:  # again without a file that could not be restored
            placed = self._fill_from_best(req, target)
            if placed is not None:
                return placed

    def _fill_from_best(self, req: KVRequest, target: Slot) -> Placement | None:
        """Fill `target` from the best source of `req`'s prefix; None when that was a file
        that could not be used (it is forgotten: the caller tries again without it)."""
        tokens = req.tokens
        cap = reuse_cap(req)
        own, cut = (0, False)
        if target.tenant == req.tenant:
            own, cut = reuse_of(target.tokens, req, can_cut=self.ops.can_cut)
        best, source = self.match_prefix(req.tenant, tokens, exclude=target)
        best = min(best, cap)
        if best <= own:
            source = None
        running, n = self._best_running(req, target)
        if min(n, cap) > max(best if source else 0, own):
            # A fork of a chain that is generating right now: its KV up to here is final.
            source, best = running, min(n, cap)
        if source is None:
            if cut and req.drop is not None:
                # A truncated chain: cut the dropped turns out, keep the tail's KV.
                self.index.remove(target)
                self.mover.cut(target, *req.drop)
            self._save(target, keep=own)
            self.mover.truncate(target, own)
            return self._claim(target, req, own, "slot" if own > 0 else "none")
        if isinstance(source, DiskEntry):
            assert self.disk is not None
            t_read = time.perf_counter()
            data = self._read_disk(source, req.tenant)
            if data is None:  # not usable: place again without it
                return None
            if self.metrics:
                self.metrics.disk_read_seconds.observe(time.perf_counter() - t_read)
            self._save(target)
            t0 = time.perf_counter()
            try:
                self.mover.load(data, source.tokens, target, best)
            except Exception as exc:  # llama.cpp refused a checked file: recompute
                log.warning("KV file %s could not be restored: %s", source.name, exc)
                if self.metrics:
                    self.metrics.disk_rejected.labels("unreadable").inc()
                self._refused(source, "ignore")
                self.mover.truncate(target, 0)
                return None
            self.disk.touch(source)
            self.stats.disk_restores += 1
            if self.metrics:
                self.metrics.disk_restores.inc()
                self.metrics.restore_seconds.observe(time.perf_counter() - t0)
            return self._claim(target, req, best, "disk")
        self._save(target)
        if isinstance(source, Slot):
            self.mover.copy(source, target, best)
            return self._claim(target, req, best, "prefix")
        own_chain = req.lease is not None and source.lease == req.lease
        self.mover.restore(source, target, best, own_chain=own_chain)
        return self._claim(target, req, best, "host")

    def _best_running(self, req: KVRequest, target: Slot | None) -> tuple[Slot | None, int]:
        """The busy slot of the request's tenant sharing the longest prefix (busy slots
        are not in the index: their token lists grow every step)."""
        best: tuple[Slot | None, int] = (None, 0)
        for s in self.slots:
            if s.busy and s is not target and s.tenant == req.tenant:
                n = common_prefix(s.tokens, req.tokens)
                if n > best[1]:
                    best = (s, n)
        return best

    def _pick_source(self, holders: set[Hashable]) -> Slot | Snapshot | DiskEntry | None:
        slots = [h for h in holders if isinstance(h, Slot) and not h.busy]
        if slots:  # a device-side copy beats a restore from host RAM
            return max(slots, key=lambda s: s.last_used)
        snaps = [h for h in holders if isinstance(h, Snapshot) and h in self.host]
        if snaps:  # host RAM beats a file
            return max(snaps, key=lambda s: s.created)
        files = [h for h in holders if isinstance(h, DiskEntry) and self._on_disk(h)]
        return max(files, key=lambda e: e.last_used) if files else None

    def _on_disk(self, entry: DiskEntry) -> bool:
        return self.disk is not None and entry in self.disk and not entry.failed

    def _claim(self, slot: Slot, req: KVRequest, reuse: int, tier: Tier) -> Placement:
        self.index.remove(slot)
        slot.busy = True
        slot.tenant = req.tenant
        slot.lease = req.lease
        slot.shared_prefix = req.shared_prefix
        slot.durable = req.durable
        slot.retention = req.retention
        if self.metrics:
            self.metrics.lookups.labels(tier).inc()
            if reuse:
                self.metrics.prompt_tokens_reused.labels(tier).inc(reuse)
        return Placement(slot, reuse, tier)

    # ----- host RAM ----------------------------------------------------------------------
    def _save(self, slot: Slot, *, keep: int = 0) -> bool:
        """Save `slot`'s chain to host RAM (before it is overwritten beyond `keep`) if worth it.

        Returns True when the slot's whole token list is held somewhere else afterwards.
        """
        lost = len(slot.tokens) - keep
        if not self.kv_reuse or lost < self.min_snapshot_tokens or slot.busy:
            return False
        if self._held_elsewhere(slot):
            return True
        if (
            self.host.budget == 0
            and slot.durable
            and self._on_disk_already(slot.tenant, slot.tokens)
        ):
            return True  # disk is the only tier below, and the chain is there already
        t0 = time.perf_counter()
        snap = self.mover.read(slot)
        if not self.host.fits(snap.nbytes):
            return self._spill(snap)
        victims = self.policy.plan_host(self.host, snap.nbytes)
        for old in victims:
            self._spill(old)  # leaving host RAM: to disk, if it is a durable chain
        self.mover.store(snap, victims, started=t0)
        log.debug(
            "slot %d: saved %d tokens (%d bytes) to host", slot.id, len(snap.tokens), len(snap.data)
        )
        return True

    def _held_elsewhere(self, slot: Slot) -> bool:
        """True if another idle slot or a snapshot already holds all of `slot`'s tokens
        (a file does not count: host RAM is faster to restore from)."""
        n, holders = self.index.match(slot.tenant, slot.tokens)
        return n == len(slot.tokens) and any(
            isinstance(h, Slot | Snapshot) for h in holders - {slot}
        )

    def _prefix_held(self, snap: Snapshot) -> bool:
        n, _ = self.index.match(snap.tenant, snap.tokens[: snap.shared_prefix])
        return n >= snap.shared_prefix

    def _evict(self, slot: Slot) -> bool:
        """Move an idle chain out of its slot into host RAM and unpin the slot. False (and
        nothing changes) when it cannot be saved: the chain is never dropped here."""
        if slot.busy or not self._save(slot):
            return False
        slot.lease = None
        self.clear(slot)
        return True

    # ----- lifecycle -------------------------------------------------------------------
    def finish(self, slot: Slot) -> None:
        slot.busy = False
        slot.last_used = time.monotonic()
        if slot.forget_after_job:
            slot.forget_after_job = False
            self.mover.truncate(slot, min(slot.shared_prefix, len(slot.tokens)))
        if self.kv_reuse and slot.tokens:
            self.index.insert(slot.tenant, slot.tokens, slot)
        if self.disk_sync == "turn" or self.draining:
            self._persist_slot(slot, wait_s=_DRAIN_WAIT_S if self.draining else 0.0)

    def clear(self, slot: Slot) -> None:
        self.index.remove(slot)
        self.mover.truncate(slot, 0)

    def computed(self, slot: Slot, tokens: Sequence[int]) -> None:
        assert slot.busy  # busy: not in the index, so only its list changes
        slot.tokens.extend(tokens)

    def trim(self, slot: Slot, keep: int) -> None:
        assert slot.busy and 0 < keep <= len(slot.tokens)  # busy: not in the index
        self.mover.truncate(slot, keep)

    def release(self, lease: str, *, drop_kv: bool) -> None:
        slot = self.leased_to(lease)
        if slot is not None:
            slot.lease = None
            if drop_kv and slot.busy:  # the cancelled job finishes later: forget then
                slot.forget_after_job = True
            elif drop_kv:
                keep = min(slot.shared_prefix, len(slot.tokens))
                self.index.remove(slot)
                self.mover.truncate(slot, keep)
                if self.kv_reuse and slot.tokens:
                    self.index.insert(slot.tenant, slot.tokens, slot)
        if drop_kv:
            for snap in self.host:
                if snap.lease != lease:
                    continue
                self.index.remove(snap)
                if snap.shared_prefix and not self._prefix_held(snap):
                    # Only the shared instructions stay matchable (restores truncate to
                    # the match), so the conversation itself can never be reached again;
                    # its data still holds it, so it never goes to disk.
                    snap.tokens = snap.tokens[: snap.shared_prefix]
                    snap.lease = None
                    snap.durable = False
                    self.index.insert(snap.tenant, snap.tokens, snap)
                else:
                    self.mover.drop(snap)

    def snapshot_idle(self, idle_s: float) -> int:
        now = time.monotonic()
        moved = 0
        for slot in self.slots:
            if slot.busy or slot.lease is None or not slot.tokens or now - slot.last_used < idle_s:
                continue
            moved += self._evict(slot)
        return moved

    # ----- disk ------------------------------------------------------------------------------
    def poll_disk(self) -> None:
        """Bring the index up to date with the disk directory: files other servers wrote
        or deleted (one stat when nothing changed), writes that failed, expired files.
        Never raises: a disk that misbehaves only means recomputing."""
        try:
            self._poll_disk()
        except Exception:
            log.exception("KV disk: looking at the directory failed")

    def _poll_disk(self) -> None:
        if self.disk is None:
            return
        added, gone = self.disk.rescan()
        for entry in added:
            self.index.insert(entry.tenant, entry.tokens, entry)
        for entry in gone + self.disk.failed():
            self.index.remove(entry)
        now = time.monotonic()
        if now - self._expired_at > _EXPIRE_EVERY_S:
            self._expired_at = now
            for entry in self.disk.expire():
                self.index.remove(entry)

    def _on_disk_already(self, tenant: str, tokens: Sequence[int]) -> bool:
        n, holders = self.index.match(tenant, tokens)
        return n == len(tokens) and any(
            isinstance(h, DiskEntry) and self._on_disk(h) for h in holders
        )

    def _spill(self, snap: Snapshot) -> bool:
        """Queue a durable chain leaving host RAM to be written to disk; True if it was
        (or already is there)."""
        if self.disk is None or not snap.durable or len(snap.tokens) < self.min_snapshot_tokens:
            return False
        if self._on_disk_already(snap.tenant, snap.tokens):
            return True
        # The snapshot's bytes are in RAM anyway: they do not count against the writer's
        # queue bound.
        return self._write(
            snap.tokens,
            snap.data,
            snap.tenant,
            snap.shared_prefix,
            snap.retention,
            fresh=False,
        )

    def _write(
        self,
        tokens: tuple[int, ...],
        data: bytes | bytearray,
        tenant: str,
        shared_prefix: int,
        retention: Retention,
        *,
        fresh: bool,
        wait_s: float = 0.0,
    ) -> bool:
        assert self.disk is not None
        entry, gone = self.disk.add(
            tokens,
            data,
            tenant=tenant,
            shared_prefix=shared_prefix,
            retention=retention,
            fresh=fresh,
            wait_s=wait_s,
        )
        for old in gone:
            self.index.remove(old)
        if entry is None:
            return False
        self.index.insert(tenant, tokens, entry)
        self.stats.disk_writes += 1
        if self.metrics:
            self.metrics.disk_writes.inc()
        return True

    def _read_disk(self, entry: DiskEntry, tenant: str) -> bytes | bytearray | None:
        """The file's KV, or None (the entry is forgotten; corrupt files are deleted)."""
        assert self.disk is not None
        try:
            return self.disk.load(entry, tenant)
        except DiskRejected as exc:
            self._refused(entry, "delete" if exc.reason in ("corrupt", "truncated") else "forget")
            return None

    def _refused(self, entry: DiskEntry, fate: Literal["delete", "ignore", "forget"]) -> None:
        """A file that could not be restored leaves the index and the store: deleted when
        damaged, ignored (never read again) when llama.cpp refused it, else (gone,
        another tenant's) forgotten. The prompt is computed instead."""
        assert self.disk is not None
        self.stats.disk_rejected += 1
        self.index.remove(entry)
        if fate == "delete":
            self.disk.drop(entry)
        elif fate == "ignore":
            self.disk.ignore(entry)
        else:
            self.disk.forget(entry)

    def _persist_slot(self, slot: Slot, *, wait_s: float = 0.0) -> bool:
        """Write an idle slot's durable chain to disk unless a file already holds it (or
        it did not fit the budget last time, at this length). Never raises."""
        if (
            self.disk is None
            or slot.busy
            or not slot.durable
            or len(slot.tokens) - slot.shared_prefix < self.min_snapshot_tokens
            or self._too_big.get(slot.id) == len(slot.tokens)
            or self._on_disk_already(slot.tenant, slot.tokens)
        ):
            return False
        try:
            data = self.ops.seq_state_get(slot.id)
            if not self.disk.fits(len(data) + 4 * len(slot.tokens)):
                self._too_big[slot.id] = len(slot.tokens)
                return False
            tokens = tuple(slot.tokens)
            return self._write(
                tokens,
                data,
                slot.tenant,
                slot.shared_prefix,
                slot.retention,
                fresh=True,
                wait_s=wait_s,
            )
        except Exception:
            log.exception("slot %d: writing its chain to disk failed", slot.id)
            return False

    def persist(self, *, drain: bool) -> int:
        if self.disk is None:
            return 0
        self.draining = self.draining or drain
        wait_s = _DRAIN_WAIT_S if drain else 0.0  # a drain's writes wait for the disk
        n = sum(self._persist_slot(s, wait_s=wait_s) for s in self.slots if not s.busy)
        return n + sum(self._spill(snap) for snap in self.host if snap.durable)

    def persist_idle(self) -> int:
        if self.disk is None or self.disk_sync != "idle":
            return 0
        return sum(self._persist_slot(s) for s in self.slots if not s.busy)

    def close(self, timeout_s: float = 60.0) -> None:
        if self.disk is not None:
            if not self.disk.flush(timeout_s):
                log.warning("KV disk writes still queued after %g s", timeout_s)
            self.disk.close(timeout_s)

    # ----- integrity ---------------------------------------------------------------------
    def check_integrity(self) -> None:
        found = problems(
            self.slots, self.ops, self.host, self.index, kv_reuse=self.kv_reuse, disk=self.disk
        )
        if found:
            raise KVIntegrityError("KV cache integrity: " + "; ".join(found))
