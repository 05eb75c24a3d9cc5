"""API keys → tenants. Keys are compared in constant time and never logged."""

from __future__ import annotations

import hashlib
import hmac
import re
from pathlib import Path

from warmloop.protocol.errors import Unauthorized

_COMMENT = re.compile(r"(?:^|\s)#")


def read_keys_file(path: Path) -> dict[str, str]:
    """`KEY [TENANT]` per line; `#` at the start of a line or after whitespace starts a
    comment (a `#` inside a key is part of the key). Keys without a tenant name get their
    own tenant. Several keys may share one tenant (and its responses)."""
    keys: dict[str, str] = {}
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = _COMMENT.split(raw, maxsplit=1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) > 2:
            raise ValueError(f"{path}:{n}: expected 'KEY [TENANT]'")
        keys[parts[0]] = parts[1] if len(parts) == 2 else _digest(parts[0])
    return keys


def _digest(key: str) -> str:
    # tenant id of an unnamed key: a short digest, stable and safe to log
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:12]


class KeyRing:
    def __init__(self, keys: tuple[str, ...], named: dict[str, str] | None = None) -> None:
        tenants = {k: _digest(k) for k in keys} | (named or {})
        self._keys = [(k.encode(), tenant) for k, tenant in tenants.items()]

    @property
    def open(self) -> bool:
        return not self._keys

    def tenant(self, authorization: str | None) -> str:
        """Tenant for an `Authorization` header value; raises Unauthorized."""
        if self.open:
            return ""
        if not authorization or not authorization.lower().startswith("bearer "):
            raise Unauthorized("Missing API key: send 'Authorization: Bearer <key>'.", param=None)
        given = authorization[7:].strip().encode()
        found = None
        for key, tenant in self._keys:  # check every key: timing does not reveal which
            if hmac.compare_digest(key, given):
                found = tenant
        if found is None:
            raise Unauthorized("Incorrect API key provided.", param=None)
        return found

    def check_metrics(self, authorization: str | None, metrics_key: str | None) -> None:
        """/metrics: the metrics key if one is set, else any API key (open if none)."""
        if metrics_key is None:
            self.tenant(authorization)
            return
        given = (authorization or "")[7:].strip().encode()
        bearer = (authorization or "").lower().startswith("bearer ")
        if not bearer or not hmac.compare_digest(given, metrics_key.encode()):
            raise Unauthorized("/metrics needs the metrics key: 'Authorization: Bearer <key>'.")
