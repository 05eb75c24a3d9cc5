"""The model of HAProxy's consistent hashing (fleet/ring.py): its hash functions, balance,
and that a join or a death moves about 1/N of the keys and only those that must move.
(That it picks what HAProxy picks is in test_fleet_haproxy.py, against HAProxy.)"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from warmloop.fleet.ring import (
    Request,
    Ring,
    Router,
    avalanche,
    avalanche_array,
    hash_key,
    key_hash,
    sdbm,
)


def test_hash_functions() -> None:
    assert sdbm(b"") == 0
    assert sdbm(b"a") == 97
    # h = c + (h << 6) + (h << 16) - h, by hand for "ab"
    assert sdbm(b"ab") == (98 + (97 << 6) + (97 << 16) - 97) & 0xFFFFFFFF
    values = np.array([0, 1, 2, 4096, 0xFFFFFFFF, 123456789], dtype=np.uint32)
    assert [avalanche(int(v)) for v in values] == avalanche_array(values).tolist()
    assert key_hash("abc") == avalanche(sdbm(b"abc"))


def ring_of(n: int, weight: int = 64) -> Ring:
    ring = Ring(weight)
    for k in range(n):
        ring.add(f"w{k}")
    return ring


KEYS = [f"session-{k:05d}" for k in range(20000)]


def placement(ring: Ring) -> list[str | None]:
    return ring.lookup_many(np.array([key_hash(k) for k in KEYS], dtype=np.uint32))


def test_balance() -> None:
    load = Counter(placement(ring_of(10)))
    assert set(load) == {f"w{k}" for k in range(10)}
    assert max(load.values()) / (len(KEYS) / 10) < 1.25
    # HAProxy's default weight 1 (16 points a server) is far less even
    coarse = Counter(placement(ring_of(10, weight=1)))
    assert max(coarse.values()) > max(load.values())


def test_a_death_moves_only_the_dead_workers_keys() -> None:
    ring = ring_of(10)
    before = placement(ring)
    ring.set_down("w3")
    after = placement(ring)
    moved = [b for b, a in zip(before, after, strict=True) if b != a]
    assert set(moved) == {"w3"} and "w3" not in after
    assert 0.05 < len(moved) / len(KEYS) < 0.15  # ~1/10
    ring.set_up("w3")  # back: exactly the old placement
    assert placement(ring) == before


def test_a_join_takes_about_1_over_n_from_the_others() -> None:
    ring = ring_of(10)
    before = placement(ring)
    ring.add("w10")
    after = placement(ring)
    moved = [(b, a) for b, a in zip(before, after, strict=True) if b != a]
    assert all(a == "w10" for _, a in moved)  # keys only move to the newcomer
    assert 0.05 < len(moved) / len(KEYS) < 0.14  # ~1/11
    ring.remove("w10")
    assert placement(ring) == before


def test_lookup_edges() -> None:
    ring = Ring(1)
    assert ring.lookup("x") is None
    ring.add("only")
    assert {ring.lookup(k) for k in KEYS[:50]} == {"only"}
    ring.set_down("only")
    assert ring.lookup("x") is None
    with pytest.raises(ValueError):
        Ring(0)
    with pytest.raises(ValueError):
        ring.add("only")


def test_router_rules() -> None:
    ring = ring_of(4)
    router = Router(ring)
    # 1. the chain's own worker while it is up
    assert router.route(Request(previous_worker="w2", session="s")) == "w2"
    ring.set_down("w2")
    assert router.route(Request(previous_worker="w2", session="s")) == ring.lookup("s")
    # 2-3. the session, else the tenant's cache key: one key, two tenants, two keys
    a = Request(cache_key="repo", tenant="Bearer a")
    assert hash_key(a) == "pck|Bearer a|repo" != hash_key(Request(cache_key="repo", tenant="b"))
    assert hash_key(Request(session="s", cache_key="repo")) == "s"
    # 4. least connections
    router.connections = {"w0": 3, "w1": 0, "w3": 1}
    assert router.route(Request()) == "w1"
