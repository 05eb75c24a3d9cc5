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

DEFAULT_MAX_DEPTH = 64
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


def check(value: Any, *, max_depth: int) -> None:
    """Refuse nesting deeper than `max_depth` and lone surrogates, naming the param."""
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    while stack:
        node, path, depth = stack.pop()
        if isinstance(node, str):
            if _SURROGATE.search(node):
                raise _surrogate(path)
        elif isinstance(node, dict | list):
            if depth >= max_depth:
                raise InvalidRequest(
                    f"'{path or 'body'}' nests JSON more than {max_depth} levels deep.",
                    param=path or None,
                    code="invalid_json",
                )
            if isinstance(node, dict):
                for key, child in node.items():
                    where = f"{path}.{key}" if path else str(key)
                    if _SURROGATE.search(key):
                        raise _surrogate(path, key=True)
                    stack.append((child, where, depth + 1))
            else:
                for i, child in enumerate(node):
                    stack.append((child, f"{path}[{i}]", depth + 1))


def _surrogate(path: str, *, key: bool = False) -> InvalidRequest:
    where = f"an object key in '{path or 'body'}'" if key else f"'{path or 'body'}'"
    return InvalidRequest(
        f"Invalid Unicode in {where}: a lone UTF-16 surrogate (such as \\ud800) is not a "
        "character; send valid UTF-8 text.",
        param=path or None,
        code="invalid_value",
    )
