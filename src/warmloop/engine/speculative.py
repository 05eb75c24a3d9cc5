"""Prompt-lookup speculative decoding: draft tokens from the sequence's own context.

Agents' outputs copy their context: paths, identifiers, code being edited, JSON that
echoes a tool's output. A `Drafter` indexes every n-gram of its sequence (prompt and
output so far) by where its latest occurrence ended; when the sequence's last tokens
occurred before, the tokens that followed them there are the draft. The engine decodes
the drafts in the same batch as the sequence's next token, each row with logits, and
greedy sampling verifies them in order: a draft that matches the sampled token is
accepted (its KV is already computed), the first mismatch ends the run and the KV of
the rest is dropped. So each step emits 1 + accepted tokens, and the output is exactly
what one-token-at-a-time greedy decoding gives (up to llama.cpp's batch-shape noise at
near-ties, the same as a cache hit). Only greedy sequences without a grammar speculate:
sampling would need the rejection rule to keep its distribution.

Drafts cost compute whether or not they are accepted: each drafted row is a token of a
batch with its own logits, about 0.4 of a one-token decode step here (CPU, a model whose
output layer is a fifth of its weights). The k-th draft token is worth verifying only if
the chance that all k are right exceeds that cost: each drafter keeps a running
estimate `p` of how often one of its drafts is accepted and drafts the largest k with
p**k ≥ WORTH (so nothing where its drafts fail, up to `max_draft` where its output
copies). A drafter that stopped drafting probes with one token every REST_STEPS steps.

Drafting pays only while few sequences decode (`MAX_DECODING`). On this CPU a decode
step is compute-bound: rows cost nearly the same however they are batched, and what a
draft saves is the step's fixed part, a large share of a one-row step and a small one
of an eight-row step (one row 8.1 ms, two 14.2; eight rows 31.2 ms, sixteen 56.9).
Greedy outputs that copy almost everything, drafting against not, per number of
sequences decoding (tok/s, two rounds; the same run without drafts differs by up to
±15%): 1: +24%, +70%; 2: +14%, +11%; 4: +6%, −6%; 8: −12%, −19%.
"""

from __future__ import annotations

from collections.abc import Iterable

NGRAM = 3  # tokens that must match before a draft is proposed
WORTH = 0.45  # cost of one drafted row, in decode steps: draft while p**k is above it
PRIOR = 0.6  # acceptance assumed before any draft was verified
WEIGHT = 0.3  # of the newest verification in the running estimate
REST_STEPS = 16  # steps between one-token probes of a drafter whose drafts stopped paying
MAX_DECODING = 2  # no drafts in a step that decodes more sequences than this


class Drafter:
    def __init__(self, tokens: Iterable[int], max_draft: int) -> None:
        self.tokens: list[int] = list(tokens)
        # n-gram → the position right after its latest occurrence that has a follower
        self._after: dict[tuple[int, ...], int] = {}
        self.max_draft = max_draft
        self.p = PRIOR  # estimated chance that a drafted token is accepted
        self._idle = 0  # steps since it last drafted
        self.drafted = 0
        self.accepted = 0
        # The prompt in one pass (it runs on the engine thread at every admission): each
        # n-gram maps to where its latest occurrence ends, as `append` would leave it.
        grams = zip(*(self.tokens[k:] for k in range(NGRAM)), strict=False)
        self._after.update(zip(grams, range(NGRAM, len(self.tokens)), strict=False))

    @property
    def length(self) -> int:
        """Tokens worth drafting now: the largest k with p**k ≥ WORTH."""
        k, chance = 0, self.p
        while k < self.max_draft and chance >= WORTH:
            k += 1
            chance *= self.p
        return k

    def append(self, token: int) -> None:
        """The sequence grew by `token` (the last one is the next token to decode)."""
        tokens = self.tokens
        tokens.append(token)
        n = len(tokens)
        if n > NGRAM:  # the n-gram before `token` now has a follower: `token`
            self._after[tuple(tokens[n - 1 - NGRAM : n - 1])] = n - 1

    def propose(self, limit: int) -> list[int]:
        """Up to `limit` tokens that may follow the sequence's last token."""
        k = self.length
        if k == 0:
            self._idle += 1
            if self._idle < REST_STEPS:
                return []
            k = 1  # a probe: has the output started copying?
        k = min(k, limit)
        if k <= 0 or len(self.tokens) < NGRAM:
            return []
        start = self._after.get(tuple(self.tokens[-NGRAM:]))
        if start is None:
            return []
        self._idle = 0
        return self.tokens[start : start + k]

    def verified(self, drafted: int, accepted: int) -> None:
        """Learn from a verification: `accepted` drafts in a row were right, and the next
        one (if any) was not."""
        self.drafted += drafted
        self.accepted += accepted
        trials = accepted + (1 if accepted < drafted else 0)
        self.p += WEIGHT * (accepted / trials - self.p)
