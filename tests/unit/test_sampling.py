"""`RowSampler` draws from the distribution llama.cpp's chain draws from: greedy picks
the same token, and a temperature draw matches both the exact softmax(logits / T) and
llama.cpp's own temperature → dist chain, run on the same logits (chi-square tests with
fixed seeds, each shown able to fail)."""

from __future__ import annotations

import ctypes
from collections import Counter

import llama_cpp
import numpy as np
import pytest

from warmloop.engine.sampling import RowSampler

VOCAB = 40
DRAWS = 20_000
# chi-square with 39 degrees of freedom: P(statistic > 80) is about 1e-4
CRITICAL = 80.0


def logits() -> np.ndarray:
    rng = np.random.default_rng(7)
    return (rng.standard_normal(VOCAB) * 2.0).astype(np.float32)


def exact(row: np.ndarray, temperature: float) -> np.ndarray:
    z = row.astype(np.float64) / temperature
    p = np.exp(z - z.max())
    return p / p.sum()


def chi_square(counts: Counter[int], probs: np.ndarray) -> float:
    expected = probs * DRAWS
    observed = np.array([counts.get(i, 0) for i in range(VOCAB)], dtype=np.float64)
    return float(((observed - expected) ** 2 / expected).sum())


def two_sample(a: Counter[int], b: Counter[int]) -> float:
    x = np.array([a.get(i, 0) for i in range(VOCAB)], dtype=np.float64)
    y = np.array([b.get(i, 0) for i in range(VOCAB)], dtype=np.float64)
    keep = (x + y) > 0
    return float(((x[keep] - y[keep]) ** 2 / (x[keep] + y[keep])).sum())


def llama_chain_draws(row: np.ndarray, temperature: float, seed: int) -> Counter[int]:
    """llama.cpp's temperature → dist chain applied to `row` DRAWS times."""
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_temp(temperature))
    llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_dist(seed))
    data = (llama_cpp.llama_token_data * VOCAB)()
    counts: Counter[int] = Counter()
    try:
        for _ in range(DRAWS):
            for i in range(VOCAB):
                data[i].id, data[i].logit, data[i].p = i, float(row[i]), 0.0
            arr = llama_cpp.llama_token_data_array(
                ctypes.cast(data, ctypes.POINTER(llama_cpp.llama_token_data)), VOCAB, -1, False
            )
            llama_cpp.llama_sampler_apply(chain, ctypes.byref(arr))
            counts[data[arr.selected].id] += 1
    finally:
        llama_cpp.llama_sampler_free(chain)
    return counts


def row_draws(row: np.ndarray, temperature: float, seed: int, block: int = 256) -> Counter[int]:
    class Blocked(RowSampler):
        BLOCK = block

    sampler = Blocked(VOCAB, temperature, seed)
    return Counter(sampler.draw(row) for _ in range(DRAWS))


@pytest.mark.parametrize("block", [256, 16, 7])  # one block; whole blocks and a partial one
def test_a_temperature_draw_matches_the_softmax_and_llama_cpps_chain(block: int) -> None:
    row = logits()
    ours = row_draws(row, 0.7, seed=1, block=block)
    theirs = llama_chain_draws(row, 0.7, seed=2)
    assert chi_square(ours, exact(row, 0.7)) < CRITICAL
    assert chi_square(theirs, exact(row, 0.7)) < CRITICAL
    assert two_sample(ours, theirs) < CRITICAL
    # the tests have power: another temperature is told apart at once
    assert chi_square(row_draws(row, 1.0, seed=1, block=block), exact(row, 0.7)) > 10 * CRITICAL


def test_greedy_is_the_first_maximum_and_the_row_is_left_alone() -> None:
    row = logits()
    row[5] = row[17] = row.max() + 1.0
    before = row.copy()
    assert RowSampler(VOCAB, 0.0, 0).draw(row) == 5
    assert RowSampler(VOCAB, 0.8, 0).draw(row) in range(VOCAB)
    assert np.array_equal(row, before)  # llama.cpp's logits buffer is not written


def test_the_same_seed_draws_the_same_tokens() -> None:
    row = logits()
    a, b = RowSampler(VOCAB, 0.9, 42), RowSampler(VOCAB, 0.9, 42)
    assert [a.draw(row) for _ in range(50)] == [b.draw(row) for _ in range(50)]
