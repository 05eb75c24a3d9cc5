"""Shared fixtures: live warmloop servers on free ports, running the embedded model."""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from warmloop.bench.server import LocalServer
from warmloop.engine.backend import load_cpu_backend
from warmloop.fleet.postgres import PostgresCluster
from warmloop.fleet.postgres import missing as postgres_missing

# The suite checks greedy text of a 135M model, which depends on the kernels' rounding,
# and CPUs of this machine kind differ (AVX-512 with or without VNNI or BF16, ...). So
# every engine of the suite, in this process and in the servers it starts, runs the AVX2
# baseline, alike on all of them; tests/integration/test_cpu_variant.py runs the variant
# auto picks. `WARMLOOP_CPU_VARIANT=auto pytest` runs the suite on that one instead.
os.environ.setdefault("WARMLOOP_CPU_VARIANT", "avx2")
load_cpu_backend(os.environ["WARMLOOP_CPU_VARIANT"])  # this process: before any engine

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


# A throwaway PostgreSQL cluster on a free port (Debian's `postgresql` package, which
# .ci/run installs); `stop()`/`start()` simulate an outage. `warmloop fleet up` uses it too.
PostgresInstance = PostgresCluster


def start_postgres() -> PostgresInstance:
    """A new PostgreSQL instance; skipped where PostgreSQL is missing, failed under CI=1."""
    why = postgres_missing()
    if why is not None:
        if os.environ.get("CI"):  # .ci/run installs it: a skip there would hide a failure
            pytest.fail(why)
        pytest.skip(why)
    return PostgresInstance()


def fresh_store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh store location for one test of a fixture parametrized "sqlite" / "postgres":
    a SQLite file, or an empty schema of the session's PostgreSQL."""
    if request.param == "sqlite":
        return str(tmp_path / "responses.db")
    dsn: str = request.getfixturevalue("postgres_dsn")
    import psycopg

    schema = "t" + uuid.uuid4().hex[:12]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    return f"{dsn}?options=-csearch_path%3D{schema}"


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """A real PostgreSQL server shared by the session's tests (see `start_postgres`)."""
    pg = start_postgres()
    try:
        yield pg.dsn
    finally:
        pg.destroy()
