"""A custom tool's Lark grammar (or regex) as GBNF, as far as GBNF can say it.

OpenAI's custom tools may constrain their freeform input with a Lark grammar (Codex's
`apply_patch` does). This module reads the Lark that such grammars are written in and
writes the language it describes as GBNF, in one of two encodings: the text as it is
(families whose calls carry raw text: Qwen3-Coder's parameters, Gemma's strings) or as
the content of a JSON string (families whose arguments are JSON: the `input` string).

Translated: rules and terminals (`name: …`, `NAME: …`, with `?`/`!`/`_` prefixes and
`.priority`, which do not change the language), alternatives, grouping, `[optional]`,
`?`, `*`, `+`, `~ n` and `~ n..m`, aliases (`-> name`, dropped), string literals (also
case-insensitive `"…"i`) and literal ranges (`"a".."z"`), regular expressions
(`/…/` with flags `i` and `s`: alternation, groups, character classes, `.`, `\\d`
`\\w` `\\s` and their negations (ASCII), quantifiers including `{m,n}`, anchors at the
ends), and `%import common.NAME` for Lark's common terminals.

Not translated (the grammar is then described to the model, not enforced; `Unsupported`
says which): `%ignore` (text Lark's lexer skips anywhere between tokens), `%declare`,
`%override`, `%extend`, imports from other modules, rule templates, and regex
look-arounds, back-references and inline flags. What GBNF accepts is the grammar's
character-level language: Lark's lexer, which may refuse some of those texts when
terminals collide, is not modelled.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from warmloop.serving.gbnf import literal

MAX_CHAR = 0x10FFFF
Ranges = tuple[tuple[int, int], ...]


class Unsupported(ValueError):
    """A construct this translation does not cover (the message names it)."""


# ----- character sets ----------------------------------------------------------------
def _norm(ranges: list[tuple[int, int]]) -> Ranges:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return tuple(out)


def _complement(ranges: Ranges) -> Ranges:
    out, at = [], 0
    for lo, hi in ranges:
        if lo > at:
            out.append((at, lo - 1))
        at = hi + 1
    if at <= MAX_CHAR:
        out.append((at, MAX_CHAR))
    return tuple(out)


def _contains(ranges: Ranges, c: int) -> bool:
    return any(lo <= c <= hi for lo, hi in ranges)


def _fold(ranges: Ranges) -> Ranges:
    """The set with both cases of each ASCII letter in it."""
    extra = []
    for lo, hi in ranges:
        for a, b, shift in ((65, 90, 32), (97, 122, -32)):
            lo2, hi2 = max(lo, a), min(hi, b)
            if lo2 <= hi2:
                extra.append((lo2 + shift, hi2 + shift))
    return _norm([*ranges, *extra])


DIGIT = ((48, 57),)
WORD = _norm([(48, 57), (65, 90), (95, 95), (97, 122)])
SPACE = _norm([(9, 13), (32, 32)])
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


def _text(text: str, fold: bool) -> Node:
    items = [Chars(((ord(c), ord(c)),)) for c in text]
    if fold:
        items = [Chars(_fold(i.ranges)) for i in items]
    return items[0] if len(items) == 1 else Seq(tuple(items))


# ----- regular expressions (Python's syntax, the subset that is a regular language) ------
_ESCAPES = {"n": 10, "t": 9, "r": 13, "f": 12, "v": 11, "a": 7, "0": 0}
_CLASSES = {"d": DIGIT, "w": WORD, "s": SPACE}


class _Regex:
    def __init__(self, source: str, flags: str) -> None:
        self.s, self.i = source, 0
        self.fold = "i" in flags
        self.dotall = "s" in flags

    def parse(self) -> Node:
        node = self._alt()
        if self.i != len(self.s):
            raise Unsupported(f"regex /{self.s}/: unbalanced ')'")
        return node

    def _alt(self) -> Node:
        branches = [self._seq()]
        while self.i < len(self.s) and self.s[self.i] == "|":
            self.i += 1
            branches.append(self._seq())
        return branches[0] if len(branches) == 1 else Alt(tuple(branches))

    def _seq(self) -> Node:
        items: list[Node] = []
        while self.i < len(self.s) and self.s[self.i] not in "|)":
            items.append(self._quantified(self._atom()))
        return items[0] if len(items) == 1 else Seq(tuple(items))

    def _atom(self) -> Node:
        s, c = self.s, self.s[self.i]
        if c == "(":
            if s.startswith("(?:", self.i):
                self.i += 3
            elif s.startswith("(?", self.i):
                raise Unsupported(f"regex /{s}/: '(?' groups (look-arounds, flags, names)")
            else:
                self.i += 1
            node = self._alt()
            if self.i >= len(s) or s[self.i] != ")":
                raise Unsupported(f"regex /{s}/: unclosed '('")
            self.i += 1
            return node
        if c == "[":
            return Chars(self._class())
        self.i += 1
        if c == ".":
            everything = ((0, MAX_CHAR),)
            return Chars(everything if self.dotall else _complement(((NEWLINE, NEWLINE),)))
        if c in "^$":
            if (c == "^" and self.i == 1) or (c == "$" and self.i == len(s)):
                return Seq(())  # the whole text is matched anyway
            raise Unsupported(f"regex /{s}/: an anchor inside the expression")
        if c == "\\":
            return Chars(self._escape(in_class=False))
        if c in "*+?":
            raise Unsupported(f"regex /{s}/: nothing to repeat")
        ranges = ((ord(c), ord(c)),)
        return Chars(_fold(ranges) if self.fold else ranges)

    def _escape(self, *, in_class: bool) -> Ranges:
        s = self.s
        if self.i >= len(s):
            raise Unsupported(f"regex /{s}/: a trailing backslash")
        c = s[self.i]
        self.i += 1
        if c.lower() in _CLASSES:
            base = _CLASSES[c.lower()]
            return _complement(base) if c.isupper() else base
        if c in _ESCAPES:
            return ((_ESCAPES[c], _ESCAPES[c]),)
        if c == "b" and in_class:
            return ((8, 8),)
        if c in "xuU":
            width = {"x": 2, "u": 4, "U": 8}[c]
            digits = s[self.i : self.i + width]
            if not re.fullmatch(f"[0-9a-fA-F]{{{width}}}", digits):
                raise Unsupported(f"regex /{s}/: a malformed \\{c} escape")
            self.i += width
            n = int(digits, 16)
            return ((n, n),)
        if c.isalnum():
            raise Unsupported(f"regex /{s}/: '\\{c}' (anchors, back-references)")
        ranges = ((ord(c), ord(c)),)
        return _fold(ranges) if self.fold and not in_class else ranges

    def _class(self) -> Ranges:
        s = self.s
        self.i += 1
        negate = s.startswith("^", self.i)
        self.i += negate
        items: list[tuple[int, int]] = []
        first = True
        while True:
            if self.i >= len(s):
                raise Unsupported(f"regex /{s}/: unclosed '['")
            if s[self.i] == "]" and not first:
                self.i += 1
                break
            first = False
            lo = self._class_member()
            single = len(lo) == 1 and lo[0][0] == lo[0][1]
            if single and s.startswith("-", self.i) and not s.startswith("-]", self.i):
                self.i += 1
                hi = self._class_member()
                if len(hi) != 1 or hi[0][0] != hi[0][1] or hi[0][0] < lo[0][0]:
                    raise Unsupported(f"regex /{s}/: a bad range in a class")
                items.append((lo[0][0], hi[0][0]))
            else:
                items.extend(lo)
        ranges = _fold(_norm(items)) if self.fold else _norm(items)
        return _complement(ranges) if negate else ranges

    def _class_member(self) -> Ranges:
        """One character of a class, or a whole set (`\\d`, `\\w`, `\\s`, …)."""
        c = self.s[self.i]
        self.i += 1
        return self._escape(in_class=True) if c == "\\" else ((ord(c), ord(c)),)

    def _quantified(self, node: Node) -> Node:
        s = self.s
        while self.i < len(s) and s[self.i] in "*+?{":
            c = s[self.i]
            if c == "{":
                m = re.compile(r"\{(\d*)(,?)(\d*)\}").match(s, self.i)
                if m is None or (not m.group(1) and not m.group(3)):
                    return node  # a literal '{' (the next atom)
                self.i = m.end()
                least = int(m.group(1) or 0)
                most = int(m.group(3)) if m.group(3) else (None if m.group(2) else least)
                node = Rep(node, least, most)
            else:
                self.i += 1
                node = Rep(node, *{"*": (0, None), "+": (1, None), "?": (0, 1)}[c])
            if self.i < len(s) and s[self.i] in "?+":  # lazy / possessive: same language
                self.i += 1
        return node


def regex(source: str, flags: str = "") -> Node:
    """A regular expression (Python's syntax) as a grammar node."""
    return _Regex(source, flags).parse()


# ----- Lark -------------------------------------------------------------------------------
_TOKEN = re.compile(
    r"""
    (?P<space>[ \t\f\r]+|\\\n)
  | (?P<comment>//[^\n]*)
  | (?P<newline>\n)
  | (?P<string>"(?:\\.|[^"\\\n])*"i?)
  | (?P<regex>/(?![/*])(?:\\.|[^/\\\n])+/[imslux]*)
  | (?P<name>[?!]?[_A-Za-z][_A-Za-z0-9]*)
  | (?P<number>-?[0-9]+)
  | (?P<op>->|\.\.|[:|()\[\]?*+~,.%{}])
    """,
    re.VERBOSE,
)
# Lark's `common` terminals, in Lark (the ones grammars import)
COMMON = {
    "DIGIT": '"0".."9"',
    "HEXDIGIT": '"a".."f" | "A".."F" | DIGIT',
    "INT": "DIGIT+",
    "SIGNED_INT": '["+"|"-"] INT',
    "DECIMAL": 'INT "." INT? | "." INT',
    "_EXP": '("e"|"E") SIGNED_INT',
    "FLOAT": "INT _EXP | DECIMAL _EXP?",
    "SIGNED_FLOAT": '["+"|"-"] FLOAT',
    "NUMBER": "FLOAT | INT",
    "SIGNED_NUMBER": '["+"|"-"] NUMBER',
    "ESCAPED_STRING": r'/"(\\.|[^"\\])*"/',
    "LCASE_LETTER": '"a".."z"',
    "UCASE_LETTER": '"A".."Z"',
    "LETTER": "UCASE_LETTER | LCASE_LETTER",
    "WORD": "LETTER+",
    "CNAME": '("_"|LETTER) ("_"|LETTER|DIGIT)*',
    "WS_INLINE": '(" "|/\\t/)+',
    "WS": "/[ \\t\\f\\r\\n]/+",
    "CR": "/\\r/",
    "LF": "/\\n/",
    "NEWLINE": "(CR? LF)+",
}


@dataclass(frozen=True)
class _Tok:
    kind: str
    text: str


def _tokens(source: str) -> list[_Tok]:
    out: list[_Tok] = []
    pos = 0
    while pos < len(source):
        m = _TOKEN.match(source, pos)
        if m is None:
            raise Unsupported(f"Lark: cannot read {source[pos : pos + 20]!r}")
        pos = m.end()
        kind = m.lastgroup or ""
        if kind in ("space", "comment"):
            continue
        out.append(_Tok(kind, m.group()))
    # a definition goes on over lines that start with '|'
    joined: list[_Tok] = []
    for k, tok in enumerate(out):
        if tok.kind == "newline":
            nxt = next((t for t in out[k + 1 :] if t.kind != "newline"), None)
            if nxt is not None and nxt.text == "|":
                continue
        joined.append(tok)
    return joined


class _Lark:
    def __init__(self, source: str) -> None:
        self.toks = _tokens(source)
        self.i = 0
        self.rules: dict[str, Node] = {}

    def peek(self) -> _Tok | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def at(self, text: str) -> bool:
        tok = self.peek()
        return tok is not None and tok.text == text

    def take(self, text: str | None = None) -> _Tok:
        tok = self.peek()
        if tok is None or (text is not None and tok.text != text):
            want = f"'{text}'" if text else "more"
            raise Unsupported(f"Lark: expected {want}, found {tok.text if tok else 'the end'!r}")
        self.i += 1
        return tok

    def parse(self) -> dict[str, Node]:
        while (tok := self.peek()) is not None:
            if tok.kind == "newline":
                self.i += 1
            elif tok.text == "%":
                self._directive()
            elif tok.kind == "name":
                self._definition()
            else:
                raise Unsupported(f"Lark: unexpected {tok.text!r}")
        return self.rules

    def _definition(self) -> None:
        name = self.take().text.lstrip("?!")
        if self.at("{"):
            raise Unsupported(f"Lark: rule templates ({name}{{…}})")
        if self.at("."):
            self.take(".")
            self.take()  # the priority: it does not change the language
        self.take(":")
        self.rules[name] = self._expansions()

    def _directive(self) -> None:
        self.take("%")
        what = self.take().text
        if what != "import":
            raise Unsupported(f"Lark: %{what}")
        module = self.take().text
        names: list[tuple[str, str]] = []
        if self.at("."):
            self.take(".")
            name = self.take().text
            alias = name
            if self.at("->"):
                self.take("->")
                alias = self.take().text
            names.append((name, alias))
        elif self.at("("):
            self.take("(")
            while not self.at(")") and self.peek() is not None:
                tok = self.take()
                if tok.text != ",":
                    names.append((tok.text, tok.text))
            self.take(")")
        if module != "common":
            raise Unsupported(f"Lark: %import from {module!r} (only 'common')")
        for name, alias in names:
            self._common(name, alias)

    def _common(self, name: str, alias: str) -> None:
        if name not in COMMON:
            raise Unsupported(f"Lark: common.{name}")
        sub = _Lark(f"{name}: {COMMON[name]}")
        for dep in re.findall(r"\b_?[A-Z][A-Z_]*\b", COMMON[name]):
            if dep in COMMON and dep not in self.rules:
                self._common(dep, dep)
        self.rules[alias] = sub.parse()[name]

    def _expansions(self) -> Node:
        branches = [self._alias()]
        while self.at("|"):
            self.take("|")
            branches.append(self._alias())
        return branches[0] if len(branches) == 1 else Alt(tuple(branches))

    def _alias(self) -> Node:
        node = self._sequence()
        if self.at("->"):
            self.take("->")
            self.take()  # the alias names the tree node: not the language
        return node

    def _sequence(self) -> Node:
        items: list[Node] = []
        while (tok := self.peek()) is not None and tok.text not in ("|", ")", "]", "->"):
            if tok.kind == "newline":
                break
            items.append(self._item())
        return items[0] if len(items) == 1 else Seq(tuple(items))

    def _item(self) -> Node:
        node = self._atom()
        tok = self.peek()
        if tok is not None and tok.text in ("?", "*", "+"):
            self.i += 1
            return Rep(node, *{"*": (0, None), "+": (1, None), "?": (0, 1)}[tok.text])
        if tok is not None and tok.text == "~":
            self.i += 1
            least = int(self.take().text)
            most = least
            if self.at(".."):
                self.take("..")
                most = int(self.take().text)
            return Rep(node, least, most)
        return node

    def _atom(self) -> Node:
        tok = self.take()
        if tok.text == "(":
            node = self._expansions()
            self.take(")")
            return node
        if tok.text == "[":
            node = self._expansions()
            self.take("]")
            return Rep(node, 0, 1)
        if tok.kind == "string":
            fold = tok.text.endswith("i")
            text = json.loads(tok.text[:-1] if fold else tok.text)
            if self.at(".."):
                self.take("..")
                end = json.loads(self.take().text)
                if len(text) != 1 or len(end) != 1 or end < text:
                    raise Unsupported(f'Lark: the range "{text}".."{end}"')
                return Chars(((ord(text), ord(end)),))
            if not text:
                return Seq(())
            return _text(text, fold)
        if tok.kind == "regex":
            body, _, flags = tok.text[1:].rpartition("/")
            return regex(body.replace("\\/", "/"), flags)
        if tok.kind == "name":
            if self.at("{"):
                raise Unsupported(f"Lark: rule templates ({tok.text}{{…}})")
            return Ref(tok.text)
        raise Unsupported(f"Lark: unexpected {tok.text!r}")


# ----- GBNF ---------------------------------------------------------------------------------
def _class(ranges: Ranges) -> str:
    def char(c: int) -> str:
        if c < 0x20 or c > 0x7E or chr(c) in "\\]^-[":
            return f"\\x{c:02X}" if c <= 0xFF else f"\\u{c:04X}" if c <= 0xFFFF else f"\\U{c:08X}"
        return chr(c)

    def body(rs: Ranges) -> str:
        return "".join(char(lo) if lo == hi else f"{char(lo)}-{char(hi)}" for lo, hi in rs)

    inverse = _complement(ranges)
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
        plain = _norm(
            [
                (max(lo, a), min(hi, b))
                for lo, hi in ranges
                for a, b in ((0x20, 0x21), (0x23, 0x5B), (0x5D, MAX_CHAR))
                if max(lo, a) <= min(hi, b)
            ]
        )
        if plain:
            alts.append(_class(plain))
        alts += [literal(esc) for c, esc in _JSON_ESCAPES.items() if _contains(ranges, c)]
        others = [c for c in _UNNAMED if _contains(ranges, c)]
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


def translate(definition: str, encoding: Encoding, prefix: str) -> Translation:
    """A Lark grammar as GBNF rules under `prefix` (raises Unsupported)."""
    rules = _Lark(definition).parse()
    if "start" not in rules:
        raise Unsupported("Lark: no 'start' rule")
    return _emit(rules, "start", encoding, prefix)


def translate_regex(pattern: str, encoding: Encoding, prefix: str) -> Translation:
    """A regex format (the whole text matches it) as GBNF rules under `prefix`."""
    return _emit({"start": regex(pattern)}, "start", encoding, prefix)


def input_rules(grammar: tuple[str, str], encoding: Encoding, prefix: str) -> Translation | None:
    """A custom tool's (syntax, definition) as GBNF, None when it cannot be said."""
    syntax, definition = grammar
    try:
        if syntax == "lark":
            return translate(definition, encoding, prefix)
        return translate_regex(definition, encoding, prefix)
    except (Unsupported, RecursionError):
        return None


def _single(node: Node) -> str | None:
    if isinstance(node, Chars) and len(node.ranges) == 1 and node.ranges[0][0] == node.ranges[0][1]:
        return chr(node.ranges[0][0])
    return None


def _emit(rules: dict[str, Node], start: str, encoding: Encoding, prefix: str) -> Translation:
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
