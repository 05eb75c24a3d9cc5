"""The mover: every KV move, carried out through the backend's `KVOps`.

It saves a slot's chain to host RAM, restores a snapshot, copies a prefix between slots
and truncates, keeping each slot's `tokens`, the host store and the index entries of
snapshots in step with what it moved, and counting it. It decides nothing: the manager
tells it what to move and the policy which snapshots make room.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from warmloop.kvcache.base import KVOps, Slot
from warmloop.kvcache.host_store import HostStore, Snapshot
from warmloop.kvcache.prefix_index import PrefixIndex
from warmloop.metrics import Metrics


@dataclass
class KVStats:
    snapshots: int = 0
    restores: int = 0
    prefix_copies: int = 0
    slot_evictions: int = 0
    host_evictions: int = 0
    cuts: int = 0  # truncated chains whose kept tail was shifted instead of recomputed
    disk_writes: int = 0  # chains queued to be written to disk
    disk_restores: int = 0
    disk_rejected: int = 0  # files not used (corrupt, truncated, foreign, gone)


class KVMover:
    """Moves KV on the engine thread (through KVCacheManager)."""

    def __init__(
        self,
        ops: KVOps,
        host: HostStore,
        index: PrefixIndex,
        stats: KVStats,
        metrics: Metrics | None = None,
    ) -> None:
        self.ops = ops
        self.host = host
        self.index = index
        self.stats = stats
        self.metrics = metrics

    def truncate(self, slot: Slot, keep: int) -> None:
        """Keep the first `keep` tokens of the slot's KV (0 always empties the sequence)."""
        if keep < len(slot.tokens) or keep == 0:
            self.ops.seq_truncate(slot.id, keep)
            del slot.tokens[keep:]

    def cut(self, slot: Slot, start: int, end: int) -> None:
        """Remove the slot's tokens [start, end); the ones after them move down."""
        self.ops.seq_cut(slot.id, start, end)
        del slot.tokens[start:end]
        self.stats.cuts += 1

    def read(self, slot: Slot) -> Snapshot:
        """The slot's chain as a snapshot, not yet stored."""
        data = self.ops.seq_state_get(slot.id)
        return Snapshot(
            tuple(slot.tokens),
            data,
            slot.tenant,
            slot.lease,
            slot.shared_prefix,
            durable=slot.durable,
            retention=slot.retention,
        )

    def store(self, snap: Snapshot, victims: list[Snapshot], *, started: float) -> None:
        """Drop `victims` from host RAM, then keep `snap` there and make it matchable;
        `started` is when reading the chain began (for the snapshot timing)."""
        for old in victims:
            self.drop(old)
            self.stats.host_evictions += 1
            if self.metrics:
                self.metrics.host_evictions.inc()
        self.host.put(snap)
        self.index.insert(snap.tenant, snap.tokens, snap)
        self.stats.snapshots += 1
        if self.metrics:
            self.metrics.snapshots.inc()
            self.metrics.snapshot_bytes.observe(snap.nbytes)
            self.metrics.snapshot_seconds.observe(time.perf_counter() - started)

    def drop(self, snap: Snapshot) -> None:
        """Forget a snapshot: out of host RAM and the index."""
        self.host.drop(snap)
        self.index.remove(snap)

    def copy(self, src: Slot, dst: Slot, n: int) -> None:
        """Make `dst` hold the first `n` tokens of `src`'s KV."""
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
        self.load(snap.data, snap.tokens, dst, n)
        self.host.touch(snap)
        if own_chain:
            self.drop(snap)
        self.stats.restores += 1
        if self.metrics:
            self.metrics.restores.inc()
            self.metrics.restore_seconds.observe(time.perf_counter() - t0)

    def load(self, data: bytes | bytearray, tokens: Sequence[int], dst: Slot, n: int) -> None:
        """Make `dst` hold the first `n` of `tokens`, from `data`: their sequence state."""
        self.ops.seq_truncate(dst.id, 0)
        dst.tokens = []  # until the state is in: a failed load leaves an empty slot
        self.ops.seq_state_set(dst.id, data)
        self.ops.seq_truncate(dst.id, n)
        dst.tokens = list(tokens[:n])
