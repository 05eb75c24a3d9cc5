"""API keys → tenants. Keys are compared in constant time and never logged."""

from __future__ import annotations

import hashlib
import hmac

from warmloop.protocol.errors import Unauthorized


class KeyRing:
    def __init__(self, keys: tuple[str, ...]) -> None:
        # tenant id = a short digest of the key: stable, and safe to log.
        self._keys = [
            (k.encode(), "key-" + hashlib.sha256(k.encode()).hexdigest()[:12]) for k in keys
        ]

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
