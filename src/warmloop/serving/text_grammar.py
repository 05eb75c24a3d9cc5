"""Text grammars as GBNF: what a regex or a Lark grammar says (character sets and the
nodes over them), and how it is written as GBNF rules in one of two encodings: the text
as it is, or as the content of a JSON string. `regex.py` and `lark.py` read the two
syntaxes into these nodes."""

from __future__ import annotations

import json
from dataclasses import dataclass

from warmloop.serving.gbnf import literal

MAX_CHAR = 0x10FFFF
Ranges = tuple[tuple[int, int], ...]


class Unsupported(ValueError):
    """A construct this translation does not cover (the message names it)."""


# ----- character sets ----------------------------------------------------------------
def norm(ranges: list[tuple[int, int]]) -> Ranges:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return tuple(out)


def complement(ranges: Ranges) -> Ranges:
    out, at = [], 0
    for lo, hi in ranges:
        if lo > at:
            out.append((at, lo - 1))
        at = hi + 1
    if at <= MAX_CHAR:
        out.append((at, MAX_CHAR))
    return tuple(out)


def contains(ranges: Ranges, c: int) -> bool:
    return any(lo <= c <= hi for lo, hi in ranges)


def both_cases(ranges: Ranges) -> Ranges:
    """The set with both cases of each ASCII letter in it."""
    extra = []
    for lo, hi in ranges:
        for a, b, shift in ((65, 90, 32), (97, 122, -32)):
            lo2, hi2 = max(lo, a), min(hi, b)
            if lo2 <= hi2:
                extra.append((lo2 + shift, hi2 + shift))
    return norm([*ranges, *extra])


DIGIT = ((48, 57),)
WORD = norm([(48, 57), (65, 90), (95, 95), (97, 122)])
SPACE = norm([(9, 13), (32, 32)])
NEWLINE = 10


# ----- what a grammar says -------------------------------------------------------------
@dataclass(frozen=True)
class Chars:
    ranges: Ranges


@dataclass(frozen=True)
class Seq:
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Alt:
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Rep:
    item: Node
    least: int
    most: int | None  # None: unbounded


@dataclass(frozen=True)
class Ref:
    name: str


Node = Chars | Seq | Alt | Rep | Ref
# `?`, `*` and `+` (the same in regexes and Lark) as Rep's bounds
QUANTIFIERS: dict[str, tuple[int, int | None]] = {"*": (0, None), "+": (1, None), "?": (0, 1)}


def text_node(text: str, fold: bool) -> Node:
    items = [Chars(((ord(c), ord(c)),)) for c in text]
    if fold:
        items = [Chars(both_cases(i.ranges)) for i in items]
    return items[0] if len(items) == 1 else Seq(tuple(items))


# ----- GBNF ---------------------------------------------------------------------------------
def _class(ranges: Ranges) -> str:
    def char(c: int) -> str:
        if c < 0x20 or c > 0x7E or chr(c) in "\\]^-[":
            return f"\\x{c:02X}" if c <= 0xFF else f"\\u{c:04X}" if c <= 0xFFFF else f"\\U{c:08X}"
        return chr(c)

    def body(rs: Ranges) -> str:
        return "".join(char(lo) if lo == hi else f"{char(lo)}-{char(hi)}" for lo, hi in rs)

    inverse = complement(ranges)
    if len(inverse) < len(ranges):
        return f"[^{body(inverse)}]"
    return f"[{body(ranges)}]"


_JSON_ESCAPES = {0x22: '\\"', 0x5C: "\\\\", 10: "\\n", 13: "\\r", 9: "\\t", 8: "\\b", 12: "\\f"}
_UNNAMED = [c for c in range(0x20) if c not in _JSON_ESCAPES]
# the control characters JSON writes as \u00XX, all of them
_ALL_UNNAMED = '"\\\\u000" [0-7bBeEfF] | "\\\\u001" [0-9a-fA-F]'


@dataclass(frozen=True)
class Encoding:
    """How the text is written where the grammar applies: as it is, or inside a JSON
    string (json.dumps' escapes)."""

    json: bool

    def chars(self, ranges: Ranges) -> str:
        """One character of `ranges`."""
        if not self.json:
            return _class(ranges)
        alts = []
        plain = norm(
            [
                (max(lo, a), min(hi, b))
                for lo, hi in ranges
                for a, b in ((0x20, 0x21), (0x23, 0x5B), (0x5D, MAX_CHAR))
                if max(lo, a) <= min(hi, b)
            ]
        )
        if plain:
            alts.append(_class(plain))
        alts += [literal(esc) for c, esc in _JSON_ESCAPES.items() if contains(ranges, c)]
        others = [c for c in _UNNAMED if contains(ranges, c)]
        if others == _UNNAMED:
            alts.append(_ALL_UNNAMED)
        else:
            alts += [literal(f"\\u{c:04x}") for c in others]
        if not alts:
            raise Unsupported("a character class that matches nothing")
        return alts[0] if len(alts) == 1 else "( " + " | ".join(alts) + " )"

    def text(self, text: str) -> str:
        return literal(json.dumps(text, ensure_ascii=False)[1:-1] if self.json else text)


RAW, JSON_STRING = Encoding(json=False), Encoding(json=True)


@dataclass(frozen=True)
class Translation:
    rules: tuple[str, ...]  # GBNF rules; `<prefix>-start` is the grammar's start
    start: str


def _single(node: Node) -> str | None:
    if isinstance(node, Chars) and len(node.ranges) == 1 and node.ranges[0][0] == node.ranges[0][1]:
        return chr(node.ranges[0][0])
    return None


def emit(rules: dict[str, Node], start: str, encoding: Encoding, prefix: str) -> Translation:
    def name(rule: str) -> str:
        return f"{prefix}-{rule.replace('_', '-')}" if rule in rules else ""

    def expr(node: Node) -> str:
        if isinstance(node, Chars):
            one = _single(node)
            return encoding.text(one) if one is not None else encoding.chars(node.ranges)
        if isinstance(node, Ref):
            if node.name not in rules:
                raise Unsupported(f"Lark: '{node.name}' is not defined")
            return name(node.name)
        if isinstance(node, Seq):
            if not node.items:
                return '""'
            parts: list[str] = []
            run = ""  # single characters in a row are one literal
            for item in node.items:
                one = _single(item)
                if one is not None:
                    run += one
                    continue
                if run:
                    parts.append(encoding.text(run))
                    run = ""
                parts.append(expr(item))
            if run:
                parts.append(encoding.text(run))
            return parts[0] if len(parts) == 1 else "( " + " ".join(parts) + " )"
        if isinstance(node, Alt):
            return "( " + " | ".join(expr(i) for i in node.items) + " )"
        inner = expr(node.item)
        if (node.least, node.most) == (0, None):
            return f"{inner}*"
        if (node.least, node.most) == (1, None):
            return f"{inner}+"
        if (node.least, node.most) == (0, 1):
            return f"{inner}?"
        most = "" if node.most is None else str(node.most)
        return f"{inner}{{{node.least},{most}}}"

    lines = [f"{name(r)} ::= {expr(node)}" for r, node in rules.items()]
    return Translation(tuple(lines), name(start))
