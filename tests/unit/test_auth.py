"""API keys → tenants, compared in constant time; the tenant id never contains the key."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from warmloop.protocol.errors import Unauthorized
from warmloop.transport.auth import KeyRing, read_keys_file


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


def test_open_ring_ignores_any_header() -> None:
    ring = KeyRing(())
    assert ring.tenant("Bearer whatever") == "" and ring.tenant("garbage") == ""


@pytest.mark.parametrize(
    "header",
    [None, "", "sk-one", "Bearer", "Bearer ", "Token sk-one", "Bearer sk-on", "Bearer sk-one2"],
)
def test_missing_or_wrong_keys_are_401(header: str | None) -> None:
    with pytest.raises(Unauthorized) as err:
        KeyRing(("sk-one",)).tenant(header)
    assert err.value.status == 401 and err.value.code == "invalid_api_key"
    assert "sk-one" not in err.value.message


def test_tenant_id_is_a_stable_digest() -> None:
    ring = KeyRing(("sk-one",))
    tenant = ring.tenant("Bearer sk-one")
    assert tenant == hashlib_tenant("sk-one")
    assert KeyRing(("other", "sk-one")).tenant("Bearer sk-one") == tenant  # same key, same tenant
    assert ring.tenant("BEARER   sk-one  ") == tenant  # scheme is case-insensitive


def hashlib_tenant(key: str) -> str:
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:12]


def test_named_keys_share_a_tenant(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text("# team keys\nsk-a1 team-a\nsk-a2 team-a  # laptop\n\nsk-solo\n")
    named = read_keys_file(keys_file)
    assert named == {"sk-a1": "team-a", "sk-a2": "team-a", "sk-solo": hashlib_tenant("sk-solo")}
    ring = KeyRing(("sk-flag",), named)
    assert ring.tenant("Bearer sk-a1") == ring.tenant("Bearer sk-a2") == "team-a"
    assert ring.tenant("Bearer sk-flag") == hashlib_tenant("sk-flag")
    with pytest.raises(Unauthorized):
        ring.tenant("Bearer team-a")


def test_keys_file_rejects_extra_columns(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text("ok\nsk-x tenant extra\n")
    with pytest.raises(ValueError, match=":2:"):
        read_keys_file(keys_file)


def test_a_hash_inside_a_key_is_part_of_the_key(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# comment\nsk-a#b team  # trailing comment\n  # indented comment\n")
    assert read_keys_file(keys) == {"sk-a#b": "team"}
    ring = KeyRing((), read_keys_file(keys))
    assert ring.tenant("Bearer sk-a#b") == "team"
    with pytest.raises(Unauthorized):
        ring.tenant("Bearer sk-a")


def test_metrics_key_and_api_keys() -> None:
    ring = KeyRing(("sk-one",))
    ring.check_metrics("Bearer sk-one", None)  # any API key when no metrics key is set
    with pytest.raises(Unauthorized):
        ring.check_metrics(None, None)
    ring.check_metrics("Bearer scrape", "scrape")
    with pytest.raises(Unauthorized):
        ring.check_metrics("Bearer sk-one", "scrape")  # only the metrics key then
    KeyRing(()).check_metrics(None, None)  # an open server has open metrics
