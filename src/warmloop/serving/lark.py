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

from warmloop.serving.regex import regex
from warmloop.serving.text_grammar import (
    QUANTIFIERS,
    Alt,
    Chars,
    Encoding,
    Node,
    Ref,
    Rep,
    Seq,
    Translation,
    Unsupported,
    emit,
    text_node,
)

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
            return Rep(node, *QUANTIFIERS[tok.text])
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
            return text_node(text, fold)
        if tok.kind == "regex":
            body, _, flags = tok.text[1:].rpartition("/")
            return regex(body.replace("\\/", "/"), flags)
        if tok.kind == "name":
            if self.at("{"):
                raise Unsupported(f"Lark: rule templates ({tok.text}{{…}})")
            return Ref(tok.text)
        raise Unsupported(f"Lark: unexpected {tok.text!r}")


def translate(definition: str, encoding: Encoding, prefix: str) -> Translation:
    """A Lark grammar as GBNF rules under `prefix` (raises Unsupported)."""
    rules = _Lark(definition).parse()
    if "start" not in rules:
        raise Unsupported("Lark: no 'start' rule")
    return emit(rules, "start", encoding, prefix)


def translate_regex(pattern: str, encoding: Encoding, prefix: str) -> Translation:
    """A regex format (the whole text matches it) as GBNF rules under `prefix`."""
    return emit({"start": regex(pattern)}, "start", encoding, prefix)


def input_rules(grammar: tuple[str, str], encoding: Encoding, prefix: str) -> Translation | None:
    """A custom tool's (syntax, definition) as GBNF, None when it cannot be said."""
    syntax, definition = grammar
    try:
        if syntax == "lark":
            return translate(definition, encoding, prefix)
        return translate_regex(definition, encoding, prefix)
    except (Unsupported, RecursionError):
        return None
