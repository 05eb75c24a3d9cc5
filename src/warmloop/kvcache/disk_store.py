"""Disk tier: chains' KV in files under `--kv-disk-dir`, below the host-RAM tier.

A snapshot that leaves host RAM, a chain written at a turn boundary (`--kv-disk-sync`)
and every chain a draining server holds become one file each. A file says what it is
for and is checked before its KV is used:

    magic (8 bytes) | header length (u32 LE) | header (JSON) | tokens (i32 LE each)
    | KV data (llama_state_seq_get_data) | SHA-256 of everything before (32 bytes)

The header names the model file's identity, the context parameters and the engine
version (`identity`, compared whole), the tenant, the token and data counts, the
leading shared-prefix tokens and the retention. A file whose checksum, sizes, identity,
tenant or tokens disagree is never restored: the caller recomputes, and the reason is
counted. The name is a hash of the identity, the tenant and the tokens, so one chain
saved twice is one file, and servers sharing a directory (a fleet) find each other's.

Writes run on a writer thread, in order with deletes and touches: a temp file (0600,
O_EXCL) in the directory, fsync, rename, fsync of the directory. A failed write (a full
disk) leaves no file and marks the entry failed: the chain is recomputed later, never
served wrong, and no response fails. An entry is readable from the moment it is
queued (its bytes stay in RAM until they are on disk).

Retention: a file's last use is its mtime (touched on every restore); `in_memory`
chains expire `ttl_in_memory` after it, `24h` ones after 24 hours. Over the byte
budget, in_memory files go before 24h ones, least recently used first. A file that is
a prefix of a newer one of the same tenant is deleted (a restore truncates to what it
needs, so the longer file serves both).

Owned by the engine thread (through KVCacheManager), except the writer's own fields.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import queue
import struct
import threading
import time
import uuid
from array import array
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from warmloop.kvcache.base import Retention

log = logging.getLogger("warmloop.kvcache.disk")

MAGIC = b"WLKVDSK1"
FORMAT = 1
SUFFIX = ".kv"
_HEAD = struct.Struct("<8sI")
_DIGEST = 32
MAX_HEADER = 1 << 20
RESCAN_S = 5.0  # look at the directory at least this often, whatever its mtime says

RETENTION_24H_S = 24 * 3600.0

# Why a file was not used (the `reason` label of warmloop_kv_disk_rejected).
Reject = Literal["truncated", "corrupt", "foreign", "tenant", "gone", "unreadable"]


@dataclass(eq=False)
class DiskEntry:
    """One chain's file (or one queued to be written)."""

    name: str
    tokens: tuple[int, ...]
    tenant: str
    nbytes: int  # the file's size
    shared_prefix: int
    retention: Retention
    last_used: float  # wall clock (the file's mtime)
    # Set while queued: the KV bytes until the writer has them on disk.
    data: bytearray | bytes | None = field(default=None, repr=False)
    header: bytes = field(default=b"", repr=False)  # set while queued
    failed: bool = False  # the write failed (set by the writer thread)
    dropped: bool = False  # deleted, or about to be (the writer skips its write)


class DiskRejected(Exception):
    def __init__(self, reason: Reject, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: Reject = reason


def identity_of(model_path: Path, **params: Any) -> dict[str, Any]:
    """What a file's KV depends on: the model file (its size and the SHA-256 of all of it
    up to 64 MiB, else of 17 slices of 1 MiB spread over it from the header to the end:
    cheap for any model size, and two models that differ only in some layers differ in
    the slices that hold them), plus the caller's context parameters and versions."""
    size = model_path.stat().st_size
    digest = hashlib.sha256()
    with model_path.open("rb") as f:
        if size <= 64 << 20:
            digest.update(f.read())
        else:
            for k in range(17):
                f.seek((size - (1 << 20)) * k // 16)
                digest.update(f.read(1 << 20))
    return {"format": FORMAT, "model_size": size, "model_sha": digest.hexdigest(), **params}


def file_name(identity: Mapping[str, Any], tenant: str, tokens: tuple[int, ...]) -> str:
    h = hashlib.sha256(json.dumps(identity, sort_keys=True).encode())
    h.update(b"\0" + tenant.encode() + b"\0")
    h.update(array("i", tokens).tobytes())
    return h.hexdigest()[:40] + SUFFIX


def encode_header(
    identity: Mapping[str, Any],
    *,
    tenant: str,
    tokens: int,
    data_bytes: int,
    shared_prefix: int,
    retention: Retention,
) -> bytes:
    header = {
        "identity": dict(identity),
        "tenant": tenant,
        "tokens": tokens,
        "data_bytes": data_bytes,
        "shared_prefix": shared_prefix,
        "retention": retention,
        "saved_at": round(time.time(), 3),
    }
    raw = json.dumps(header, sort_keys=True).encode()
    return _HEAD.pack(MAGIC, len(raw)) + raw


def read_header(f: Any, size: int) -> tuple[dict[str, Any], tuple[int, ...], int]:
    """(header, tokens, offset of the KV data) of an open file of `size` bytes; raises
    DiskRejected (never reads the KV data)."""
    head = f.read(_HEAD.size)
    if len(head) < _HEAD.size:
        raise DiskRejected("truncated", "shorter than its header")
    magic, hlen = _HEAD.unpack(head)
    if magic != MAGIC:  # another format (a newer warmloop's) or another program's file
        raise DiskRejected("foreign", "not a KV file of this format")
    if hlen > MAX_HEADER:
        raise DiskRejected("corrupt", f"header of {hlen} bytes")
    raw = f.read(hlen)
    if len(raw) < hlen:
        raise DiskRejected("truncated", "header cut short")
    try:
        header = json.loads(raw)
        n = int(header["tokens"])
        data_bytes = int(header["data_bytes"])
        int(header.get("shared_prefix", 0))
        if n < 0 or data_bytes < 0:
            raise ValueError(f"{n} tokens, {data_bytes} bytes")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DiskRejected("corrupt", f"header: {exc}") from None
    expected = _HEAD.size + hlen + 4 * n + data_bytes + _DIGEST
    if size < expected:
        raise DiskRejected("truncated", f"{size} bytes of {expected}")
    if size > expected:
        raise DiskRejected("corrupt", f"{size} bytes, expected {expected}")
    tokens = array("i")
    tokens.frombytes(f.read(4 * n))
    return header, tuple(tokens), _HEAD.size + hlen + 4 * n


class DiskStore:
    """Chains' KV files in one directory, within a byte budget (see the module)."""

    def __init__(
        self,
        directory: Path,
        budget_bytes: int,
        identity: Mapping[str, Any],
        *,
        ttl_in_memory_s: float = 3600.0,
        max_pending_bytes: int = 512 << 20,
        on_reject: Callable[[Reject], None] | None = None,
        on_write: Callable[[bool, int], None] | None = None,
    ) -> None:
        self.dir = directory
        self.budget = budget_bytes
        self.identity = dict(identity)
        self.ttl = {"in_memory": ttl_in_memory_s, "24h": RETENTION_24H_S}
        self._on_reject = on_reject
        self._on_write = on_write
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._entries: dict[str, DiskEntry] = {}
        self._ignored: set[str] = set()  # unreadable files and ones refused at restore
        self._foreign: dict[str, float] = {}  # other models' files: name -> mtime
        # Files this server has let go of whose delete is queued: never read back in
        # (guarded by _lock; the writer removes a name once its file is gone).
        self._deleting: set[str] = set()
        # Entries whose write failed, until `failed()` takes them (guarded by _lock):
        # placements poll for them, so they are handed over, never searched for.
        self._failed_writes: list[DiskEntry] = []
        self._dir_stamp: int | None = None
        self._scanned_at = 0.0
        self.bytes_used = 0
        self._queue: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._queued = 0  # writer tasks not yet done (guarded by _lock)
        # Fresh KV bytes queued and not yet on disk (guarded by _lock): past
        # max_pending_bytes, `add` refuses (after waiting `wait_s`), so a slow disk skips
        # writes instead of filling RAM.
        self.max_pending = max_pending_bytes
        self._pending_bytes = 0
        self._lock = threading.Condition()
        self._writer = threading.Thread(target=self._write_loop, name="warmloop-kv-disk")
        self._writer.daemon = True
        self._writer.start()
        self._remove_stale_temp_files()

    def _remove_stale_temp_files(self, older_than_s: float = 600.0) -> None:
        """Temp files a crashed writer left (a SIGKILL mid-write); a live writer's are
        younger (a write takes seconds)."""
        now = time.time()
        with contextlib.suppress(OSError):
            for name in os.listdir(self.dir):
                if name.startswith(".") and name.endswith(".tmp"):
                    with contextlib.suppress(OSError):
                        if now - (self.dir / name).stat().st_mtime > older_than_s:
                            (self.dir / name).unlink()

    # ----- the index of files ------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[DiskEntry]:
        return iter(list(self._entries.values()))

    def __contains__(self, entry: object) -> bool:
        return isinstance(entry, DiskEntry) and self._entries.get(entry.name) is entry

    def path(self, entry: DiskEntry) -> Path:
        return self.dir / entry.name

    def expired(self, entry: DiskEntry, now: float) -> bool:
        return now > entry.last_used + self.ttl[entry.retention]

    def rescan(self, *, force: bool = False) -> tuple[list[DiskEntry], list[DiskEntry]]:
        """Files added and removed since the last look (by another server sharing the
        directory, or before this one started): (new entries, entries gone). Cheap when
        nothing changed: one stat of the directory."""
        try:
            stamp: int | None = self.dir.stat().st_mtime_ns
        except FileNotFoundError:  # deleted under us: every file is gone; start again
            stamp = None
            with contextlib.suppress(OSError):
                self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError:
            return [], []
        # The directory's mtime says when names came or went; NFS caches it for a while,
        # so look anyway every RESCAN_S.
        fresh = time.monotonic() - self._scanned_at < RESCAN_S
        if stamp is not None and stamp == self._dir_stamp and fresh and not force:
            return [], []
        self._dir_stamp = stamp
        self._scanned_at = time.monotonic()
        try:
            names = {n for n in os.listdir(self.dir) if n.endswith(SUFFIX)}
        except OSError:
            names = set()
        with self._lock:
            deleting = set(self._deleting)
        now = time.time()
        added: list[DiskEntry] = []
        new = names - self._entries.keys() - self._ignored - self._foreign.keys() - deleting
        for name in sorted(new):
            entry = self._read_entry(name)
            if entry is None:
                continue
            if self.expired(entry, now):
                self._queue_delete(entry.name)
                continue
            self._entries[name] = entry
            self.bytes_used += entry.nbytes
            added.append(entry)
        gone = [e for n, e in list(self._entries.items()) if n not in names and e.data is None]
        for entry in gone:
            self.forget(entry)
        self._ignored &= names
        for name in list(self._foreign):
            if name not in names:
                del self._foreign[name]
        return added, gone

    def _read_entry(self, name: str) -> DiskEntry | None:
        """The entry for file `name` (its header only), or None: unusable (counted;
        damaged files deleted, other models' and formats' remembered and left)."""
        path = self.dir / name
        try:
            with path.open("rb") as f:
                st = os.fstat(f.fileno())
                header, tokens, _ = read_header(f, st.st_size)
            tenant = str(header.get("tenant", ""))
            foreign = header.get("identity") != self.identity
            if not foreign and file_name(self.identity, tenant, tokens) != name:
                raise DiskRejected("corrupt", "its name does not match its content")
        except FileNotFoundError:
            return None
        except Exception as exc:  # any unreadable file is just not used
            reason: Reject = exc.reason if isinstance(exc, DiskRejected) else "unreadable"
            log.warning("KV file %s not used: %s", name, exc)
            self._reject(reason)
            if reason in ("truncated", "corrupt"):  # complete files are renamed in: damaged
                self._queue_delete(name)
            elif reason == "foreign":
                self._foreign[name] = _mtime(path)
            else:
                self._ignored.add(name)
            return None
        if foreign:  # another model's or build's: not ours to use; deleted once stale
            self._foreign[name] = st.st_mtime
            self._reject("foreign")
            return None
        retention: Retention = "24h" if header.get("retention") == "24h" else "in_memory"
        return DiskEntry(
            name=name,
            tokens=tokens,
            tenant=tenant,
            nbytes=st.st_size,
            shared_prefix=int(header.get("shared_prefix", 0)),
            retention=retention,
            last_used=st.st_mtime,
        )

    # ----- writing ---------------------------------------------------------------------------
    def fits(self, nbytes: int) -> bool:
        return nbytes <= self.budget

    def add(
        self,
        tokens: tuple[int, ...],
        data: bytearray | bytes,
        *,
        tenant: str,
        shared_prefix: int,
        retention: Retention,
        fresh: bool = True,
        wait_s: float = 0.0,
    ) -> tuple[DiskEntry | None, list[DiskEntry]]:
        """Queue `data` (the KV of exactly `tokens`) to be written. Returns the new entry
        and the entries it made go: least recently used ones for room, and older files
        of the tenant that are a prefix of it. None (and nothing changes) when it cannot
        fit the budget, or when `fresh` data (a copy made for this write, not bytes that
        were in host RAM anyway) would put more than `max_pending` bytes in the writer's
        queue after waiting `wait_s` for it: a slow disk skips writes, never fills RAM."""
        # Files that are a prefix of the new one (the same chain's earlier turns): the new
        # file serves them too. They are deleted once it is on disk, never before, so a
        # crash in between leaves the older file rather than none. The new file keeps the
        # longest retention among them.
        superseded = [
            e
            for e in self._entries.values()
            if e.tenant == tenant
            and len(e.tokens) <= len(tokens)
            and tokens[: len(e.tokens)] == e.tokens
        ]
        if any(e.retention == "24h" for e in superseded):
            retention = "24h"
        name = file_name(self.identity, tenant, tokens)
        header = encode_header(
            self.identity,
            tenant=tenant,
            tokens=len(tokens),
            data_bytes=len(data),
            shared_prefix=shared_prefix,
            retention=retention,
        )
        nbytes = len(header) + 4 * len(tokens) + len(data) + _DIGEST
        if not self.fits(nbytes):
            return None, []
        if fresh and not self._room_to_queue(len(data), wait_s):
            log.warning(
                "KV disk writer is behind; a chain of %d tokens is not written", len(tokens)
            )
            return None, []
        over = self.bytes_used - sum(v.nbytes for v in superseded) + nbytes - self.budget
        room: list[DiskEntry] = []
        if over > 0:
            candidates = [e for e in self._entries.values() if e not in superseded]
            for e in candidates:  # another server's restores touch the files it shares
                e.last_used = max(e.last_used, _mtime(self.path(e)))
            for e in sorted(candidates, key=lambda e: (e.retention == "24h", e.last_used)):
                if over <= 0:
                    break
                room.append(e)
                over -= e.nbytes
        for v in room:
            self.drop(v)
        for v in superseded:
            self.forget(v)
            if v.name != name:
                with self._lock:
                    self._deleting.add(v.name)
        entry = DiskEntry(
            name=name,
            tokens=tokens,
            tenant=tenant,
            nbytes=nbytes,
            shared_prefix=shared_prefix,
            retention=retention,
            last_used=time.time(),
            data=data,
            header=header,
        )
        self._entries[name] = entry
        self.bytes_used += nbytes
        self._submit(lambda: self._write(entry, [v for v in superseded if v.name != name], fresh))
        return entry, room + superseded

    def _room_to_queue(self, nbytes: int, wait_s: float) -> bool:
        """Reserve `nbytes` of the pending budget (waiting up to `wait_s`)."""

        def room() -> bool:
            return self._pending_bytes == 0 or self._pending_bytes + nbytes <= self.max_pending

        with self._lock:
            if not self._lock.wait_for(room, timeout=wait_s):
                return False
            self._pending_bytes += nbytes
            return True

    def drop(self, entry: DiskEntry) -> None:
        """Forget `entry` and delete its file (after any queued write of it)."""
        if self.forget(entry):
            self._queue_delete(entry.name)

    def ignore(self, entry: DiskEntry) -> None:
        """Forget `entry` and never read its file again (it was refused at restore)."""
        self.forget(entry)
        self._ignored.add(entry.name)

    def _queue_delete(self, name: str) -> None:
        with self._lock:
            self._deleting.add(name)
        self._submit(lambda: self._delete(name))

    def forget(self, entry: DiskEntry) -> bool:
        """Stop tracking `entry` (its file, if any, stays); False if it was not tracked."""
        if self._entries.get(entry.name) is not entry:
            return False
        del self._entries[entry.name]
        self.bytes_used -= entry.nbytes
        entry.dropped = True
        return True

    def touch(self, entry: DiskEntry) -> None:
        """The entry was used: renew its retention (the file's mtime, seen by every
        server sharing the directory)."""
        entry.last_used = time.time()
        self._submit(lambda: self._utime(entry))

    def failed(self) -> list[DiskEntry]:
        """Entries whose write failed since the last call (forgotten here; the caller
        removes them from its index)."""
        with self._lock:
            bad, self._failed_writes = self._failed_writes, []
        return [e for e in bad if self.forget(e)]

    def expire(self) -> list[DiskEntry]:
        """Drop entries past their retention (by the file's mtime: another server's
        restores renew it too); returns them. Other models' files go once older than any
        retention."""
        now = time.time()
        old = []
        for e in list(self._entries.values()):
            if self.expired(e, now) and e.data is None:
                e.last_used = max(e.last_used, _mtime(self.path(e)))
                if self.expired(e, now):
                    old.append(e)
        for e in old:
            self.drop(e)
        stale = max(RETENTION_24H_S, self.ttl["in_memory"])
        for name, mtime in list(self._foreign.items()):
            if now - mtime > stale:
                del self._foreign[name]
                self._queue_delete(name)
        return old

    # ----- reading ---------------------------------------------------------------------------
    def load(self, entry: DiskEntry, tenant: str) -> bytearray | bytes:
        """The KV bytes of `entry`, checked against everything its header claims (see the
        module). Raises DiskRejected; the caller forgets the entry and recomputes."""
        if tenant != entry.tenant:
            raise self._rejected("tenant", f"{entry.name} belongs to another tenant")
        data = entry.data  # one read: the writer may clear it once the file is written
        if data is not None:
            return data
        try:
            with self.path(entry).open("rb") as f:
                size = os.fstat(f.fileno()).st_size
                try:
                    header, tokens, offset = read_header(f, size)
                except DiskRejected as exc:
                    raise self._rejected(exc.reason, f"{entry.name}: {exc}") from None
                if header.get("identity") != self.identity:
                    raise self._rejected("foreign", f"{entry.name} is another model's")
                if header.get("tenant") != tenant:
                    raise self._rejected("tenant", f"{entry.name} belongs to another tenant")
                if tokens != entry.tokens:
                    raise self._rejected("corrupt", f"{entry.name}: tokens differ from its index")
                f.seek(0)
                digest = hashlib.sha256(f.read(offset))
                out = bytearray(int(header["data_bytes"]))
                if f.readinto(out) != len(out):  # a regular file: short only at its end
                    raise self._rejected("truncated", f"{entry.name} shrank while read")
                digest.update(out)
                if f.read(_DIGEST) != digest.digest():
                    raise self._rejected("corrupt", f"{entry.name}: checksum mismatch")
        except DiskRejected:
            raise
        except FileNotFoundError:
            raise self._rejected("gone", f"{entry.name} was deleted") from None
        except Exception as exc:  # OSError, MemoryError, a header with nonsense
            raise self._rejected("unreadable", f"{entry.name}: {exc!r}") from None
        return out

    def _rejected(self, reason: Reject, detail: str) -> DiskRejected:
        log.warning("KV file not used (%s): %s", reason, detail)
        self._reject(reason)
        return DiskRejected(reason, detail)

    def _reject(self, reason: Reject) -> None:
        if self._on_reject is not None:
            self._on_reject(reason)

    # ----- the writer thread ---------------------------------------------------------------
    def _submit(self, task: Callable[[], None]) -> None:
        with self._lock:
            self._queued += 1
        self._queue.put(task)

    def _write_loop(self) -> None:
        while True:
            task = self._queue.get()
            if task is None:
                return
            try:
                task()
            except Exception:
                log.exception("KV disk task failed")
            finally:
                with self._lock:
                    self._queued -= 1
                    self._lock.notify_all()

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until every queued write, delete and touch is done; False on timeout."""
        with self._lock:
            return self._lock.wait_for(lambda: self._queued == 0, timeout_s)

    def pending(self) -> int:
        with self._lock:
            return self._queued

    def close(self, timeout_s: float = 60.0) -> None:
        """Finish the queued work (a drain's last writes), then stop the writer."""
        self.flush(timeout_s)
        self._queue.put(None)
        self._writer.join(timeout_s)

    def _write(self, entry: DiskEntry, superseded: list[DiskEntry], reserved: bool) -> None:
        data_len = len(entry.data) if entry.data is not None else 0
        try:
            self._write_file(entry, superseded)
        finally:
            with self._lock:
                if reserved:
                    self._pending_bytes -= data_len
                self._lock.notify_all()

    def _write_file(self, entry: DiskEntry, superseded: list[DiskEntry]) -> None:
        data = entry.data
        if entry.dropped or data is None:
            return
        path = self.path(entry)
        tmp = self.dir / f".{entry.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp"
        ok = created = False
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            created = True
            try:
                digest = hashlib.sha256()
                for part in (
                    entry.header,
                    array("i", entry.tokens).tobytes(),
                    data,
                ):
                    digest.update(part)
                    _write_all(fd, part)
                _write_all(fd, digest.digest())
                os.fsync(fd)
            finally:
                os.close(fd)
            if entry.dropped:
                return
            os.replace(tmp, path)
            _fsync_dir(self.dir)
            ok = True
        except OSError as exc:
            level = logging.WARNING if exc.errno in (errno.ENOSPC, errno.EDQUOT) else logging.ERROR
            log.log(level, "KV file %s not written (the chain will be recomputed): %s", path, exc)
            entry.failed = True
            with self._lock:
                self._failed_writes.append(entry)
        finally:
            if created:
                with contextlib.suppress(OSError):
                    tmp.unlink()
            if ok:
                entry.data = None  # on disk now: the RAM copy goes
                entry.header = b""
                for old in superseded:
                    self._delete(old.name)
            else:  # the older files stay and may be read back in
                with self._lock:
                    self._deleting.difference_update(old.name for old in superseded)
            if self._on_write is not None:
                self._on_write(ok, len(data))

    def _delete(self, name: str) -> None:
        try:
            (self.dir / name).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("KV file %s could not be deleted: %s", name, exc)
        finally:
            with self._lock:
                self._deleting.discard(name)

    def _utime(self, entry: DiskEntry) -> None:
        if not entry.dropped and entry.data is None:
            with contextlib.suppress(OSError):
                os.utime(self.path(entry))


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
