"""Constrained output: GBNF grammars for tool calls and JSON formats, and the parser that
splits generated text into message text and tool calls.

Schemas become GBNF through llama.cpp's maintained converter
(`engine.backend.json_schema_to_gbnf`); this module only namespaces each
tool's rules and wraps them in the fixed `<tool_call>` frame that `prompt.py` renders.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from warmloop.engine.backend import json_schema_to_gbnf
from warmloop.protocol.errors import InvalidRequest
from warmloop.protocol.requests import FunctionTool, TextFormat
from warmloop.serving.prompt import TOOL_CALL_CLOSE, TOOL_CALL_OPEN

MAX_PARALLEL_CALLS = 8
# llama.cpp lazy grammars fire on a full-match regex over the generated text; group 1
# marks where the constrained part starts.
TOOL_CALL_TRIGGER = r"[\s\S]*?(" + re.escape(TOOL_CALL_OPEN) + r")[\s\S]*"

_RULE_DEF = re.compile(r"^([a-zA-Z0-9-]+)\s*::=", re.MULTILINE)


def _gbnf_literal(text: str) -> str:
    return json.dumps(text)  # GBNF string literals use JSON escapes


def schema_grammar(schema: dict[str, object], param: str) -> str:
    try:
        return json_schema_to_gbnf(schema)
    except Exception as exc:  # the converter raises plain exceptions on bad schemas
        raise InvalidRequest(f"Unsupported JSON schema: {exc}", param=param) from exc


def _prefix_rules(grammar: str, prefix: str) -> str:
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


def tool_call_grammar(tools: Sequence[FunctionTool], *, parallel: bool) -> str:
    """One or more `<tool_call>` blocks whose arguments follow each tool's schema."""
    rules: list[str] = []
    alternatives: list[str] = []
    for k, tool in enumerate(tools):
        prefix = f"t{k}"
        rules.append(_prefix_rules(schema_grammar(tool.parameters, tool.param), prefix))
        head = '{"name": ' + json.dumps(tool.qualified) + ', "arguments": '
        alternatives.append(f"{_gbnf_literal(head)} {prefix}-root {_gbnf_literal('}')}")
    call = (
        f"call ::= {_gbnf_literal(TOOL_CALL_OPEN + chr(10))} ( "
        + " | ".join(alternatives)
        + f" ) {_gbnf_literal(chr(10) + TOOL_CALL_CLOSE)}"
    )
    more = f' ( "\\n" call ){{0,{MAX_PARALLEL_CALLS - 1}}}' if parallel else ""
    return "\n".join([f"root ::= call{more}", call, *rules])


def text_format_grammar(fmt: TextFormat) -> str | None:
    if fmt.kind == "json_schema":
        assert fmt.schema is not None
        return schema_grammar(fmt.schema, "text.format.schema")
    if fmt.kind == "json_object":
        return schema_grammar({"type": "object"}, "text.format")
    return None


# ----- parsing generated text ----------------------------------------------------------
@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # raw JSON text exactly as generated


Segment = TextDelta | ToolCall


def parse_call_body(body: str, tool_names: set[str]) -> ToolCall | None:
    """`{"name": ..., "arguments": {...}}` → ToolCall, keeping the arguments' raw text."""
    try:
        obj = json.loads(body)
    except ValueError:
        return None
    if not isinstance(obj, dict) or obj.get("name") not in tool_names:
        return None
    args = obj.get("arguments", {})
    raw = body.strip()
    key = raw.find('"arguments"')
    colon = raw.find(":", key) if key >= 0 else -1
    end = raw.rfind("}")
    candidate = raw[colon + 1 : end].strip() if colon >= 0 else ""
    try:
        if json.loads(candidate) == args:
            return ToolCall(obj["name"], candidate)
    except ValueError:
        pass
    return ToolCall(obj["name"], json.dumps(args))


class OutputParser:
    """Incrementally split generated text into text deltas and complete tool calls.

    Text that might be the start of `<tool_call>` is held back until it is decided, and
    whitespace between calls is dropped, so a pure tool-call answer has no message.
    """

    def __init__(self, tool_names: Sequence[str]) -> None:
        self._names = set(tool_names)
        self._buf = ""
        self._in_call = False
        self._text_started = False
        # After a call, whitespace is held back until text follows: between two calls it
        # is dropped, however the stream happens to be chunked.
        self._after_call = False

    def feed(self, text: str) -> list[Segment]:
        if not self._names:
            return [TextDelta(text)] if text else []
        self._buf += text
        out: list[Segment] = []
        while True:
            if self._in_call:
                end = self._buf.find(TOOL_CALL_CLOSE)
                if end < 0:
                    return out
                body = self._buf[:end]
                self._buf = self._buf[end + len(TOOL_CALL_CLOSE) :]
                self._in_call = False
                call = parse_call_body(body, self._names)
                if call is not None:
                    out.append(call)
                    self._after_call = True
                else:
                    out.extend(self._text(TOOL_CALL_OPEN + body + TOOL_CALL_CLOSE))
                continue
            start = self._buf.find(TOOL_CALL_OPEN)
            if start >= 0:
                before = self._buf[:start]
                if before.strip():
                    out.extend(self._text(before))
                self._buf = self._buf[start + len(TOOL_CALL_OPEN) :]
                self._in_call = True
                continue
            keep = _partial_tag_suffix(self._buf)
            ready = self._buf[: len(self._buf) - keep]
            if ready.strip() or (self._text_started and ready and not self._after_call):
                out.extend(self._text(ready))
                self._buf = self._buf[len(ready) :]
            return out

    def finish(self) -> list[Segment]:
        if not self._names:
            return []
        # An unterminated call (output cut by max_output_tokens) is not a call and not
        # text the model meant to say: it is dropped.
        rest = "" if self._in_call else self._buf
        self._buf = ""
        self._in_call = False
        return self._text(rest) if rest.strip() else []

    def _text(self, text: str) -> list[Segment]:
        if not self._text_started:
            text = text.lstrip()
        if not text:
            return []
        self._text_started = True
        self._after_call = False
        return [TextDelta(text)]


def _partial_tag_suffix(buf: str) -> int:
    """Length of the longest suffix of `buf` that is a proper prefix of `<tool_call>`."""
    for k in range(min(len(buf), len(TOOL_CALL_OPEN) - 1), 0, -1):
        if TOOL_CALL_OPEN.startswith(buf[-k:]):
            return k
    return 0
