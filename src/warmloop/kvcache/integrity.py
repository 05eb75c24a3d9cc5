"""The KV cache's integrity check: every invariant of `kvcache.base` and the manager,
checked against the backend and between the slots, the host store and the prefix index.

Cheap enough for tests to run after every step; the server does not run it on its own.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable

from warmloop.kvcache.base import KVOps, Slot, common_prefix
from warmloop.kvcache.disk_store import DiskEntry, DiskStore
from warmloop.kvcache.host_store import HostStore, Snapshot
from warmloop.kvcache.prefix_index import PrefixIndex


def problems(
    slots: list[Slot],
    ops: KVOps,
    host: HostStore,
    index: PrefixIndex,
    *,
    kv_reuse: bool,
    disk: DiskStore | None = None,
) -> list[str]:
    """Every disagreement found, each naming the slot, snapshot or holder concerned."""
    found: list[str] = []
    for slot in slots:
        held = ops.seq_len(slot.id)
        if held != len(slot.tokens):
            found.append(
                f"slot {slot.id} records {len(slot.tokens)} tokens but its sequence holds {held}"
            )
        entry = index.entry(slot)
        if slot.busy:
            if entry is not None:
                found.append(f"slot {slot.id} is busy but in the prefix index")
            continue
        want = (slot.tenant, tuple(slot.tokens)) if kv_reuse and slot.tokens else None
        if entry != want:
            found.append(f"idle slot {slot.id}: {_disagreement(want, entry)}")
    pinned = Counter(s.lease for s in slots if s.lease is not None)
    for lease, n in pinned.items():
        if n > 1:
            found.append(f"lease {lease!r} pins {n} slots")
    charged = sum(host.charged(s) for s in host)
    if host.bytes_used != charged:
        found.append(
            f"host store counts {host.bytes_used} bytes but its snapshots were charged {charged}"
        )
    if host.bytes_used > host.budget:
        found.append(f"host store holds {host.bytes_used} bytes over its budget of {host.budget}")
    for snap in host:
        entry = index.entry(snap)
        if entry != (snap.tenant, snap.tokens):
            found.append(f"snapshot {snap.id}: {_disagreement((snap.tenant, snap.tokens), entry)}")
    files = list(disk) if disk is not None else []
    for file in files:
        if index.entry(file) != (file.tenant, file.tokens):
            want = (file.tenant, file.tokens)
            found.append(f"file {file.name}: {_disagreement(want, index.entry(file))}")
    if disk is not None and disk.bytes_used != sum(e.nbytes for e in files):
        found.append(f"disk store counts {disk.bytes_used} bytes, its files add up otherwise")
    known = set(slots)
    for holder in index:
        if holder not in known and holder not in host and not (disk and holder in disk):
            found.append(
                f"prefix index holds {_holder(holder)}: neither a slot, in host, nor a file"
            )
    found += [f"prefix index: {p}" for p in index.verify()]
    return found


_Entry = tuple[str, tuple[int, ...]] | None  # (tenant, tokens) in the prefix index


def _disagreement(want: _Entry, got: _Entry) -> str:
    def show(e: _Entry) -> str:
        if e is None:
            return "nothing"
        head = ", ".join(map(str, e[1][:8])) + (", ..." if len(e[1]) > 8 else "")
        return f"{len(e[1])} tokens [{head}] of tenant {e[0]!r}"

    where = ""
    if want is not None and got is not None and want[0] == got[0]:
        where = f" (tokens differ from position {common_prefix(want[1], got[1])})"
    return f"should be indexed as {show(want)} but the prefix index has {show(got)}{where}"


def _holder(holder: Hashable) -> str:
    if isinstance(holder, Slot):
        return f"a foreign slot {holder.id}"
    if isinstance(holder, Snapshot):
        return f"snapshot {holder.id}"
    if isinstance(holder, DiskEntry):
        return f"file {holder.name}"
    return repr(holder)[:80]
