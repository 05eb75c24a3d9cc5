"""The parser that splits generated text into message text and tool calls (the
`<tool_call>` frame that `prompt.py` renders and `grammar.py` constrains)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from warmloop.serving.prompt import TOOL_CALL_CLOSE, TOOL_CALL_OPEN


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
