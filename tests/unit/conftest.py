"""Every KV cache manager a unit test builds through `fake_kv.make` must still be
consistent with its fake backend when the test ends."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.unit.fake_kv import MADE


@pytest.fixture(autouse=True)
def kv_integrity() -> Iterator[None]:
    MADE.clear()
    yield
    try:
        for mgr in MADE:
            mgr.check_integrity()
    finally:
        MADE.clear()
