"""`assert_no_leaks`: after a test, every gauge of work in flight is back to zero."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.conftest import LiveServer
from warmloop.metrics import LEAK_GAUGES as GAUGES


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def read_metrics(server: LiveServer, headers: dict[str, str]) -> dict[str, list[float]]:
    """Every sample of `/metrics` by metric name (one value per label set)."""
    r = httpx.get(f"{server.url}/metrics", headers=headers, timeout=10)
    assert r.status_code == 200, f"GET /metrics: {r.status_code} {r.text[:300]}"
    samples: dict[str, list[float]] = {}
    for line in r.text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, _, value = line.rpartition(" ")
        name = name_labels.split("{", 1)[0]
        samples.setdefault(name, []).append(float(value))
    return samples


def leaked(server: LiveServer, headers: dict[str, str]) -> dict[str, str]:
    """The gauges of GAUGES that are missing or not 0, with what they read."""
    samples = read_metrics(server, headers)
    bad: dict[str, str] = {}
    for name in GAUGES:
        values = samples.get(name)
        if values is None:
            bad[name] = "missing from /metrics"
        elif any(v != 0 for v in values):
            bad[name] = ", ".join(f"{v:g}" for v in values)
    return bad


def assert_no_leaks(server: LiveServer, headers: dict[str, str], timeout_s: float = 10.0) -> None:
    """Poll `/metrics` until every gauge in GAUGES reads 0 (sockets and cancelled jobs take a
    moment to wind down); fail naming the ones that do not."""
    assert server.process.poll() is None, f"the server died:\n{server.log()[-3000:]}"
    deadline = time.monotonic() + timeout_s
    while True:
        bad = leaked(server, headers)
        settling = any(value != "missing from /metrics" for value in bad.values())
        if not settling or time.monotonic() > deadline:  # a missing gauge never appears
            break
        time.sleep(0.2)
    if bad:
        pytest.fail(
            f"not back to 0 after {timeout_s:g} s: "
            + "; ".join(f"{name} = {value}" for name, value in bad.items())
        )
