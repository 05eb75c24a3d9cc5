"""Admission checks in one place: per-tenant concurrency and rate, and the context budget."""

from __future__ import annotations

import pytest

from warmloop.protocol.errors import ContextLengthExceeded, InvalidRequest, TooManyRequests
from warmloop.session.limits import Admission, output_budget


def test_admit_counts_and_release_frees() -> None:
    a = Admission(rate_per_minute=0, max_concurrent=2)
    a.admit("t")
    a.admit("t")
    a.check("u")  # another tenant is not limited by t
    with pytest.raises(TooManyRequests, match="limit 2") as err:
        a.check("t")
    assert err.value.code == "concurrency_limit_exceeded"
    with pytest.raises(TooManyRequests):
        a.admit("t")
    assert a.reserved() == 2  # a refused admission counts nothing
    a.release("t")
    a.admit("t")
    a.release("t")
    a.release("t")
    assert a.reserved() == 0


def test_check_changes_nothing_and_a_refused_rate_is_not_counted() -> None:
    a = Admission(rate_per_minute=1, max_concurrent=5)
    for _ in range(3):
        a.check("t")
    assert a.reserved() == 0
    a.admit("t")
    with pytest.raises(TooManyRequests, match="per minute") as err:
        a.admit("t")
    assert "Retry-After" in err.value.headers and a.reserved() == 1


def budget(prompt: int, requested: int | None, **kw: int) -> int:
    limits = {"ctx": 100, "max_output": 50, "max_input": 0} | kw
    return output_budget(prompt, requested, **limits)


def test_output_budget() -> None:
    assert budget(10, None) == 50  # up to --max-output-tokens
    assert budget(80, None) == 20  # what is left of the context
    assert budget(10, 7) == 7
    with pytest.raises(ContextLengthExceeded):
        budget(80, 30)
    with pytest.raises(ContextLengthExceeded):
        budget(100, None)
    with pytest.raises(InvalidRequest, match="too large") as err:
        budget(10, 51)
    assert err.value.code == "integer_above_max_value"
    with pytest.raises(InvalidRequest) as err:
        budget(11, None, max_input=10)
    assert err.value.code == "input_too_long"
    assert output_budget(100, None, ctx=100, max_output=50, max_input=0, generate=False) == 0
