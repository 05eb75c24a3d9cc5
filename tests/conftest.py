"""Shared fixtures: live warmloop servers on free ports, running the embedded model."""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from warmloop.bench.server import LocalServer, free_port

KEY_A = "sk-test-tenant-a"
KEY_B = "sk-test-tenant-b"
LOG_DIR = Path(os.environ.get("WARMLOOP_TEST_LOGS", "/tmp/warmloop-test-logs"))
_serial = itertools.count()


# The same launcher the benchmarks use: `warmloop serve` as a child process.
LiveServer = LocalServer


def start_server(*args: str, name: str = "server") -> LocalServer:
    """A live server with small defaults (2 slots x 2048 tokens); `args` add or override."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    flags = ["--ctx", "2048", "--slots", "2", "--threads", "2", "--log-level", "info", *args]
    stem = f"{name}-{os.getpid()}-{next(_serial)}"
    if "--store" not in flags:  # never the user's own database; kept for a post-mortem
        flags += ["--store", str(LOG_DIR / f"{stem}.db")]
    return LocalServer(flags, log_path=LOG_DIR / f"{stem}.log", ready_timeout_s=90)


@pytest.fixture(scope="session")
def server() -> Iterator[LiveServer]:
    """The main server: two tenants' keys, small limits that tests can reach."""
    s = start_server(
        "--api-key",
        KEY_A,
        "--api-key",
        KEY_B,
        "--model-alias",
        "gpt-test",
        "--max-body-bytes",
        "200000",
        "--ws-max-frame-bytes",
        "100000",
        "--ws-queue-size",
        "2",
        name="main",
    )
    yield s
    s.stop()


@pytest.fixture(scope="session")
def open_server() -> Iterator[LiveServer]:
    """No keys, and the stateless baseline: every prompt computed in full."""
    s = start_server("--no-kv-reuse", name="cold")
    yield s
    s.stop()


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """A real PostgreSQL server on a free port (Debian's `postgresql` package, which
    .ci/run installs), run as the `postgres` OS user; skipped where it is missing."""
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not bins or shutil.which("runuser") is None:
        missing = "PostgreSQL is not installed (apt-get install postgresql)"
        if os.environ.get("CI"):  # .ci/run installs it: a skip there would hide a failure
            pytest.fail(missing)
        pytest.skip(missing)
    bindir = Path(bins[-1]).parent
    root = Path(tempfile.mkdtemp(prefix="warmloop-pg-"))
    data = root / "data"
    shutil.chown(root, "postgres")
    as_pg = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    subprocess.run(
        [*as_pg, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            *as_pg,
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(root / "log"),
            "-w",
            "start",
            "-o",
            f"-p {port} -k {root} -c listen_addresses=127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*as_pg, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)
