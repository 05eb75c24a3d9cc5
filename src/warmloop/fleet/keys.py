"""The routing keys a proxy in front of a fleet uses, in one place (the server writes
them, `haproxy.py` reads them, docs/fleet.md documents them).

- **Worker id**: `[a-z0-9-]{1,32}`, from `--worker-id`, else derived from the address the
  worker listens on (`derive_worker_id`).
- **Response id**: `resp_<worker id>_<24 hex digits>`, so a proxy can route a create by
  its `previous_response_id` alone: the worker id is what lies between `resp_` and the
  last `_`.
- **Session header** of a WebSocket upgrade (or any request): the first present of
  `SESSION_HEADERS` (Codex sends `session_id`).
- Every answer carries `x-warmloop-worker: <worker id>` (`WORKER_HEADER`).
"""

from __future__ import annotations

import re
import secrets
import socket

WORKER_ID_PATTERN = r"[a-z0-9-]{1,32}"
WORKER_HEADER = "x-warmloop-worker"
SESSION_HEADERS = ("session_id", "session-id", "x-session-id")
RESPONSE_ID = re.compile(rf"resp_({WORKER_ID_PATTERN})_[0-9a-f]{{24}}")

_WORKER_ID = re.compile(WORKER_ID_PATTERN)


def derive_worker_id(host: str, port: int) -> str:
    """The default worker id: `<host>-<port>` with every other character a dash,
    lower-cased and cut to 32 (an unspecified bind address uses the host's name)."""
    if host in ("", "0.0.0.0", "::"):
        host = socket.gethostname()
    raw = re.sub(r"[^a-z0-9]+", "-", f"{host}-{port}".lower()).strip("-")
    return raw[-32:].lstrip("-") or "worker"


def check_worker_id(worker_id: str) -> str:
    if not _WORKER_ID.fullmatch(worker_id):
        raise ValueError(f"worker id {worker_id!r} must match {WORKER_ID_PATTERN}")
    return worker_id


def response_id(worker_id: str) -> str:
    return f"resp_{worker_id}_{secrets.token_hex(12)}"


def worker_of(response_id: str) -> str | None:
    """The worker that created `response_id`, or None for an id of another shape."""
    m = RESPONSE_ID.fullmatch(response_id)
    return m.group(1) if m else None
