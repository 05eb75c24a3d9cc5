"""Small GBNF helpers shared by the families' tool-call grammars and `grammar.py`."""

from __future__ import annotations

import json
import re

_RULE_DEF = re.compile(r"^([a-zA-Z0-9-]+)\s*::=", re.MULTILINE)


def literal(text: str) -> str:
    """A GBNF string literal (GBNF literals use JSON's escapes)."""
    return json.dumps(text, ensure_ascii=False)


def prefix_rules(grammar: str, prefix: str) -> str:
    """Rename every rule defined in `grammar` to `prefix-<name>`, outside literals."""
    names = set(_RULE_DEF.findall(grammar))
    out: list[str] = []
    i, n = 0, len(grammar)
    while i < n:
        c = grammar[i]
        if c in '"[':
            close = '"' if c == '"' else "]"
            j = i + 1
            while j < n and grammar[j] != close:
                j += 2 if grammar[j] == "\\" else 1
            out.append(grammar[i : j + 1])
            i = j + 1
        elif c == "#":  # comment to end of line
            j = grammar.find("\n", i)
            j = n if j < 0 else j
            out.append(grammar[i:j])
            i = j
        elif c.isalnum() or c == "-":
            j = i
            while j < n and (grammar[j].isalnum() or grammar[j] == "-"):
                j += 1
            word = grammar[i:j]
            out.append(f"{prefix}-{word}" if word in names else word)
            i = j
        else:
            out.append(c)
            i += 1
    return "".join(out)
