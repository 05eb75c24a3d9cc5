"""Client JSON, decoded once and checked before anything else reads it.

Both transports decode request bodies and frames here, so the same rules hold on HTTP
and on a socket: the text is JSON, it nests at most `max_depth` levels (a body of
100,000 `[` would otherwise exhaust the parser's recursion), and no string or object key
holds a lone UTF-16 surrogate (`"\\ud800"` is valid JSON but not Unicode: it cannot be
tokenized, stored or sent back as UTF-8, so it is refused where it enters).
"""

from __future__ import annotations

import json
import re
from typing import Any

from warmloop.protocol.errors import InvalidRequest

_SURROGATE = re.compile("[\ud800-\udfff]")


def loads(data: bytes | str, *, what: str = "The request body", max_depth: int) -> Any:
    """Decode and check client JSON; every failure is an InvalidRequest (400)."""
    try:
        value = json.loads(data)
    except RecursionError:
        raise InvalidRequest(
            f"{what} nests JSON more than {max_depth} levels deep.", code="invalid_json"
        ) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"{what} is not valid JSON: {exc}", code="invalid_json") from None
    check(value, max_depth=max_depth)
    return value


# Where a node sits, as a chain back to the root: (parent trail, key or index). The
# param string is only built for the node that fails, not for every node of a 4 MB body.
Trail = tuple["Trail", str | int] | None


def check(value: Any, *, max_depth: int) -> None:
    """Refuse nesting deeper than `max_depth` and lone surrogates, naming the param."""
    stack: list[tuple[Any, Trail, int]] = [(value, None, 0)]
    while stack:
        node, trail, depth = stack.pop()
        if isinstance(node, str):
            if _SURROGATE.search(node):
                raise _surrogate(_param(trail))
        elif isinstance(node, dict | list):
            if depth >= max_depth:
                path = _param(trail)
                raise InvalidRequest(
                    f"'{path or 'body'}' nests JSON more than {max_depth} levels deep.",
                    param=path or None,
                    code="invalid_json",
                )
            if isinstance(node, dict):
                for key, child in node.items():
                    if _SURROGATE.search(key):
                        raise _surrogate(_param(trail), key=True)
                    stack.append((child, (trail, key), depth + 1))
            else:
                for i, child in enumerate(node):
                    stack.append((child, (trail, i), depth + 1))


def _param(trail: Trail) -> str:
    """`input[0].content`-style path of a trail (requests.py names params the same way)."""
    parts: list[str | int] = []
    while trail is not None:
        trail, part = trail
        parts.append(part)
    out = ""
    for part in reversed(parts):
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _surrogate(path: str, *, key: bool = False) -> InvalidRequest:
    where = f"an object key in '{path or 'body'}'" if key else f"'{path or 'body'}'"
    return InvalidRequest(
        f"Invalid Unicode in {where}: a lone UTF-16 surrogate (such as \\ud800) is not a "
        "character; send valid UTF-8 text.",
        param=path or None,
        code="invalid_value",
    )
