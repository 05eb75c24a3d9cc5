"""Eviction policy: which slot a request gets, and which host snapshots make room.

A policy is pure: it reads the slots and the host store and returns a plan; it never
moves KV or changes a record (the mover carries plans out). `can_place` is "the policy
returns a plan", so a plan must be what `lease` then does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from warmloop.kvcache.base import KVRequest, Slot, reuse_of
from warmloop.kvcache.host_store import HostStore, Snapshot


@dataclass(frozen=True)
class SlotPlan:
    slot: Slot
    # The slot holds another connection's idle chain: it loses its pin (the chain goes
    # to host RAM before the slot is overwritten).
    evicts: bool


class EvictionPolicy(Protocol):
    def plan_slot(
        self, slots: Sequence[Slot], req: KVRequest, *, kv_reuse: bool, can_cut: bool
    ) -> SlotPlan | None:
        """The slot `req` gets, or None when it must wait."""
        ...

    def plan_host(self, host: HostStore, nbytes: int) -> list[Snapshot]:
        """Snapshots to drop so that `nbytes` more fit in the budget (`nbytes` itself
        fits: the caller checked `host.fits`)."""
        ...


class LRUPolicy:
    """Prefer the connection's own slot, then a free slot with the most reusable KV (an
    empty one, lowest id first, on ties), then the least recently used idle chain; host
    RAM drops least recently used first."""

    def plan_slot(
        self, slots: Sequence[Slot], req: KVRequest, *, kv_reuse: bool, can_cut: bool
    ) -> SlotPlan | None:
        """Order: the slot the request's connection leases (wait while it is busy); else
        the free unleased slot with the longest common prefix; on ties an empty slot,
        the lowest id first (busy slots stay contiguous: llama.cpp decodes consecutive
        sequences in one micro-batch), else the least recently used chain (without KV
        reuse simply the lowest slot); else the least recently used idle leased slot (an
        eviction)."""
        if req.lease is not None:
            own = next((s for s in slots if s.lease == req.lease), None)
            if own is not None:
                return None if own.busy else SlotPlan(own, evicts=False)
        free = [s for s in slots if not s.busy and s.lease is None]
        if free:

            def score(s: Slot) -> tuple[int, int, float]:
                if not kv_reuse:  # nothing held is worth keeping: the lowest slot
                    return (0, 0, -s.id)
                same = s.tenant == req.tenant
                # A slot holding a truncated chain scores what it keeps after the cut.
                reuse = reuse_of(s.tokens, req, can_cut=can_cut)[0] if same else 0
                if not s.tokens:  # an empty slot before one whose chain would go
                    return (reuse, 1, -s.id)
                return (reuse, 0, -s.last_used)

            return SlotPlan(max(free, key=score), evicts=False)
        idle = [s for s in slots if not s.busy]
        if not idle:
            return None
        return SlotPlan(min(idle, key=lambda s: s.last_used), evicts=True)

    def plan_host(self, host: HostStore, nbytes: int) -> list[Snapshot]:
        over = host.bytes_used + nbytes - host.budget
        victims: list[Snapshot] = []
        for snap in host:  # least recently used first
            if over <= 0:
                break
            victims.append(snap)
            over -= host.charged(snap)
        return victims
