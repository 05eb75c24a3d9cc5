"""`truncation: "auto"`: drop the oldest conversation items until the prompt fits.

Never dropped: the instructions and tool definitions, the leading system/developer
messages, and the newest item; a `function_call` and its `function_call_output` go
together (a cut never falls between them). The smallest number of items that makes
the prompt fit is dropped, so a long session drops a turn or two at a time.

A truncated prompt is the chain's tokens with one range cut out (the dropped items),
then the new turn's tokens. `Truncation.drop` names that range in the chain's tokens so
the KV cache can cut it out of the sequence that holds the chain and shift the kept
tail into place (`kvcache.base.reuse_of`): the turn computes only its delta. When the
range cannot be located exactly in the chain's tokens, the prompt is tokenized afresh
and computed cold (still correct).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from warmloop.protocol.errors import InvalidRequest
from warmloop.protocol.items import FunctionCallItem, FunctionCallOutputItem, Item
from warmloop.serving.prompt import Head, PromptRenderer
from warmloop.session.response_store import ChainState

Tokenize = Callable[[str], list[int]]  # the model's tokenizer (safe on any thread)
Piece = Callable[[int], bytes]  # a token's text, special tokens spelled out (any thread)


@dataclass(frozen=True)
class Truncation:
    history: tuple[Item, ...]  # what the model sees: the lead, then the kept items
    text: str
    tokens: list[int]
    dropped: int  # items dropped
    drop: tuple[int, int] | None  # the chain's tokens [start, end) that were dropped


def cuts(history: Sequence[Item], lead: int) -> list[int]:
    """Every k (lead < k < len(history)) such that dropping history[lead:k] separates no
    function call from its output, ascending."""
    span: dict[str, tuple[int, int]] = {}
    for i, item in enumerate(history):
        if isinstance(item, FunctionCallItem | FunctionCallOutputItem):
            first, _ = span.get(item.call_id, (i, i))
            span[item.call_id] = (first, i)
    blocked: set[int] = set()
    for first, last in span.values():
        blocked.update(range(first + 1, last + 1))
    return [k for k in range(lead + 1, len(history)) if k not in blocked]


def truncate(
    renderer: PromptRenderer,
    tokenize: Tokenize,
    piece: Piece,
    *,
    system: Head,
    history: tuple[Item, ...],
    full: str,
    lead: int,
    generate: bool,
    fits: Callable[[int], bool],
    chain: ChainState | None,
) -> Truncation | None:
    """The fewest oldest items to drop from history[lead:] so that `fits(prompt tokens)`,
    or None when even dropping all that may go does not make it fit. `full` is the
    prompt text of the whole history (rendered already by the caller)."""
    options = cuts(history, lead)
    if not options:
        return None

    texts: dict[int, str] = {}  # the prompt text after each cut tried

    def fits_at(i: int) -> bool:
        k = options[i]
        kept = history[:lead] + history[k:]
        texts[k] = renderer.render(system, kept, add_generation_prompt=generate)
        return fits(len(tokenize(texts[k])))

    # Fewer tokens the more is dropped: the first cut that fits, by bisection.
    i = bisect_left(range(len(options)), True, key=fits_at)
    if i == len(options):
        return None
    k = options[i]
    text = texts[k]  # bisection ends having tried the cut it returns
    tokens, drop = _cut_tokens(renderer, tokenize, piece, system, history[:lead], full, text, chain)
    return Truncation(history[:lead] + history[k:], text, tokens, k - lead, drop)


def _cut_tokens(
    renderer: PromptRenderer,
    tokenize: Tokenize,
    piece: Piece,
    system: Head,
    lead: tuple[Item, ...],
    full: str,
    text: str,
    chain: ChainState | None,
) -> tuple[list[int], tuple[int, int] | None]:
    """The truncated prompt's tokens: the chain's own tokens with the dropped range cut
    out (and that range) when it can be located exactly, else a fresh tokenization."""
    fresh = (tokenize(text), None)
    if chain is None or not full.startswith(chain.text):
        return fresh
    # The truncated text is the full one with one piece [a, b) taken out, right after
    # the head; the template must render it that way (ChatML does), and the piece must
    # lie in what the chain's tokens already cover.
    try:
        a = len(renderer.render(system, lead, add_generation_prompt=False))
    except InvalidRequest:  # a template that will not render the head alone
        return fresh
    b = a + len(full) - len(text)
    if text != full[:a] + full[b:] or b > len(chain.text):
        return fresh
    at = token_starts(chain.tokens, chain.text, (a, b), piece)
    if at is None:
        return fresh
    start, end = at
    tokens = [*chain.tokens[:start], *chain.tokens[end:], *tokenize(full[len(chain.text) :])]
    return tokens, (start, end)


def token_starts(
    tokens: Sequence[int], text: str, offsets: tuple[int, int], piece: Piece
) -> tuple[int, int] | None:
    """The indices of the tokens at which text[offset:] begins, for both offsets, when
    the tokens spell the text exactly up to there and each offset falls between two
    tokens; None otherwise (say, the model wrote bytes that are not valid UTF-8)."""
    data = text.encode("utf-8")
    wanted = [len(text[:o].encode("utf-8")) for o in offsets]
    found: list[int] = []
    pos = 0
    for i, token in enumerate(tokens):
        while len(found) < len(wanted) and pos == wanted[len(found)]:
            found.append(i)
        if len(found) == len(wanted):
            break
        if pos > wanted[len(found)]:
            return None  # the offset falls inside a token
        p = piece(token)
        if data[pos : pos + len(p)] != p:
            return None
        pos += len(p)
    while len(found) < len(wanted) and pos == wanted[len(found)]:
        found.append(len(tokens))
    return (found[0], found[1]) if len(found) == 2 else None
