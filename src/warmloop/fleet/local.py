"""A fleet on one machine, for trying it out and for tests: PostgreSQL, N `warmloop serve`
workers sharing it, and HAProxy in front (`warmloop fleet up`).

    with Fleet(workers=3, port=8000) as fleet:   # start() ... stop()
        fleet.url                                 # http://127.0.0.1:8000 (the proxy)
        fleet.workers[0].process                  # each worker's Popen

Workers are stopped with SIGTERM, so they drain; the proxy and PostgreSQL after them.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from warmloop.bench.server import free_port, stop_process, wait_healthy
from warmloop.fleet.haproxy import Settings, Worker, haproxy_binary, render
from warmloop.fleet.postgres import PostgresCluster


def _wait_healthy(url: str, deadline: float, process: subprocess.Popen[bytes], log: Path) -> None:
    def text() -> str:
        return log.read_text(errors="replace") if log.exists() else ""

    wait_healthy(f"{url}/healthz", process, deadline - time.monotonic(), text)


@dataclass
class LocalWorker:
    worker: Worker
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://{self.worker.host}:{self.worker.port}"


class Proxy:
    """HAProxy in the foreground (`-db`) on a configuration file it is given."""

    def __init__(self, config: str, directory: Path, port: int) -> None:
        binary = haproxy_binary()
        if binary is None:
            raise FileNotFoundError("haproxy is not installed (apt-get install haproxy)")
        self.port = port
        self.config_path = directory / "haproxy.cfg"
        self.config_path.write_text(config)
        self.log = directory / "haproxy.log"
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                [binary, "-db", "-f", str(self.config_path)],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a terminal's Ctrl-C is for `fleet up`, not for it
            )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_healthy(self, timeout: float = 30.0) -> None:
        _wait_healthy(self.url, time.monotonic() + timeout, self.process, self.log)

    def stop(self) -> None:
        stop_process(self.process, signal.SIGTERM, 10)  # SIGTERM: HAProxy's immediate stop


@dataclass
class Fleet:
    """`workers` warmloop workers (ids w1..wN, `--threads 1` and one shared
    `--kv-disk-dir` unless `serve_args` say otherwise) on free ports, one PostgreSQL
    store, HAProxy on `port`."""

    workers: int = 3
    port: int = 8000
    host: str = "127.0.0.1"  # where the proxy listens
    serve_args: Sequence[str] = ()
    settings: Settings = field(default_factory=Settings)
    store: str | None = None  # an existing database URL instead of a throwaway cluster
    state_dir: Path | None = None
    ready_timeout: float = 180.0
    drain_timeout: float = 30.0  # how long stop() lets a draining worker finish
    shared_kv: bool = True  # the workers' --kv-disk-dir is one directory

    def __post_init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="warmloop-fleet-", dir=self.state_dir))
        self.postgres: PostgresCluster | None = None
        self.local: list[LocalWorker] = []
        self.proxy: Proxy | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def start(self) -> Fleet:
        try:
            if self.store is None:
                # its own temporary directory: as root the cluster runs as `postgres`,
                # which cannot enter ours (mode 700)
                self.postgres = PostgresCluster()
                self.store = self.postgres.dsn
            for n in range(1, self.workers + 1):
                self.local.append(self.start_worker(f"w{n}"))
            deadline = time.monotonic() + self.ready_timeout
            for w in self.local:
                _wait_healthy(w.url, deadline, w.process, w.log)
            self.write_proxy()
            return self
        except BaseException:
            self.stop()
            raise

    def start_worker(self, worker_id: str, port: int | None = None) -> LocalWorker:
        """Start one worker (not yet healthy, not yet in the proxy's configuration)."""
        port = port or free_port()
        log = self.dir / f"{worker_id}.log"
        # One KV directory for all: a drained or killed worker's chains continue warm
        # on the others (`shared_kv=False`: one each, nothing handed over). Later flags win.
        kv = self.dir / ("kv" if self.shared_kv else f"kv-{worker_id}")
        flags = ["--threads", "1", "--kv-disk-dir", str(kv), *self.serve_args]
        cmd = [
            sys.executable, "-m", "warmloop.cli", "serve", "--host", "127.0.0.1",
            "--port", str(port), "--worker-id", worker_id, "--store", str(self.store),
            "--drain-timeout", str(self.drain_timeout), *flags,
        ]  # fmt: skip
        with open(log, "wb") as out:
            # its own session: a terminal's Ctrl-C reaches `fleet up`, which drains it
            process = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        return LocalWorker(Worker(worker_id, "127.0.0.1", port), process, log)

    def write_proxy(self, settings: Settings | None = None) -> None:
        """(Re)start HAProxy on the current workers (a restart: the benchmark swaps
        configurations; a deployment would reload instead)."""
        if self.proxy is not None:
            self.proxy.stop()
        s = settings or self.settings
        bind = f"{self.host}:{self.port}"
        config = render([w.worker for w in self.local], replace(s, bind=bind))
        self.proxy = Proxy(config, self.dir, self.port)
        self.proxy.wait_healthy()

    def stop_worker(self, worker: LocalWorker, sig: int = signal.SIGTERM) -> None:
        stop_process(worker.process, sig, self.drain_timeout + 10)

    def stop(self) -> None:
        """Workers first (SIGTERM: they drain, in parallel), then HAProxy and PostgreSQL."""
        for w in self.local:
            if w.process.poll() is None:
                w.process.send_signal(signal.SIGTERM)
        for w in self.local:
            self.stop_worker(w)
        if self.proxy is not None:
            self.proxy.stop()
        if self.postgres is not None:
            self.postgres.destroy()
            self.postgres = None

    def __enter__(self) -> Fleet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
