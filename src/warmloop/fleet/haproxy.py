"""The HAProxy 2.6 configuration of a fleet: the routing keys of `keys.py`, read by the
proxy (docs/fleet.md explains each rule).

A request goes, in this order, to:

1. the worker that made its `previous_response_id` (read from the JSON body), else the
   worker named by an `x-warmloop-worker` request header (what `AgentSession` sends on a
   reconnect) - if that worker is up; a down one is skipped (HAProxy ignores a
   `use-server` rule whose server is down) and the next rules decide;
2. consistent hashing on the first present session header (`session_id`, `session-id`,
   `x-session-id`);
3. consistent hashing on the tenant (the `Authorization` header) and the body's
   `prompt_cache_key` together, so two tenants' keys are different keys;
4. least connections.

HAProxy falls back to round robin, not least connections, when a `balance hash` key is
missing, so rules 2-3 and rule 4 are two backends (`affinity` and `spread`) over the
same workers: `spread`'s servers `track` `affinity`'s health checks. The price: each
backend counts its own connections, so `spread`'s least-connections ignores the
sockets and requests that hashing placed.

A worker refusing a request with 503 (it is draining) or refusing the connection gets
the request retried on another worker (`retry-on conn-failure 503`, `option redispatch
1`): both mean the worker did nothing with it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from warmloop.fleet.keys import SESSION_HEADERS, WORKER_HEADER, check_worker_id, derive_worker_id
from warmloop.fleet.ring import server_ids

AFFINITY = "affinity"  # the hashing backend (rules 1-3)
SPREAD = "spread"  # the least-connections backend (rules 1 and 4)
ROUNDROBIN = "roundrobin"  # the baseline without affinity (benchmarks/fleet.py)

# Regexes over the raw body (PCRE2). They need no JSON parser and work on a body cut at
# tune.bufsize, and a quoted key cannot match inside a JSON string (its quotes would be
# escaped). The first occurrence counts: a nested object with the same key placed before
# the top-level one would misroute (a cache miss, never a wrong answer).
_PREV_PRESENT = r'"previous_response_id"\s*:\s*"resp_[a-z0-9-]+_'
_PREV_HEAD = r'^[\s\S]*?"previous_response_id"\s*:\s*"resp_'  # cut: the worker id comes next
_PREV_TAIL = r"_[\s\S]*$"  # cut: from the `_` after the worker id (ids have no `_`)
_PCK_PRESENT = r'"prompt_cache_key"\s*:\s*"'
_PCK_HEAD = r'^[\s\S]*?"prompt_cache_key"\s*:\s*"'
_PCK_TAIL = r'"[\s\S]*$'


@dataclass(frozen=True)
class Worker:
    id: str
    host: str
    port: int

    @classmethod
    def parse(cls, spec: str) -> Worker:
        """`[ID=]URL` (`w1=http://10.0.0.5:8000`, `http://10.0.0.5:8000`, `10.0.0.5:8000`);
        the id defaults to the one the worker derives itself from that address."""
        wid, sep, url = spec.partition("=")
        if not sep:
            wid, url = "", spec
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.hostname is None or parts.port is None:
            raise ValueError(f"worker {spec!r}: give host:port (e.g. http://10.0.0.5:8000)")
        if parts.path not in ("", "/"):
            raise ValueError(f"worker {spec!r}: a worker is host:port, without a path")
        return cls(
            check_worker_id(wid or derive_worker_id(parts.hostname, parts.port)),
            parts.hostname,
            parts.port,
        )

    @property
    def address(self) -> str:
        return f"ipv6@{self.host}:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Settings:
    """What the configuration leaves to the operator (`warmloop fleet config --help`)."""

    bind: str = "*:8000"
    # Body bytes HAProxy reads to find previous_response_id / prompt_cache_key: a delta
    # turn (the new items only) fits; a longer body is routed by its first 64 KiB. Each
    # active connection may hold two buffers of this size.
    bufsize: int = 65536
    # Points on the ring per server = 16 x weight: 64 keeps the load within a few per cent
    # of even (HAProxy's default weight 1 gives each server 16 points only).
    weight: int = 64
    check_inter: str = "2s"
    fall: int = 2  # failed checks before a worker is down (draining: ~4 s)
    rise: int = 2
    tunnel_timeout: str = "65m"  # a WebSocket may live 60 minutes (the server ends it)
    request_timeout: str = "10m"  # an HTTP/SSE exchange may wait for a slot and stream long
    roundrobin: bool = False  # the baseline: no affinity at all


def _q(expr: str) -> str:
    """Single-quote a sample expression for HAProxy's first parsing level (it keeps
    backslashes and double quotes as they are)."""
    if "'" in expr:
        raise ValueError(f"cannot quote {expr!r}")
    return f"'{expr}'"


def _arg(regex: str) -> str:
    """A converter argument in double quotes (HAProxy's second parsing level)."""
    return '"' + regex.replace('"', r"\"") + '"'


def _cut(head: str, tail: str) -> str:
    """Sample expression: the body between a match of `head` and one of `tail`."""
    return f'req.body,regsub({_arg(head)},""),regsub({_arg(tail)},"")'


def _global(s: Settings) -> list[str]:
    return [
        "global",
        "    log stdout format raw local0 info",
        f"    tune.bufsize {s.bufsize}",
        # a reload keeps old sockets on the old process; bound it like the sockets' life
        f"    hard-stop-after {s.tunnel_timeout}",
        "",
        "defaults",
        "    mode http",
        "    log global",
        "    option httplog",
        "    option forwardfor",
        "    timeout connect 5s",
        f"    timeout client {s.request_timeout}",
        f"    timeout server {s.request_timeout}",
        f"    timeout tunnel {s.tunnel_timeout}",
        "    timeout client-fin 30s",
        "    timeout server-fin 30s",
        "    timeout http-request 30s",
        "    timeout http-keep-alive 75s",
        "    timeout queue 60s",
        "    timeout check 5s",
        "    retries 2",
        "    retry-on conn-failure 503",
        "    option redispatch 1",
        # a worker that is DNS-named but not up yet must not stop the proxy from starting
        "    default-server init-addr last,libc,none",
        "",
    ]


def _frontend(s: Settings, backends: Sequence[str]) -> list[str]:
    up = f"nbsrv({backends[0]})"  # `spread` tracks `affinity`'s checks: one count
    lines = [
        "frontend warmloop",
        f"    bind {s.bind}",
        "    option http-buffer-request",
        "    # the proxy's own health: ok while any worker is",
        "    http-request return status 200 content-type application/json lf-string "
        f'"{{\\"status\\":\\"ok\\",\\"workers_up\\":%[{up}]}}" '
        f"if {{ path /healthz }} {{ {up} gt 0 }}",
        "    http-request return status 503 content-type application/json string "
        '"{\\"status\\":\\"unavailable\\",\\"workers_up\\":0}" if { path /healthz }',
    ]
    if s.roundrobin:
        return [*lines, f"    default_backend {ROUNDROBIN}", ""]
    lines += [
        "    # 1. the worker of previous_response_id, else the worker the client names",
        f"    http-request set-var(txn.wid) {_q(_cut(_PREV_HEAD, _PREV_TAIL))} "
        f"if {{ req.body -m reg {_q(_PREV_PRESENT)} }}",
        f"    http-request set-var(txn.wid) req.fhdr({WORKER_HEADER},1) "
        f"if !{{ var(txn.wid) -m found }} {{ req.fhdr({WORKER_HEADER},1) -m len gt 0 }}",
        "    # 2. the first present session header",
    ]
    for n, name in enumerate(SESSION_HEADERS):
        unset = "!{ var(txn.key) -m found } " if n else ""
        lines.append(
            f"    http-request set-var(txn.key) req.fhdr({name},1) "
            f"if {unset}{{ req.fhdr({name},1) -m len gt 0 }}"
        )
    lines += [
        "    # 3. the tenant and its prompt_cache_key, together",
        f"    http-request set-var(txn.pck) {_q(_cut(_PCK_HEAD, _PCK_TAIL))} "
        f"if !{{ var(txn.key) -m found }} {{ req.body -m reg {_q(_PCK_PRESENT)} }}",
        "    http-request set-var(txn.tenant) req.fhdr(authorization,1) "
        "if { var(txn.pck) -m found }",
        "    http-request set-var(txn.key) 'str(pck),concat(|,txn.tenant,|),concat(,txn.pck,)' "
        "if { var(txn.pck) -m found }",
        "    # 4. no key: least connections",
        f"    use_backend {AFFINITY} if {{ var(txn.key) -m found }}",
        f"    default_backend {SPREAD}",
        "",
    ]
    return lines


def _backend(
    name: str, balance: str, workers: Sequence[Worker], s: Settings, *, track: str | None
) -> list[str]:
    ids = server_ids(w.id for w in workers)
    lines = [f"backend {name}", f"    balance {balance}"]
    if name == AFFINITY:
        lines.append("    hash-type consistent")  # sdbm + avalanche (fleet/ring.py models it)
    if track is None:
        lines += ["    option httpchk GET /healthz", "    http-check expect status 200"]
    if name != ROUNDROBIN:
        lines += [f"    use-server {w.id} if {{ var(txn.wid) -m str {w.id} }}" for w in workers]
    for w in workers:
        health = (
            f"track {track}/{w.id}"
            if track
            else f"check inter {s.check_inter} fall {s.fall} rise {s.rise}"
        )
        lines.append(f"    server {w.id} {w.address} id {ids[w.id]} weight {s.weight} {health}")
    return [*lines, ""]


def render(workers: Sequence[Worker], settings: Settings | None = None) -> str:
    """The configuration file's text."""
    s = settings or Settings()
    if not workers:
        raise ValueError("a fleet needs at least one worker")
    seen: set[str] = set()
    for w in workers:
        if w.id in seen:
            raise ValueError(f"two workers have the id {w.id!r}")
        seen.add(w.id)
    head = [
        "# warmloop fleet: HAProxy 2.6 configuration written by `warmloop fleet config`",
        "# (routing rules: docs/fleet.md)",
        "",
    ]
    if s.roundrobin:
        body = _frontend(s, [ROUNDROBIN])
        body += _backend(ROUNDROBIN, "roundrobin", workers, s, track=None)
    else:
        body = _frontend(s, [AFFINITY, SPREAD])
        body += _backend(AFFINITY, "hash var(txn.key)", workers, s, track=None)
        body += _backend(SPREAD, "leastconn", workers, s, track=AFFINITY)
    return "\n".join([*head, *_global(s), *body])


def haproxy_binary() -> str | None:
    return shutil.which("haproxy") or next(
        (p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if Path(p).is_file()), None
    )


class ConfigError(ValueError):
    """`haproxy -c` rejected a configuration."""


def validate(text: str, binary: str | None = None) -> None:
    """Check a configuration with `haproxy -c`; ConfigError with HAProxy's words if not."""
    binary = binary or haproxy_binary()
    if binary is None:
        raise FileNotFoundError("haproxy is not installed (apt-get install haproxy)")
    with tempfile.NamedTemporaryFile("w", suffix=".cfg", prefix="warmloop-fleet-") as f:
        f.write(text)
        f.flush()
        done = subprocess.run([binary, "-c", "-f", f.name], capture_output=True, text=True)
    if done.returncode != 0:
        raise ConfigError((done.stdout + done.stderr).strip())


def version(binary: str | None = None) -> tuple[int, int] | None:
    binary = binary or haproxy_binary()
    if binary is None:
        return None
    out = subprocess.run([binary, "-v"], capture_output=True, text=True).stdout
    m = re.search(r"version (\d+)\.(\d+)", out)
    return (int(m.group(1)), int(m.group(2))) if m else None
