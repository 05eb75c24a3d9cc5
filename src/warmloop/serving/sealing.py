"""`encrypted_content` of reasoning items: the reasoning text, sealed for the tenant
that received it, so a client that keeps no state (Codex with `store: false`) can send
it back and the next turn renders exactly what was generated.

A sealed blob is `wlr1.<text, base64url>.<HMAC-SHA256 of version, tenant and text>`:
authenticated (a forged, altered or another tenant's blob is a 400
`invalid_encrypted_content`), versioned, and not secret (the client was streamed the
same text). Workers of one fleet share `--reasoning-key`; without it each process
makes its own, and blobs do not survive a restart.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

from warmloop.protocol.errors import InvalidRequest

VERSION = "wlr1"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Sealer:
    def __init__(self, key: str | None) -> None:
        self._key = key.encode() if key else secrets.token_bytes(32)

    def _mac(self, tenant: str, payload: str) -> str:
        message = f"{VERSION}\x00{tenant}\x00{payload}".encode()
        return _b64(hmac.new(self._key, message, hashlib.sha256).digest())

    def seal(self, text: str, tenant: str) -> str:
        payload = _b64(text.encode())
        return f"{VERSION}.{payload}.{self._mac(tenant, payload)}"

    def open(self, blob: str, tenant: str, param: str) -> str:
        """The sealed text, or the client's 400 when `blob` is not one of ours for it."""
        version, _, rest = blob.partition(".")
        payload, _, mac = rest.partition(".")
        if version == VERSION and mac and hmac.compare_digest(mac, self._mac(tenant, payload)):
            try:
                return _unb64(payload).decode()
            except (binascii.Error, ValueError):
                pass
        raise InvalidRequest(
            f"'{param}' is not reasoning this server sealed for this API key (or it was "
            "sealed by a server with another --reasoning-key).",
            param=param,
            code="invalid_encrypted_content",
        )
