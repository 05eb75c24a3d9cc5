"""API keys → tenants, compared in constant time; the tenant id never contains the key."""

from __future__ import annotations

import pytest

from warmloop.protocol.errors import Unauthorized
from warmloop.transport.auth import KeyRing


def test_open_ring() -> None:
    assert KeyRing(()).open
    assert KeyRing(()).tenant(None) == ""


def test_keys() -> None:
    ring = KeyRing(("sk-one", "sk-two"))
    for header in (None, "Basic x", "Bearer sk-three", "Bearer "):
        with pytest.raises(Unauthorized):
            ring.tenant(header)
    one, two = ring.tenant("Bearer sk-one"), ring.tenant("bearer sk-two")
    assert one != two and one == ring.tenant("Bearer sk-one")
    assert "sk-one" not in one and one.startswith("key-")
