"""Shared fixtures: live warmloop servers on free ports, running the embedded model."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

KEY_A = "sk-test-tenant-a"
KEY_B = "sk-test-tenant-b"
LOG_DIR = Path(os.environ.get("WARMLOOP_TEST_LOGS", "/tmp/warmloop-test-logs"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LiveServer:
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/responses"

    def health(self) -> dict[str, int | str]:
        r = httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=10)
        r.raise_for_status()
        data: dict[str, int | str] = r.json()
        return data

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_server(*args: str, name: str = "server") -> LiveServer:
    port = free_port()
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log_path = LOG_DIR / f"{name}-{port}.log"
    if "--store" not in args:  # never the user's own database
        args = (*args, "--store", str(LOG_DIR / f"{name}-{port}.db"))
    cmd = [
        sys.executable,
        "-m",
        "warmloop.cli",
        "serve",
        "--port",
        str(port),
        "--ctx",
        "2048",
        "--slots",
        "2",
        "--threads",
        "2",
        "--log-level",
        "info",
        *args,
    ]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    server = LiveServer(port, proc, log_path)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{server.log()}")
        try:
            server.health()
            return server
        except httpx.HTTPError:
            time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"server did not start:\n{server.log()}")


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
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
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
