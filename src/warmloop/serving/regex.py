"""Regular expressions (Python's syntax, the subset that is a regular language) as
text-grammar nodes: alternation, groups, character classes, `.`, `\\d` `\\w` `\\s` and
their negations (ASCII), quantifiers including `{m,n}`, anchors at the ends, flags `i`
and `s`. Look-arounds, back-references and inline flags are `Unsupported`."""

from __future__ import annotations

import re

from warmloop.serving.text_grammar import (
    DIGIT,
    MAX_CHAR,
    NEWLINE,
    QUANTIFIERS,
    SPACE,
    WORD,
    Alt,
    Chars,
    Node,
    Ranges,
    Rep,
    Seq,
    Unsupported,
    both_cases,
    complement,
    norm,
)

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
            return Chars(everything if self.dotall else complement(((NEWLINE, NEWLINE),)))
        if c in "^$":
            if (c == "^" and self.i == 1) or (c == "$" and self.i == len(s)):
                return Seq(())  # the whole text is matched anyway
            raise Unsupported(f"regex /{s}/: an anchor inside the expression")
        if c == "\\":
            return Chars(self._escape(in_class=False))
        if c in "*+?":
            raise Unsupported(f"regex /{s}/: nothing to repeat")
        ranges = ((ord(c), ord(c)),)
        return Chars(both_cases(ranges) if self.fold else ranges)

    def _escape(self, *, in_class: bool) -> Ranges:
        s = self.s
        if self.i >= len(s):
            raise Unsupported(f"regex /{s}/: a trailing backslash")
        c = s[self.i]
        self.i += 1
        if c.lower() in _CLASSES:
            base = _CLASSES[c.lower()]
            return complement(base) if c.isupper() else base
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
        return both_cases(ranges) if self.fold and not in_class else ranges

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
        ranges = both_cases(norm(items)) if self.fold else norm(items)
        return complement(ranges) if negate else ranges

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
                node = Rep(node, *QUANTIFIERS[c])
            if self.i < len(s) and s[self.i] in "?+":  # lazy / possessive: same language
                self.i += 1
        return node


def regex(source: str, flags: str = "") -> Node:
    """A regular expression (Python's syntax) as a grammar node."""
    return _Regex(source, flags).parse()
