"""A model of how HAProxy 2.6 places a request in a fleet: its consistent-hash ring
(`hash-type consistent`, the default sdbm + avalanche) and the routing rules of the
configuration `haproxy.py` writes. `benchmarks/fleet.py` simulates 1,000 workers with it.

The ring, as HAProxy builds it (src/lb_chash.c, src/backend.c, include/haproxy/intops.h,
src/hash.c in HAProxy 2.6; modelled here, not copied):

- A server of weight `w` owns `w * 16` points (BE_WEIGHT_SCALE); point `j` sits at
  `avalanche(puid * 4096 + j)` (4096 = SRV_EWGHT_RANGE), where `puid` is the server's
  numeric `id`. Only servers that are up have their points on the ring.
- A request's key hashes to `avalanche(sdbm(key))` (32-bit arithmetic throughout).
- The request goes to the point closest to its hash, looking both ways: the first point
  at or after it (wrapping) and the one before that; the one before wins a tie.
  Points with equal keys keep their insertion order (an ebtree's duplicates), so a
  server that comes back up goes after the others at a shared key.

`server_id` gives each worker a stable `id` from its name: HAProxy numbers unnamed
servers by their position in the file, so adding a worker in the middle of the list
would move every later server's points; with ids from names only the new worker's
points appear.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

MASK = 0xFFFFFFFF
BE_WEIGHT_SCALE = 16  # points per unit of weight
SRV_EWGHT_RANGE = 4096  # 256 weights x 16: the stride between two servers' point keys
MAX_SERVER_ID = (1 << 31) // SRV_EWGHT_RANGE - 1  # puid * 4096 + j stays below 2**31

U32 = npt.NDArray[np.uint32]


def sdbm(data: bytes) -> int:
    """The sdbm string hash, 32-bit: h = c + (h << 6) + (h << 16) - h for each byte."""
    h = 0
    for c in data:
        h = (c + (h << 6) + (h << 16) - h) & MASK
    return h


def avalanche(a: int) -> int:
    """Bob Jenkins' 32-bit integer mix (burtleburtle.net/bob/hash/integer.html), then a
    multiplication by 3221225473 as HAProxy's full_hash() does."""
    a &= MASK
    a = ((a + 0x7ED55D16) + (a << 12)) & MASK
    a = ((a ^ 0xC761C23C) ^ (a >> 19)) & MASK
    a = ((a + 0x165667B1) + (a << 5)) & MASK
    a = ((a + 0xD3A2646C) ^ (a << 9)) & MASK
    a = ((a + 0xFD7046C5) + (a << 3)) & MASK
    a = ((a ^ 0xB55A4F09) ^ (a >> 16)) & MASK
    return (a * 3221225473) & MASK


def avalanche_array(a: U32) -> U32:
    """`avalanche` over an array (uint32 arithmetic wraps exactly like C's)."""
    with np.errstate(over="ignore"):
        a = a.astype(np.uint32)
        a = (a + np.uint32(0x7ED55D16)) + (a << np.uint32(12))
        a = (a ^ np.uint32(0xC761C23C)) ^ (a >> np.uint32(19))
        a = (a + np.uint32(0x165667B1)) + (a << np.uint32(5))
        a = (a + np.uint32(0xD3A2646C)) ^ (a << np.uint32(9))
        a = (a + np.uint32(0xFD7046C5)) + (a << np.uint32(3))
        a = (a ^ np.uint32(0xB55A4F09)) ^ (a >> np.uint32(16))
        return a * np.uint32(3221225473)


def key_hash(key: str) -> int:
    """Where a request's hash key (the `balance hash` sample) lands on the ring."""
    return avalanche(sdbm(key.encode()))


def server_id(worker_id: str, taken: Iterable[int] = ()) -> int:
    """A stable HAProxy server `id` for a worker: from its name, the next free one on a
    clash with `taken`."""
    used = set(taken)
    puid = zlib.crc32(worker_id.encode()) % MAX_SERVER_ID + 1
    while puid in used:
        puid = puid % MAX_SERVER_ID + 1
    return puid


def server_ids(worker_ids: Iterable[str]) -> dict[str, int]:
    """Ids for a whole fleet, clashes settled in name order (stable as workers come and go)."""
    ids: dict[str, int] = {}
    for wid in sorted(worker_ids):
        ids[wid] = server_id(wid, ids.values())
    return ids


def point_keys(puid: int, weight: int) -> U32:
    j = np.arange(weight * BE_WEIGHT_SCALE, dtype=np.uint32)
    return avalanche_array(np.uint32(puid * SRV_EWGHT_RANGE) + j)


@dataclass
class _Server:
    name: str
    puid: int
    points: U32
    up: bool = False
    inserted: int = 0  # when its points last went on the ring (orders equal keys)


class Ring:
    """The consistent-hash ring of one backend. `lookup` is for one key, `lookup_many`
    for an array of key hashes; both return server names (None: nothing is up)."""

    def __init__(self, weight: int = 1) -> None:
        if not 1 <= weight <= 256:
            raise ValueError("weight must be within 1..256")
        self.weight = weight
        self._servers: dict[str, _Server] = {}
        self._clock = 0
        self._keys: U32 = np.zeros(0, dtype=np.uint32)
        self._owner: npt.NDArray[np.int64] = np.zeros(0, dtype=np.int64)
        self._names: list[str] = []
        self._dirty = True

    def add(self, name: str, puid: int | None = None, *, up: bool = True) -> None:
        """A server in the configuration (by default with the id `server_id` gives it)."""
        if name in self._servers:
            raise ValueError(f"server {name!r} is already on the ring")
        if puid is None:
            puid = server_id(name, (s.puid for s in self._servers.values()))
        self._servers[name] = _Server(name, puid, point_keys(puid, self.weight))
        if up:
            self.set_up(name)

    def remove(self, name: str) -> None:
        del self._servers[name]
        self._dirty = True

    def set_up(self, name: str) -> None:
        server = self._servers[name]
        if not server.up:
            self._clock += 1
            server.up, server.inserted = True, self._clock
            self._dirty = True

    def set_down(self, name: str) -> None:
        server = self._servers[name]
        if server.up:
            server.up = False
            self._dirty = True

    def is_up(self, name: str) -> bool:
        server = self._servers.get(name)
        return server is not None and server.up

    @property
    def up(self) -> list[str]:
        return [s.name for s in self._servers.values() if s.up]

    def _build(self) -> None:
        live = [s for s in self._servers.values() if s.up]
        self._names = [s.name for s in live]
        if not live:
            self._keys = np.zeros(0, dtype=np.uint32)
            self._owner = np.zeros(0, dtype=np.int64)
        else:
            keys = np.concatenate([s.points for s in live])
            owner = np.repeat(np.arange(len(live)), [len(s.points) for s in live])
            inserted = np.repeat([s.inserted for s in live], [len(s.points) for s in live])
            order = np.lexsort((inserted, keys))  # by key, then by insertion
            self._keys, self._owner = keys[order], owner[order]
        self._dirty = False

    def lookup_many(self, hashes: U32) -> list[str | None]:
        if self._dirty:
            self._build()
        n = len(self._keys)
        if n == 0:
            return [None] * len(hashes)
        hashes = hashes.astype(np.uint32)
        nxt = np.searchsorted(self._keys, hashes, side="left") % n  # first at or after
        prv = (nxt - 1) % n  # the one before it, wrapping
        with np.errstate(over="ignore"):
            dp = hashes - self._keys[prv]  # uint32: distances wrap around the ring
            dn = self._keys[nxt] - hashes
        pick = np.where(dp <= dn, prv, nxt)
        return [self._names[i] for i in self._owner[pick]]

    def lookup(self, key: str) -> str | None:
        return self.lookup_many(np.array([key_hash(key)], dtype=np.uint32))[0]


@dataclass(frozen=True)
class Request:
    """What the proxy reads off a request to route it (see `haproxy.py`)."""

    previous_worker: str | None = None  # of previous_response_id, or the x-warmloop-worker hint
    session: str | None = None  # the first present session header
    cache_key: str | None = None  # prompt_cache_key from the body
    tenant: str = ""  # the Authorization header's value (`Bearer sk-...`)


def hash_key(request: Request) -> str | None:
    """The `balance hash` key the configuration builds: the session header, else the
    tenant and the prompt_cache_key together, else none (least connections)."""
    if request.session:
        return request.session
    if request.cache_key is not None:
        return f"pck|{request.tenant}|{request.cache_key}"
    return None


class Router:
    """The whole rule set: a chain's own worker if it is up, else consistent hashing on
    the key, else least connections (on `connections`, the caller's live counts)."""

    def __init__(self, ring: Ring) -> None:
        self.ring = ring
        self.connections: dict[str, int] = {}
        self._rr = 0

    def route(self, request: Request) -> str | None:
        if request.previous_worker and self.ring.is_up(request.previous_worker):
            return request.previous_worker
        key = hash_key(request)
        if key is not None:
            return self.ring.lookup(key)
        up = self.ring.up
        if not up:
            return None
        # leastconn: the fewest connections; HAProxy rotates among equals
        self._rr += 1
        least = min(self.connections.get(s, 0) for s in up)
        ties = [s for s in up if self.connections.get(s, 0) == least]
        return ties[self._rr % len(ties)]
