"""Gemma's notation for values (Gemma 4, FunctionGemma): read into JSON text, and the
parsed arguments as the template writes them back.

    {city:<|"|>Oslo<|"|>,days:3,tags:[<|"|>a<|"|>],opts:{deep:true}}

Bare keys, strings between two quote tokens with nothing escaped inside, numbers,
`true`, `false`, `null`, `[…]` and `{…}`; a bare word where a string belongs is read as
that string (as Google's own parser does). Numbers and null go back as the very text
the model wrote (`Bare`), not as Python would print them.
"""

from __future__ import annotations

import json
import re
from typing import Any

_BARE_END = re.compile(r"[,}\]]")
_KEY = re.compile(r"\s*(?P<key>[^\s:{}\[\],<]+)\s*:")
_JSON_LITERAL = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?|true|false|null")


class Bare:
    """A JSON number or null as the text the model wrote: what the template's
    `{{ argument }}` writes back (not a string, mapping, sequence or boolean to it)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return self.text


def template_value(value: Any) -> Any:
    """A parsed JSON value with its numbers and nulls made `Bare`."""
    if value is None:
        return Bare("null")
    if isinstance(value, dict):
        return {k: template_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [template_value(v) for v in value]
    return value


class Incomplete(Exception):
    """The text ends inside the value."""


class Broken(Exception):
    """The text is not a value in Gemma's notation."""


def read_value(buf: str, pos: int, quote: str) -> tuple[str, int]:
    """The value in Gemma's notation at `buf[pos:]` as JSON text, and where it ends."""
    while pos < len(buf) and buf[pos].isspace():
        pos += 1
    if pos >= len(buf) or quote.startswith(buf[pos:]):
        raise Incomplete
    if buf.startswith(quote, pos):
        end = buf.find(quote, pos + len(quote))
        if end < 0:
            raise Incomplete
        return json.dumps(buf[pos + len(quote) : end], ensure_ascii=False), end + len(quote)
    if buf[pos] == "{":
        pairs, end = read_pairs(buf, pos + 1, quote)
        return "{" + ", ".join(f"{k}: {v}" for k, v in pairs) + "}", end
    if buf[pos] == "[":
        values: list[str] = []
        pos += 1
        while True:
            while pos < len(buf) and buf[pos].isspace():
                pos += 1
            if pos >= len(buf):
                raise Incomplete
            if buf[pos] == "]":
                return "[" + ", ".join(values) + "]", pos + 1
            if values:
                if buf[pos] != ",":
                    raise Broken
                pos += 1
            value, pos = read_value(buf, pos, quote)
            values.append(value)
    m = _BARE_END.search(buf, pos)
    if m is None:
        raise Incomplete
    text = buf[pos : m.start()].strip()
    if _JSON_LITERAL.fullmatch(text):
        return text, m.start()
    if not text or "<" in text:
        raise Broken
    return json.dumps(text, ensure_ascii=False), m.start()  # a string left unquoted


def read_pairs(buf: str, pos: int, quote: str) -> tuple[list[tuple[str, str]], int]:
    """The `key:value` pairs of an object whose `{` ends before `pos`, up to its `}`."""
    pairs: list[tuple[str, str]] = []
    while True:
        pair, pos = read_pair(buf, pos, quote, first=not pairs)
        if pair is None:
            return pairs, pos
        pairs.append(pair)


def read_pair(buf: str, pos: int, quote: str, *, first: bool) -> tuple[tuple[str, str] | None, int]:
    """The next pair of an object as JSON texts (None and past the `}` at its end)."""
    while pos < len(buf) and buf[pos].isspace():
        pos += 1
    if pos >= len(buf):
        raise Incomplete
    if buf[pos] == "}":
        return None, pos + 1
    if not first:
        if buf[pos] != ",":
            raise Broken
        pos += 1
    if buf.startswith(quote, pos):  # a quoted key (tool responses write them so)
        end = buf.find(quote, pos + len(quote))
        if end < 0:
            raise Incomplete
        key, pos = buf[pos + len(quote) : end], end + len(quote)
        if not buf.startswith(":", pos):
            raise Incomplete if pos >= len(buf) else Broken
        pos += 1
    else:
        m = _KEY.match(buf, pos)
        if m is None:
            if re.fullmatch(r"\s*[^\s:{}\[\],<]*", buf[pos:]):
                raise Incomplete
            raise Broken
        key, pos = m.group("key"), m.end()
    value, pos = read_value(buf, pos, quote)
    return (json.dumps(key, ensure_ascii=False), value), pos
