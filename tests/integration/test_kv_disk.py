"""The KV disk tier with the real engine: a chain comes back warm after a drain and a
restart, and after a SIGKILL with --kv-disk-sync turn; what is refused (a damaged file,
another tenant) is recomputed; store: false never reaches the disk; a full disk fails
no response."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import KEY_A, KEY_B, LiveServer, start_server

# ~900 tokens: long enough that warm and cold differ by far more than noise.
LONG = " ".join(f"Entry {i}: the keeper logged ship number {i * 7} at dawn." for i in range(60))


def serve(disk: Path, db: Path, *args: str) -> LiveServer:
    return start_server(
        "--api-key", KEY_A, "--api-key", KEY_B,
        "--kv-disk-dir", str(disk), "--store", str(db), *args,
        name="kvdisk",
    )  # fmt: skip


def create(s: LiveServer, key: str = KEY_A, **body: Any) -> dict[str, Any]:
    body = {"model": "default", "temperature": 0, "max_output_tokens": 12, **body}
    r = httpx.post(
        f"{s.url}/v1/responses",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
        timeout=300,
    )
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def cached(response: dict[str, Any]) -> int:
    return int(response["usage"]["input_tokens_details"]["cached_tokens"])


def metric(s: LiveServer, name: str) -> float:
    r = httpx.get(f"{s.url}/metrics", headers={"Authorization": f"Bearer {KEY_A}"}, timeout=30)
    r.raise_for_status()
    total = 0.0
    for line in r.text.splitlines():
        if line.split(" ", 1)[0] == name:
            total += float(line.rsplit(" ", 1)[1])
    return total


def drain(s: LiveServer) -> None:
    s.process.send_signal(signal.SIGTERM)
    s.process.wait(timeout=120)


def files(disk: Path) -> list[Path]:
    return sorted(disk.glob("*.kv"))


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "kv", tmp_path / "responses.db"


def test_a_drained_chain_continues_warm_after_a_restart(dirs: tuple[Path, Path]) -> None:
    disk, db = dirs
    s = serve(disk, db, "--kv-disk-sync", "off")  # only the drain writes
    try:
        first = create(s, input=LONG + "\nWhich ship came first?")
        assert files(disk) == []  # nothing written before the drain
    finally:
        drain(s)
    [f] = files(disk)
    assert f.stat().st_mode & 0o777 == 0o600
    s = serve(disk, db)
    try:
        nxt = create(s, input="And the last one?", previous_response_id=first["id"])
        prompt = nxt["usage"]["input_tokens"]
        assert cached(nxt) >= prompt - 40  # only the new turn is computed
        assert nxt["warmloop"]["delta_only"] is True  # the stored chain's tokens
        assert metric(s, "warmloop_kv_disk_restores_total") == 1
        # Another tenant sending the very same conversation finds none of it.
        other = create(s, KEY_B, input=LONG + "\nWhich ship came first?")
        assert cached(other) == 0
    finally:
        s.stop()


def test_sigkill_with_turn_sync_loses_at_most_the_last_turn(dirs: tuple[Path, Path]) -> None:
    disk, db = dirs
    s = serve(disk, db, "--kv-disk-sync", "turn")
    try:
        first = create(s, input=LONG + "\nWhich ship came first?")
        second = create(s, input="And the last one?", previous_response_id=first["id"])
        for _ in range(600):  # the writer has it on disk (fsynced): nothing queued
            if metric(s, "warmloop_kv_disk_pending") == 0:
                break
            time.sleep(0.1)
        assert metric(s, "warmloop_kv_disk_writes_total") == 2  # one per turn
    finally:
        s.process.send_signal(signal.SIGKILL)
        s.process.wait(timeout=60)
    assert len(files(disk)) == 1  # the second turn's file replaced the first's
    s = serve(disk, db)
    try:
        third = create(s, input="Thanks.", previous_response_id=second["id"])
        assert cached(third) >= third["usage"]["input_tokens"] - 40
    finally:
        s.stop()


def test_store_false_chains_are_never_written(dirs: tuple[Path, Path]) -> None:
    disk, db = dirs
    s = serve(disk, db, "--kv-disk-sync", "turn")
    try:
        create(s, input=LONG + "\nWhich ship came first?", store=False)
    finally:
        drain(s)
    assert files(disk) == []


def test_a_damaged_file_is_recomputed_and_counted(dirs: tuple[Path, Path]) -> None:
    disk, db = dirs
    s = serve(disk, db)
    try:
        first = create(s, input=LONG + "\nWhich ship came first?")
    finally:
        drain(s)
    [f] = files(disk)
    raw = bytearray(f.read_bytes())
    raw[len(raw) // 2] ^= 0x40  # one bit of the KV data
    f.write_bytes(raw)
    s = serve(disk, db)
    try:
        nxt = create(s, input="And the last one?", previous_response_id=first["id"])
        assert cached(nxt) == 0  # recomputed, not served from a damaged file
        assert metric(s, 'warmloop_kv_disk_rejected_total{reason="corrupt"}') == 1
    finally:
        s.stop()


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 256 KiB filesystem: no chain's KV fits on it (needs root to mount)."""
    mount = tmp_path / "full"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_fails_no_response(tiny_fs: Path, tmp_path: Path) -> None:
    s = serve(
        tiny_fs, tmp_path / "r.db", "--kv-disk-sync", "turn", "--kv-disk-budget", "10000000000"
    )
    try:
        first = create(s, input=LONG + "\nWhich ship came first?")
        nxt = create(s, input="And the last one?", previous_response_id=first["id"])
        assert nxt["status"] == "completed" and cached(nxt) > 0  # the slot still serves it
        for _ in range(100):
            if metric(s, "warmloop_kv_disk_write_failures_total") >= 1:
                break
            httpx.get(f"{s.url}/healthz", timeout=30)
        assert metric(s, "warmloop_kv_disk_write_failures_total") >= 1
        assert httpx.get(f"{s.url}/healthz", timeout=30).status_code == 200
    finally:
        drain(s)
    assert files(tiny_fs) == [] and not list(tiny_fs.glob(".*.tmp"))


def test_a_conversation_continues_warm_after_a_restart(dirs: tuple[Path, Path]) -> None:
    disk, db = dirs
    auth = {"Authorization": f"Bearer {KEY_A}"}
    s = serve(disk, db, "--kv-disk-sync", "off")
    try:
        conv = httpx.post(f"{s.url}/v1/conversations", json={}, headers=auth, timeout=30).json()
        first = create(s, input=LONG + "\nWhich ship came first?", conversation=conv["id"])
    finally:
        drain(s)
    assert len(files(disk)) == 1  # the drain wrote the conversation's chain
    s = serve(disk, db)
    try:
        nxt = create(s, input="And the last one?", conversation=conv["id"])
        assert cached(nxt) >= first["usage"]["total_tokens"] - 1
        assert metric(s, "warmloop_kv_disk_restores_total") == 1
    finally:
        s.stop()


def test_24h_retention_keeps_a_store_false_prompt_on_disk(dirs: tuple[Path, Path]) -> None:
    """store: false is never written, unless the client asked for 24 hours of cache."""
    disk, db = dirs
    s = serve(disk, db, "--kv-disk-sync", "off")
    try:
        kept = create(s, input=LONG + "\nFirst?", store=False, prompt_cache_retention="24h")
        assert kept["prompt_cache_retention"] == "24h"
        create(s, input=LONG + "\nSecond?", store=False)  # in_memory: RAM only
    finally:
        drain(s)
    [f] = files(disk)
    assert b'"retention": "24h"' in f.read_bytes()[:4096]
    s = serve(disk, db)
    try:  # a stateless client resending the same prompt gets it from the file
        again = create(s, input=LONG + "\nFirst?", store=False)
        assert cached(again) >= kept["usage"]["input_tokens"] - 1
    finally:
        s.stop()
