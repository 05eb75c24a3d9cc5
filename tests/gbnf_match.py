"""What a GBNF grammar accepts, for tests: a grammar without recursion becomes a Python
regex."""

from __future__ import annotations

import json
import re


def gbnf_regex(grammar: str) -> re.Pattern[str]:
    """A GBNF grammar without recursion as a Python regex (literals, character classes,
    groups, rule references, `*`, `+`, `?`, `{m,n}`, `|`), to see what it accepts."""
    rules = dict(
        (name, body)
        for name, body in (line.split(" ::= ", 1) for line in grammar.splitlines() if line)
    )
    token = re.compile(
        r'\s*("(?:\\.|[^"\\])*"|\[(?:\\.|[^\]\\])*\]|[()|*+?]|\{\d+(?:,\d*)?\}|[\w-]+)'
    )

    def expand(name: str, depth: int = 0) -> str:
        assert depth < 50, "recursive grammar"
        out, body, pos = [], rules[name], 0
        while pos < len(body.rstrip()):
            m = token.match(body, pos)
            assert m is not None, body[pos:]
            t, pos = m.group(1), m.end()
            if t.startswith('"'):
                out.append(re.escape(json.loads(t)))
            elif t.startswith("["):
                out.append(t)
            elif t == "(":
                out.append("(?:")
            elif t in ")|*+?" or t.startswith("{"):
                out.append(t)
            else:
                out.append(f"(?:{expand(t, depth + 1)})")
        return "".join(out)

    return re.compile(expand("root"), re.S)
