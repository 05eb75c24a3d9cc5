"""The KV disk tier (kvcache/disk_store.py) under the manager, over the fake backend:
files that outlive the manager, what is refused, budgets, retention, a full disk, and
two servers sharing one directory."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.unit.fake_kv import FakeKV, job, make, run
from warmloop.kvcache.disk_store import MAGIC, DiskStore, identity_of
from warmloop.kvcache.manager import DiskSync, KVCacheManager

IDENTITY = {"format": 1, "model_sha": "abc", "ctx_per_seq": 64}


def store(
    path: Path, budget: int = 10**7, identity: dict[str, Any] | None = None, **kw: Any
) -> DiskStore:
    rejected: list[str] = []
    disk = DiskStore(path, budget, identity or IDENTITY, on_reject=rejected.append, **kw)
    disk.rejected = rejected  # type: ignore[attr-defined]
    return disk


def server(
    path: Path, *, sync: DiskSync = "off", host: int = 10**6, **kw: Any
) -> tuple[KVCacheManager, FakeKV, DiskStore]:
    disk = store(path, **kw)
    mgr, kv = make(2, host=host, disk=disk, disk_sync=sync)
    return mgr, kv, disk


def restart(mgr: KVCacheManager, path: Path, **kw: Any) -> tuple[KVCacheManager, FakeKV]:
    """The process ends (its queued writes finish) and a new one starts on `path`."""
    mgr.close()
    mgr2, kv2, _ = server(path, **kw)
    return mgr2, kv2


def kv_files(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.suffix == ".kv")


def test_a_drained_chain_comes_back_after_a_restart(tmp_path: Path) -> None:
    mgr, kv, _ = server(tmp_path)
    run(mgr, kv, job(range(10), lease="c1", durable=True), generated=(50, 51))
    assert mgr.persist(drain=True) == 1
    mgr2, kv2 = restart(mgr, tmp_path)
    [f] = kv_files(tmp_path)
    assert stat.S_IMODE(f.stat().st_mode) == 0o600
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    p = mgr2.place(job([*range(10), 50, 51, 7, 8], lease="c9", durable=True))
    assert p is not None and p.tier == "disk" and p.reuse == 12
    assert kv2.seqs[p.slot.id] == [("A", n) for n in [*range(10), 50, 51]]  # A's KV, restored
    mgr2.finish(p.slot)


def test_store_false_chains_never_reach_the_disk(tmp_path: Path) -> None:
    mgr, kv, disk = server(tmp_path, sync="turn", host=0)
    run(mgr, kv, job(range(10), lease="c1"), generated=(50,))
    run(mgr, kv, job(range(20, 30), lease="c2"))
    run(mgr, kv, job(range(40, 50), lease="c3"))  # evicts an idle chain: host RAM is 0
    assert mgr.persist(drain=True) == 0
    mgr.close()
    assert kv_files(tmp_path) == [] and len(disk) == 0


def test_turn_sync_keeps_one_file_per_chain(tmp_path: Path) -> None:
    """Each turn writes the chain; the previous turn's file is a prefix of it and goes."""
    mgr, kv, disk = server(tmp_path, sync="turn")
    tokens = list(range(10))
    for turn in range(3):
        p = run(mgr, kv, job(tokens, lease="c1", durable=True), generated=(60 + turn,))
        tokens = [*p.slot.tokens, 70 + turn]
    mgr.close()
    [entry] = list(disk)
    assert entry.tokens == tuple(tokens[:-1])
    assert len(kv_files(tmp_path)) == 1


def test_host_ram_spills_durable_chains_to_disk(tmp_path: Path) -> None:
    """A snapshot that leaves host RAM (over its budget) goes to disk and comes back."""
    one = len(FakeKV().seq_state_get(0)) + 0  # the fake's state size for an empty list
    budget = 400 + one
    mgr, kv, disk = server(tmp_path, host=budget)
    run(mgr, kv, job(range(10), lease="c1", durable=True))
    run(mgr, kv, job(range(100, 110), lease="c2", durable=True))
    for i in range(3, 7):  # more chains than slots and host RAM hold
        run(mgr, kv, job(range(i * 100, i * 100 + 10), lease=f"c{i}", durable=True))
    assert mgr.stats.disk_writes >= 1
    mgr.slots[0].lease = mgr.slots[1].lease = None
    p = mgr.place(job([*range(10), 99], durable=True))
    assert p is not None and p.reuse == 10 and p.tier in ("disk", "host")
    mgr.finish(p.slot)
    assert disk.flush(10)


@pytest.mark.parametrize("damage", ["flip", "truncate", "foreign", "tenant"])
def test_a_damaged_or_foreign_file_is_never_used(tmp_path: Path, damage: str) -> None:
    mgr, kv, _ = server(tmp_path)
    run(mgr, kv, job(range(10), lease="c1", durable=True))
    mgr.persist(drain=True)
    mgr.close()
    [f] = kv_files(tmp_path)
    raw = bytearray(f.read_bytes())
    if damage == "flip":  # one byte of the KV data
        raw[-40] ^= 0x01
    elif damage == "truncate":
        raw = raw[: len(raw) // 2]
    elif damage == "foreign":  # another model's file
        raw = raw.replace(b'"model_sha": "abc"', b'"model_sha": "abd"')
    else:  # the header claims another tenant
        raw = raw.replace(b'"tenant": "A"', b'"tenant": "B"')
    f.write_bytes(raw)
    mgr2, _kv2, disk2 = server(tmp_path)
    p = mgr2.place(job([*range(10), 5], durable=True))
    assert p is not None and p.tier == "none" and p.reuse == 0  # recomputed
    mgr2.finish(p.slot)
    q = mgr2.place(job([*range(10), 5], tenant="B", durable=True))
    assert q is not None and q.reuse == 0  # and never another tenant's
    mgr2.finish(q.slot)
    want = {"flip": "corrupt", "truncate": "truncated", "foreign": "foreign", "tenant": "corrupt"}
    assert disk2.rejected == [want[damage]]  # type: ignore[attr-defined]
    mgr2.close()
    assert f.exists() == (damage == "foreign")  # bad files go; other models' stay


def test_a_file_damaged_after_the_scan_is_refused_at_load(tmp_path: Path) -> None:
    mgr, kv, _ = server(tmp_path)
    run(mgr, kv, job(range(10), lease="c1", durable=True))
    mgr.persist(drain=True)
    mgr2, _kv2 = restart(mgr, tmp_path)
    [f] = kv_files(tmp_path)
    raw = bytearray(f.read_bytes())
    raw[-1] ^= 0xFF  # the checksum itself
    f.write_bytes(raw)
    p = mgr2.place(job([*range(10), 5], durable=True))
    assert p is not None and p.tier == "none"
    mgr2.finish(p.slot)
    mgr2.close()  # the delete is the writer's, in order after what was queued
    assert mgr2.stats.disk_rejected == 1 and not f.exists()


def test_other_tenants_never_match_a_file(tmp_path: Path) -> None:
    mgr, kv, _ = server(tmp_path)
    run(mgr, kv, job(range(10), lease="c1", durable=True))
    mgr.persist(drain=True)
    mgr2, _kv2 = restart(mgr, tmp_path)
    p = mgr2.place(job([*range(10), 5], tenant="B", durable=True))
    assert p is not None and p.reuse == 0
    mgr2.finish(p.slot)


def test_a_full_disk_degrades_to_recompute(tmp_path: Path, monkeypatch: Any) -> None:
    writes: list[bool] = []
    mgr, kv, disk = server(tmp_path, on_write=lambda ok, _n: writes.append(ok))

    def full(fd: int, data: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("warmloop.kvcache.disk_store.os.write", full)
    run(mgr, kv, job(range(10), lease="c1", durable=True))
    assert mgr.persist(drain=True) == 1  # queued ...
    assert disk.flush(10)
    assert writes == [False]  # ... and failed, leaving nothing behind
    assert list(tmp_path.iterdir()) == []
    mgr.poll_disk()
    assert len(disk) == 0  # forgotten: nothing will try to restore it
    mgr.slots[0].lease = None
    mgr.clear(mgr.slots[0])
    p = mgr.place(job([*range(10), 5], durable=True))
    assert p is not None and p.tier == "none"
    mgr.finish(p.slot)


def test_the_budget_drops_in_memory_chains_before_24h_ones(tmp_path: Path) -> None:
    disk = store(tmp_path, budget=3000)
    keep, _ = disk.add(tuple(range(10)), b"x" * 600, tenant="A", shared_prefix=0, retention="24h")
    first, _ = disk.add(tuple(range(20, 30)), b"y" * 600, tenant="A", shared_prefix=0,
                        retention="in_memory")  # fmt: skip
    _second, gone = disk.add(tuple(range(40, 50)), b"z" * 600, tenant="A", shared_prefix=0,
                            retention="in_memory")  # fmt: skip
    assert gone == []
    third, gone = disk.add(tuple(range(60, 70)), b"w" * 600, tenant="A", shared_prefix=0,
                           retention="in_memory")  # fmt: skip
    assert gone == [first] and keep in disk and third in disk
    assert disk.bytes_used <= disk.budget
    huge, gone = disk.add(tuple(range(5)), b"h" * 4000, tenant="A", shared_prefix=0,
                          retention="24h")  # fmt: skip
    assert huge is None and gone == []  # bigger than the whole budget: not written
    disk.close()
    assert len(kv_files(tmp_path)) == 3


def test_retention_expires_files_after_their_last_use(tmp_path: Path) -> None:
    mgr, kv, disk = server(tmp_path, ttl_in_memory_s=0.01)
    run(mgr, kv, job(range(10), lease="c1", durable=True))
    run(mgr, kv, job(range(20, 30), lease="c2", durable=True, retention="24h"))
    mgr.persist(drain=True)
    disk.flush(10)
    for f in kv_files(tmp_path):
        os.utime(f, (f.stat().st_atime, f.stat().st_mtime - 60))  # last used a minute ago
    mgr2, _kv2, disk2 = server(tmp_path, ttl_in_memory_s=30)
    assert [e.retention for e in disk2] == ["24h"]  # the in_memory one expired
    mgr.close()
    mgr2.close()
    assert len(kv_files(tmp_path)) == 1


def test_servers_sharing_a_directory_find_each_others_chains(tmp_path: Path) -> None:
    """A fleet's handoff: B is running when A drains; B's next placement sees A's file."""
    a, kv_a, _disk_a = server(tmp_path)
    b, _kv_b, _ = server(tmp_path)
    run(a, kv_a, job(range(10), lease="c1", durable=True), generated=(77,))
    a.persist(drain=True)
    a.close()
    p = b.place(job([*range(10), 77, 3], lease="c1", durable=True))
    assert p is not None and p.tier == "disk" and p.reuse == 11
    b.finish(p.slot)
    b.close()


def test_a_file_deleted_by_another_server_is_recomputed(tmp_path: Path) -> None:
    mgr, kv, _ = server(tmp_path)
    run(mgr, kv, job(range(10), lease="c1", durable=True))
    mgr.persist(drain=True)
    mgr2, _kv2 = restart(mgr, tmp_path)
    for f in kv_files(tmp_path):
        f.unlink()
    p = mgr2.place(job([*range(10), 5], durable=True))
    assert p is not None and p.tier == "none"
    mgr2.finish(p.slot)


def test_file_format_and_identity(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF" + bytes(range(256)) * 100)
    ident = identity_of(model, ctx_per_seq=64)
    assert ident == identity_of(model, ctx_per_seq=64)
    assert ident != identity_of(model, ctx_per_seq=128)
    model.write_bytes(b"GGUF" + bytes(range(255, -1, -1)) * 100)
    assert identity_of(model, ctx_per_seq=64) != ident
    disk = store(tmp_path / "d")
    entry, _ = disk.add((1, 2, 3), b"kv", tenant="A", shared_prefix=1, retention="24h")
    assert entry is not None and disk.load(entry, "A") == b"kv"  # from RAM while queued
    disk.close()
    [f] = kv_files(tmp_path / "d")
    assert f.read_bytes().startswith(MAGIC) and f.stat().st_size == entry.nbytes
    again = store(tmp_path / "d")
    [back], gone = again.rescan()
    assert list(again) == [back] and gone == []
    assert back.tokens == (1, 2, 3) and back.retention == "24h" and back.shared_prefix == 1
    assert again.load(back, "A") == b"kv"
    again.close()


# ----- what the review of the disk tier found: a misbehaving disk never raises -------------
def write_one(tmp_path: Path, **kw: Any) -> Path:
    mgr, kv, _ = server(tmp_path, **kw)
    run(mgr, kv, job(range(10), lease="c1", durable=True))
    mgr.persist(drain=True)
    mgr.close()
    [f] = kv_files(tmp_path)
    return f


def test_a_header_with_negative_counts_is_corrupt_not_a_crash(tmp_path: Path) -> None:
    f = write_one(tmp_path)
    raw = f.read_bytes()
    f.write_bytes(raw.replace(b'"tokens": 10', b'"tokens": -9'))
    mgr, _kv, disk = server(tmp_path)
    assert len(disk) == 0 and disk.rejected == ["corrupt"]  # type: ignore[attr-defined]
    mgr.close()
    assert not f.exists()


def test_another_format_is_left_alone(tmp_path: Path) -> None:
    f = write_one(tmp_path)
    f.write_bytes(b"WLKVDSK2" + f.read_bytes()[8:])  # a newer warmloop's file
    mgr, _kv, disk = server(tmp_path)
    assert len(disk) == 0 and disk.rejected == ["foreign"]  # type: ignore[attr-defined]
    mgr.close()
    assert f.exists()


def test_a_failing_delete_does_not_reach_placement(tmp_path: Path, monkeypatch: Any) -> None:
    f = write_one(tmp_path)
    os.utime(f, (0, 0))  # long expired: the next scan deletes it

    def read_only(self: Path, missing_ok: bool = False) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(Path, "unlink", read_only)
    mgr, _kv, disk = server(tmp_path)
    p = mgr.place(job([*range(10), 5], durable=True))
    assert p is not None and p.tier == "none"
    mgr.finish(p.slot)
    mgr.close()
    assert f.exists() and len(disk) == 0


def test_a_directory_deleted_at_run_time(tmp_path: Path) -> None:
    d = tmp_path / "kv"
    mgr, kv, disk = server(d)
    run(mgr, kv, job(range(10), lease="c1", durable=True))
    mgr.persist(drain=True)
    assert disk.flush(10)
    mgr.slots[0].lease = None
    mgr.clear(mgr.slots[0])
    shutil.rmtree(d)
    # its file is gone: recomputed; draining since the first persist, so written again
    p = run(mgr, kv, job([*range(10), 5], durable=True))
    assert p.tier == "none"
    mgr.close()
    assert len(kv_files(d)) == 1  # the directory is back and takes files


def test_a_file_llama_cpp_refuses_is_recomputed(tmp_path: Path) -> None:
    write_one(tmp_path)
    mgr, kv, disk = server(tmp_path)

    def refuse(seq: int, data: bytes | bytearray) -> None:
        raise RuntimeError("could not restore state into sequence")

    kv.seq_state_set = refuse  # type: ignore[method-assign]
    p = mgr.place(job([*range(10), 5], durable=True))
    assert p is not None and p.tier == "none" and p.reuse == 0
    mgr.finish(p.slot)
    assert len(disk) == 0 and mgr.stats.disk_rejected == 1
    mgr.close()


def test_superseding_keeps_the_longer_retention(tmp_path: Path) -> None:
    disk = store(tmp_path)
    disk.add((1, 2, 3), b"a", tenant="A", shared_prefix=0, retention="24h")
    newer, gone = disk.add((1, 2, 3, 4), b"b", tenant="A", shared_prefix=0, retention="in_memory")
    assert newer is not None and newer.retention == "24h" and len(gone) == 1
    disk.close()
    assert len(kv_files(tmp_path)) == 1


def test_a_released_conversations_shortened_snapshot_never_reaches_disk(tmp_path: Path) -> None:
    """store:false with a shared head: the head stays matchable in host RAM, but the
    snapshot's data still holds the conversation, so it is no longer durable."""
    mgr, kv, _ = server(tmp_path)
    run(mgr, kv, job(range(10), lease="c1", durable=True, shared_prefix=4))
    mgr.snapshot_idle(0.0)
    mgr.release("c1", drop_kv=True)
    [snap] = list(mgr.host)
    assert snap.tokens == (0, 1, 2, 3) and not snap.durable
    assert mgr.persist(drain=True) == 0
    mgr.close()
    assert kv_files(tmp_path) == []


def test_stale_temp_files_are_removed_at_start(tmp_path: Path) -> None:
    old, young = tmp_path / ".x.kv.1.a.tmp", tmp_path / ".y.kv.2.b.tmp"
    old.write_bytes(b"half a write")
    young.write_bytes(b"a write going on")
    os.utime(old, (0, 0))
    store(tmp_path).close()
    assert not old.exists() and young.exists()


def test_a_behind_writer_skips_writes_and_keeps_superseded_files(tmp_path: Path) -> None:
    disk = store(tmp_path, max_pending_bytes=100)
    first, _ = disk.add((1, 2), b"x" * 80, tenant="A", shared_prefix=0, retention="in_memory")
    assert disk.flush(10) and first is not None
    gate = threading.Event()
    disk._submit(gate.wait)  # the writer is stuck on a slow disk
    try:
        second, gone = disk.add((1, 2, 3), b"y" * 80, tenant="A", shared_prefix=0,
                                retention="in_memory")  # fmt: skip
        assert second is not None and gone == [first]  # queued: 80 bytes pending
        third, _ = disk.add((7,), b"z" * 80, tenant="A", shared_prefix=0, retention="in_memory")
        assert third is None  # over the pending bound: skipped, nothing waits
        added, _ = disk.rescan(force=True)
        assert added == []  # the superseded file, still on disk, is not read back in
    finally:
        gate.set()
    disk.close()
    assert [f.name for f in kv_files(tmp_path)] == [second.name]
