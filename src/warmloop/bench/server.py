"""A `warmloop serve` child process on a free local port, for benchmarks and tests.

A separate process (not a thread of the caller) so the client's own Python work never
competes with the server's event loop for the GIL: what a benchmark measures is what a
user's client would see.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(
    health_url: str,
    process: subprocess.Popen[bytes],
    timeout_s: float,
    log: Callable[[], str] = str,
) -> None:
    """Poll `health_url` until it answers 200; RuntimeError (with the end of the log)
    if the process exits first or `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log()[-4000:]
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}\n{tail}")
        try:
            if httpx.get(health_url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{health_url} was not healthy in {timeout_s:.0f} s\n{log()[-4000:]}")


def stop_process(
    process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout_s: float = 20
) -> None:
    """Send `sig` and wait up to `timeout_s`, then kill."""
    if process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class LocalServer:
    """Start with `LocalServer(flags)`; `stop()` (or use as a context manager) ends it."""

    def __init__(
        self,
        flags: list[str] | tuple[str, ...] = (),
        *,
        log_path: Path | None = None,
        ready_timeout_s: float = 120.0,
    ) -> None:
        self.port = free_port()
        self._tmp = None
        flags = list(flags)
        if "--store" not in flags:  # never the user's own database
            self._tmp = tempfile.TemporaryDirectory(prefix="warmloop-")
            flags += ["--store", str(Path(self._tmp.name) / "responses.db")]
        cmd = [sys.executable, "-m", "warmloop.cli", "serve", "--port", str(self.port), *flags]
        self.log_path = log_path
        out = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            self.process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        finally:
            if log_path:
                out.close()  # type: ignore[union-attr]
        self._wait_ready(ready_timeout_s)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/responses"

    def health(self) -> dict[str, int | str]:
        r = httpx.get(f"{self.url}/healthz", timeout=10)
        r.raise_for_status()
        data: dict[str, int | str] = r.json()
        return data

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def _wait_ready(self, timeout_s: float) -> None:
        try:
            wait_healthy(f"{self.url}/healthz", self.process, timeout_s, self.log)
        except RuntimeError:
            self.stop()
            raise

    def stop(self) -> None:
        stop_process(self.process)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> LocalServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
