"""truncation "auto" on the prompt side: where a cut may fall, and the token range of the
chain that a cut removes (against a one-token-per-character tokenizer)."""

from __future__ import annotations

from warmloop.protocol.items import FunctionCallItem, FunctionCallOutputItem, Item, MessageItem
from warmloop.serving.prompt import Head, PromptRenderer
from warmloop.serving.truncation import Truncation, cuts, token_starts, truncate
from warmloop.session.response_store import ChainState

R = PromptRenderer(None)  # ChatML


def tokenize(text: str) -> list[int]:
    return [ord(c) for c in text]


def piece(token: int) -> bytes:
    return chr(token).encode()


def msg(role: str, text: str) -> MessageItem:
    return MessageItem(f"m_{text[:8]}", role, text)  # type: ignore[arg-type]


def call(cid: str) -> FunctionCallItem:
    return FunctionCallItem(f"fc_{cid}", cid, "read_file", '{"path": "a.py"}')


def out(cid: str, text: str) -> FunctionCallOutputItem:
    return FunctionCallOutputItem(f"fco_{cid}", cid, text)


def test_a_cut_never_separates_a_call_from_its_output_and_keeps_the_newest_item() -> None:
    h = [msg("system", "rules"), msg("user", "task"), call("a"), out("a", "x"), msg("user", "go")]
    # lead 1 (the system message): cuts after the task, after the call pair; never 3
    # (between call a and its output) and never 5 (the newest item must stay).
    assert cuts(h, 1) == [2, 4]
    assert cuts([msg("user", "only")], 0) == []


def test_token_starts_maps_text_offsets_to_token_indices_or_refuses() -> None:
    text = "ab€cd"  # € is three bytes: one token here
    toks = [ord("a"), ord("b"), ord("€"), ord("c"), ord("d")]
    assert token_starts(toks, text, (1, 3), piece) == (1, 3)
    assert token_starts(toks, text, (0, 5), piece) == (0, 5)
    two = [0x61, 0x62]  # one token for "ab": offset 1 falls inside it
    assert token_starts(two, "ab", (0, 1), lambda t: b"ab" if t == 0x61 else b"") is None
    assert token_starts(toks, "abXcd", (1, 4), piece) is None  # the tokens spell other text


def test_truncate_drops_the_fewest_oldest_items_and_names_the_chain_range() -> None:
    system = Head("You are terse.")
    turns: list[Item] = []
    for t in range(6):
        turns += [msg("user", f"question {t} " + "x" * 40), msg("assistant", f"answer {t}")]
    history = (*turns, msg("user", "the newest question"))
    prev = R.render(system, history[:-1], add_generation_prompt=False)
    chain = ChainState.of(prev, tokenize(prev))  # what the previous turn's KV holds
    full = R.render(system, history)

    def run(limit: int, chain: ChainState | None) -> Truncation | None:
        return truncate(
            R, tokenize, piece, system=system, history=history, full=full, lead=0, generate=True,
            fits=lambda n: n <= limit, chain=chain,
        )  # fmt: skip

    cut = run(len(full) - 100, chain)  # the prompt must lose about 100 tokens
    assert cut is not None and cut.dropped == 2  # one question and its answer (~120 tokens)
    assert cut.history == history[2:]
    assert cut.text == R.render(system, history[2:])
    assert cut.tokens == tokenize(cut.text)  # the chain's tokens, cut, then the new turn
    assert cut.drop is not None
    start, end = cut.drop
    head = R.render(system, [], add_generation_prompt=False)
    assert start == len(head) and end - start == len(full) - len(cut.text)
    # Without a chain the prompt is tokenized afresh; nothing to cut in a KV.
    cold = run(len(full) - 100, None)
    assert cold is not None and cold.tokens == cut.tokens and cold.drop is None
    # Nothing may go but the newest item is too long on its own: None (the caller's 400).
    assert run(10, chain) is None
