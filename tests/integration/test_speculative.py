"""Prompt-lookup speculative decoding on the real engine: greedy output is what plain
decoding gives (near-tie rule), drafts are accepted when the output copies the context,
only greedy responses without a grammar speculate, and the KV stays exact."""

from __future__ import annotations

import httpx

from tests.conftest import KEY_A
from tests.near_tie import assert_tokens_same_or_near_tie
from warmloop.app import build_engine
from warmloop.bench.server import LocalServer
from warmloop.config import Config
from warmloop.engine.engine import Engine
from warmloop.engine.request import Finished, Job, SamplingParams, TokenOut
from warmloop.serving.prompt import PromptRenderer

CODE = "".join(
    f"def check_value_{i}(value, path):\n    return cache.read(path)[value] + {i}\n"
    for i in range(8)
)
ASK = f"Rewrite this file with every `value` renamed to `amount`:\n\n{CODE}"


def prompt_tokens(engine: Engine, text: str) -> list[int]:
    from warmloop.protocol.items import MessageItem

    renderer = PromptRenderer(engine.backend.chat_template())
    return engine.backend.tokenize(renderer.render(None, [MessageItem("u", "user", text)]))


async def generate(engine: Engine, tokens: list[int], params: SamplingParams) -> Finished:
    out: list[int] = []
    fin = None
    async for e in engine.run(Job(f"j{id(params)}", tokens, params)):
        if isinstance(e, TokenOut) and e.token >= 0:
            out.append(e.token)
        elif isinstance(e, Finished):
            fin = e
    assert fin is not None and list(fin.chain_tokens[len(tokens) :]) == out
    return fin


async def test_speculative_greedy_output_is_plain_greedy_output() -> None:
    outputs = {}
    for draft in (0, 8):
        engine = build_engine(Config(ctx=2048, slots=2, threads=2, speculative_draft=draft))
        engine.start()
        try:
            tokens = prompt_tokens(engine, ASK)
            fin = await generate(engine, tokens, SamplingParams(max_tokens=160))
            engine.check_integrity()  # rejected drafts left no KV behind
            outputs[draft] = (fin, list(fin.chain_tokens[len(tokens) :]))
        finally:
            engine.stop()
    plain, spec = outputs[0], outputs[8]
    assert plain[0].drafted == 0
    assert spec[0].drafted > 0 and spec[0].accepted > 0.5 * spec[0].drafted, spec[0]
    assert_tokens_same_or_near_tie(tokens, spec[1], plain[1])


async def test_only_greedy_responses_without_a_grammar_speculate() -> None:
    engine = build_engine(Config(ctx=2048, slots=2, threads=2))
    engine.start()
    try:
        tokens = prompt_tokens(engine, ASK)
        sampled = await generate(engine, tokens, SamplingParams(max_tokens=40, temperature=0.7))
        grammar = SamplingParams(max_tokens=40, grammar="root ::= [a-z_ ]+")
        constrained = await generate(engine, tokens, grammar)
        greedy = await generate(engine, tokens, SamplingParams(max_tokens=40))
        assert sampled.drafted == 0 and constrained.drafted == 0 and greedy.drafted > 0
        engine.check_integrity()
    finally:
        engine.stop()


def test_acceptance_is_reported_per_response_and_on_metrics() -> None:
    with LocalServer(["--api-key", KEY_A, "--slots", "1", "--ctx", "2048", "--threads", "2"]) as s:
        auth = {"Authorization": f"Bearer {KEY_A}"}
        body = {"model": "default", "input": ASK, "temperature": 0, "max_output_tokens": 96}
        r = httpx.post(f"{s.base_url}/responses", json=body, headers=auth, timeout=120)
        assert r.status_code == 200, r.text
        extra = r.json()["warmloop"]
        assert extra["draft_tokens"] > 0 and 0 < extra["accepted_tokens"] <= extra["draft_tokens"]
        metrics = httpx.get(f"{s.url}/metrics", headers=auth, timeout=10).text
        accepted = next(
            float(line.split()[1])
            for line in metrics.splitlines()
            if line.startswith("warmloop_speculative_accepted_tokens_total")
        )
        assert accepted == extra["accepted_tokens"]
