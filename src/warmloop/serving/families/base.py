"""What every model family shares: the chat messages a conversation becomes, the
streaming parser that splits generated text into text and tool calls, and the grammar
that makes the model write its calls in its own syntax with valid arguments.

A family is one object that owns all three for one tool-call syntax, so what the
template renders, what the grammar allows and what the parser reads cannot drift
apart. The invariant that keeps a tool loop's KV warm: a parsed output rendered back
as history is the text the model generated (tests/unit/test_families.py checks it on
each family's real templates).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from warmloop.protocol.items import (
    CompactionItem,
    FunctionCallItem,
    FunctionCallOutputItem,
    Item,
    MessageItem,
    ReasoningItem,
)
from warmloop.protocol.requests import FunctionTool
from warmloop.serving.chat_template import RawArgs
from warmloop.serving.gbnf import literal, prefix_rules

MAX_PARALLEL_CALLS = 8
SUMMARY_HEADER = "Summary of the conversation so far:\n"

# (JSON schema, where it is in the request) -> GBNF whose root is that schema's value;
# raises the client's InvalidRequest when the schema cannot be converted.
SchemaGrammar = Callable[[dict[str, Any], str], str]


# ----- what the parser yields ---------------------------------------------------------
@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class CallStart:
    name: str  # qualified: namespace.name
    call_id: str | None = None  # the model wrote it (Mistral), else the server makes one


@dataclass(frozen=True)
class ArgsDelta:
    text: str


@dataclass(frozen=True)
class CallEnd:
    arguments: str  # exactly as generated
    complete: bool = True  # False: the output ended inside the call

    @classmethod
    def of(cls, arguments: str, complete: bool) -> CallEnd:
        """The end of a call whose arguments should be JSON: arguments that are not
        mean the model broke the call off, so it is incomplete whatever closed it."""
        try:
            json.loads(arguments)
        except ValueError:
            complete = False
        return cls(arguments, complete)


@dataclass(frozen=True)
class ReasoningDelta:
    text: str


@dataclass(frozen=True)
class ReasoningEnd:
    complete: bool = True  # False: the output ended inside the reasoning


Segment = TextDelta | CallStart | ArgsDelta | CallEnd | ReasoningDelta | ReasoningEnd
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def partial_suffix(buf: str, markers: Sequence[str]) -> int:
    """Length of the longest suffix of `buf` that is a proper prefix of a marker: text
    that must wait for the next token before it can be told."""
    for k in range(min(len(buf), max(len(m) for m in markers) - 1), 0, -1):
        if any(m.startswith(buf[-k:]) for m in markers):
            return k
    return 0


class NotACall(Exception):
    """What followed a call marker is not a call to a known tool: it is text."""


class CallReader:
    """Reads one call (or a family's block of calls) from the text after its marker.

    `advance(buf, final)` gets the whole text since the marker each time, returns the
    segments it has newly found and, once the call is complete, where it ends in
    `buf`; it raises NotACall before it has yielded anything when `buf` is no call."""

    def advance(self, buf: str, final: bool) -> tuple[list[Segment], int | None]:
        raise NotImplementedError


class CallParser:
    """Incremental split of generated text into text deltas and tool-call segments.

    Text that could be the start of a call marker is held back until it is decided,
    and so is trailing whitespace (dropped before a call: the template writes its own
    separator there; kept before more text or at the end). Whitespace between calls is
    dropped, so an answer of calls only has no message."""

    def __init__(
        self, family: Family, tools: Sequence[FunctionTool], *, reasoning: str = "no"
    ) -> None:
        self._family = family
        self._tools = {t.qualified: t for t in tools}
        self._buf = ""
        self._reader: CallReader | None = None
        self._text_started = False
        self._after_call = False
        self._gap = ""  # whitespace before a marker: text again if no call follows
        # Reasoning comes first when it comes: "start" (it may open with <think>),
        # "in" (the prompt opened it), "no" (the family does not think, or it is over).
        self._think = reasoning
        self._rbuf = ""
        self._r_started = False

    @property
    def in_reasoning(self) -> bool:
        return self._think == "in"

    def feed(self, text: str) -> list[Segment]:
        out: list[Segment] = []
        if self._think != "no":
            out, text = self._reason(text, final=False)
            if not text:
                return out
        if not self._tools:
            return [*out, TextDelta(text)] if text else out
        self._buf += text
        return out + self._run(final=False)

    def finish(self) -> list[Segment]:
        out: list[Segment] = []
        if self._think != "no":
            out, text = self._reason("", final=True)
            self._buf += text
        if not self._tools:
            rest, self._buf = self._buf, ""
            return [*out, TextDelta(rest)] if rest else out
        out += self._run(final=True)
        if self._reader is None and self._buf and not self._after_call:
            out.extend(self._text(self._buf))
        self._buf = ""
        return out

    def _reason(self, text: str, final: bool) -> tuple[list[Segment], str]:
        """Reasoning segments, and what follows the reasoning (once it is over)."""
        self._rbuf += text
        out: list[Segment] = []
        opening, closing = self._family.think_tags
        newlines = self._family.think_newlines
        if self._think == "start":
            stripped = self._rbuf.lstrip()
            if stripped.startswith(opening):
                self._rbuf = stripped[len(opening) :]
                self._think = "in"
            elif not final and opening.startswith(stripped):
                return out, ""  # undecided
            else:
                self._think = "no"
                rest, self._rbuf = self._rbuf, ""
                return out, rest
        if not self._r_started:
            self._rbuf = self._rbuf.lstrip(newlines)
        end = self._rbuf.find(closing)
        if end >= 0:
            body = self._rbuf[:end].rstrip(newlines)
            rest = self._rbuf[end + len(closing) :]
            if body:
                out.append(ReasoningDelta(body))
            out.append(ReasoningEnd())
            self._think, self._rbuf = "no", ""
            return out, rest
        keep = partial_suffix(self._rbuf, (closing,))
        ready = self._rbuf if final else self._rbuf[: len(self._rbuf) - keep]
        body = ready if final else ready.rstrip(newlines)  # newlines before </think> are its
        if body:
            self._r_started = True
            out.append(ReasoningDelta(body))
            self._rbuf = self._rbuf[len(body) :]
        if final:
            out.append(ReasoningEnd(complete=False))
            self._think, self._rbuf = "no", ""
        return out, ""

    def _run(self, final: bool) -> list[Segment]:
        out: list[Segment] = []
        fam = self._family
        while True:
            if self._reader is not None:
                try:
                    segments, end = self._reader.advance(self._buf, final)
                except NotACall:
                    self._reader = None
                    text, self._buf, self._gap = self._gap + self._buf, "", ""
                    out.extend(self._text(text))
                    if final:
                        return out
                    continue
                if segments:
                    self._gap = ""
                out.extend(segments)
                if end is None:
                    if final:
                        self._reader = None
                        self._buf = ""
                    return out
                self._reader = None
                self._buf = self._buf[end:]
                self._after_call = True
                if fam.continuation and self._buf.lstrip().startswith(fam.continuation):
                    self._reader = fam.reader(self._tools)
                    continue
                if final or not self._buf:
                    return out
                continue
            at = self._marker()
            if at is not None:
                before = self._buf[:at]
                body = before.rstrip() if before.strip() else ""
                out.extend(self._text(body) if body else [])
                self._gap = before[len(body) :]
                self._buf = self._buf[at:]
                self._reader = fam.reader(self._tools)
                continue
            if final:
                return out
            keep = self._undecided_suffix()
            ready = self._buf[: len(self._buf) - keep]
            body = ready.rstrip()
            if body.strip() or (self._text_started and body and not self._after_call):
                out.extend(self._text(body))
                self._buf = self._buf[len(body) :]
            return out

    def _marker(self) -> int | None:
        fam = self._family
        if fam.calls_open_message_only:
            if self._text_started or self._after_call:
                return None
            stripped = self._buf.lstrip()
            if any(stripped.startswith(m) for m in fam.markers):
                return len(self._buf) - len(stripped)
            return None
        found = [i for i in (self._buf.find(m) for m in fam.markers) if i >= 0]
        return min(found) if found else None

    def _undecided_suffix(self) -> int:
        """Length of the longest suffix of the buffer that may still become a marker."""
        fam = self._family
        if fam.calls_open_message_only:
            if self._text_started or self._after_call:
                return 0
            stripped = self._buf.lstrip()
            if any(m.startswith(stripped) for m in fam.markers):
                return len(self._buf)
            return 0
        return partial_suffix(self._buf, fam.markers)

    def _text(self, text: str) -> list[Segment]:
        if not self._text_started:
            text = text.lstrip()
        if not text:
            return []
        self._text_started = True
        self._after_call = False
        return [TextDelta(text)]


class JsonScan:
    """Where a JSON value that starts at some offset ends, read incrementally."""

    def __init__(self, start: int) -> None:
        self.pos = start
        self.begin: int | None = None  # first character of the value
        self._depth = 0
        self._in_string = False
        self._escape = False

    def scan(self, buf: str) -> int | None:
        """The end (exclusive) of the value, or None while it is incomplete."""
        while self.pos < len(buf):
            c = buf[self.pos]
            self.pos += 1
            if self.begin is None:
                if c.isspace():
                    continue
                self.begin = self.pos - 1
                if c in "{[":
                    self._depth = 1
                elif c == '"':
                    self._in_string = True
                else:  # a bare literal: it ends before a delimiter
                    self._depth = 0
                continue
            if self._in_string:
                if self._escape:
                    self._escape = False
                elif c == "\\":
                    self._escape = True
                elif c == '"':
                    self._in_string = False
                    if self._depth == 0:
                        return self.pos
                continue
            if self._depth == 0:  # inside a bare literal
                if c in ",}] \n\t\r":
                    self.pos -= 1
                    return self.pos
                continue
            if c == '"':
                self._in_string = True
            elif c in "{[":
                self._depth += 1
            elif c in "}]":
                self._depth -= 1
                if self._depth == 0:
                    return self.pos
        return None


class JsonCallReader(CallReader):
    """A call written as a head (matched by `family.head`, which names the tool), JSON
    arguments, and a tail (`family.tail`). The arguments stream as they arrive unless
    the call's id comes after them (Mistral Nemo): then the call is told whole."""

    HEAD_MAX = 512  # characters after a marker within which the head must match
    TAIL_MAX = 64

    def __init__(self, family: JsonCallFamily, tools: Mapping[str, FunctionTool]) -> None:
        self._f = family
        self._names = tools
        self._name: str | None = None
        self._id: str | None = None
        self._scan: JsonScan | None = None
        self._emitted = 0
        self._args_end: int | None = None

    def advance(self, buf: str, final: bool) -> tuple[list[Segment], int | None]:
        f = self._f
        out: list[Segment] = []
        if self._scan is None:
            m = f.head.match(buf)
            if m is None:
                if final or len(buf) > self.HEAD_MAX:
                    raise NotACall
                return out, None
            name = m.group("name")
            if name not in self._names:
                raise NotACall
            self._name = name
            self._id = m.groupdict().get("id")
            self._scan = JsonScan(m.end())
            self._emitted = m.end()
            if not f.id_after_args:
                out.append(CallStart(name, self._id))
        assert self._name is not None
        if self._args_end is None:
            self._args_end = self._scan.scan(buf)
            upto = self._args_end if self._args_end is not None else len(buf)
            begin = self._scan.begin
            if begin is not None and not f.id_after_args and upto > max(begin, self._emitted):
                out.append(ArgsDelta(buf[max(begin, self._emitted) : upto]))
                self._emitted = upto
            if self._args_end is None:
                if final:
                    return self._end(out, buf, len(buf), complete=False)
                return out, None
        # Whitespace after the value is the arguments' own: llama.cpp's JSON grammars
        # allow it there, and the template writes the arguments back before the tail.
        after = len(buf) - len(buf[self._args_end :].lstrip())
        if after == len(buf) and not final:
            return out, None
        if after > self._args_end and f.space_after_args_is_theirs:
            if not f.id_after_args:
                out.append(ArgsDelta(buf[self._args_end : after]))
            self._args_end = after
        m = f.tail.match(buf, self._args_end)
        if m is not None:
            self._id = m.groupdict().get("id") or self._id
            return self._end(out, buf, m.end(), complete=True)
        if final:  # the output ended before the call's closing: it was cut off
            return self._end(out, buf, len(buf), complete=False)
        if len(buf) - self._args_end > self.TAIL_MAX:  # no closing: the call ends here
            return self._end(out, buf, self._args_end, complete=True)
        return out, None

    def _end(
        self, out: list[Segment], buf: str, end: int, *, complete: bool
    ) -> tuple[list[Segment], int]:
        assert self._scan is not None and self._name is not None
        begin = self._scan.begin
        stop = self._args_end if self._args_end is not None else len(buf)
        args = buf[begin:stop] if begin is not None else ""
        if self._f.id_after_args:
            out += (
                [CallStart(self._name, self._id), ArgsDelta(args)]
                if args
                else [CallStart(self._name, self._id)]
            )
        out.append(CallEnd.of(args, complete))
        return out, end


# ----- the families -------------------------------------------------------------------
class Family:
    """The generic base: OpenAI chat messages with native `tool_calls`, `tool`
    messages with `tool_call_id` and `name`, and `tools` in the function shape."""

    name: ClassVar[str] = "base"
    # Text that opens a call: the parser's marker and the lazy grammar's trigger.
    markers: ClassVar[tuple[str, ...]] = ()
    # Calls only open the message (Llama 3): text first means no call follows.
    calls_open_message_only: ClassVar[bool] = False
    # After one call, text that continues the same block of calls (Mistral Nemo).
    continuation: ClassVar[str | None] = None
    # Whether the template renders several calls in one assistant turn.
    parallel: ClassVar[bool] = True
    # How the model marks its reasoning (when its template mentions the closing tag).
    think_tags: ClassVar[tuple[str, str]] = (THINK_OPEN, THINK_CLOSE)
    # Newlines the tags bring with them: not part of the reasoning's text.
    think_newlines: ClassVar[str] = "\n"

    @property
    def reasoning_markup(self) -> tuple[str, ...]:
        """What surrounds a turn's reasoning in the output (--reasoning-history keep)."""
        return self.think_tags

    def __init__(self, template: str = "") -> None:
        # The model reasons in <think>…</think> first (Qwen3, QwQ, DeepSeek R1, …).
        self.thinks = self.think_tags[1] in template

    @classmethod
    def detect(cls, template: str) -> bool:
        return False

    # ----- rendering --------------------------------------------------------------------
    def system(self, instructions: str | None, tools: Sequence[FunctionTool]) -> str | None:
        return instructions or None

    def template_tools(self, tools: Sequence[FunctionTool]) -> list[dict[str, Any]] | None:
        if not tools:
            return None
        return [
            {
                "type": "function",
                "function": {
                    "name": t.qualified,
                    "description": t.description,
                    "parameters": t.parameters,
                },
            }
            for t in tools
        ]

    def call_id(self, call_id: str) -> str:
        """The id a template sees for a call (some want their own shape)."""
        return call_id

    def reasoning_turn(self, text: str) -> dict[str, Any]:
        """An assistant turn that starts with reasoning, under the names templates read."""
        return {"role": "assistant", "content": "", "reasoning_content": text, "thinking": text}

    def arguments(self, item: FunctionCallItem) -> Any:
        return RawArgs(item.arguments)

    def messages(self, system: str | None, items: Sequence[Item]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if system:
            out.append({"role": "system", "content": system})
        names: dict[str, str] = {}
        turn: dict[str, Any] | None = None  # the assistant message calls join
        for item in items:
            if isinstance(item, ReasoningItem):  # it opens the assistant's turn
                turn = self.reasoning_turn(item.text)
                out.append(turn)
                continue
            if isinstance(item, FunctionCallItem):
                names[item.call_id] = item.qualified
                if turn is None:
                    turn = {"role": "assistant", "content": ""}
                    out.append(turn)
                turn.setdefault("tool_calls", []).append(
                    {
                        "id": self.call_id(item.call_id),
                        "type": "function",
                        "function": {"name": item.qualified, "arguments": self.arguments(item)},
                    }
                )
                continue
            if isinstance(item, MessageItem) and item.role == "assistant":
                if turn is not None and not turn["content"] and "tool_calls" not in turn:
                    turn["content"] = item.text  # the answer after the reasoning
                    continue
                turn = {"role": "assistant", "content": item.text}
                out.append(turn)
                continue
            turn = None
            if isinstance(item, MessageItem):
                role = "system" if item.role == "developer" else item.role
                out.append({"role": role, "content": item.text})
            elif isinstance(item, FunctionCallOutputItem):
                out.append(
                    {
                        "role": "tool",
                        "content": item.output,
                        "tool_call_id": self.call_id(item.call_id),
                        "name": names.get(item.call_id, ""),
                    }
                )
            elif isinstance(item, CompactionItem):
                out.append({"role": "system", "content": SUMMARY_HEADER + item.summary})
        return out

    # ----- output -----------------------------------------------------------------------
    def reader(self, tools: Mapping[str, FunctionTool]) -> CallReader:
        raise NotImplementedError

    def parser(self, tools: Sequence[FunctionTool], prompt: str = "") -> CallParser:
        """A parser for one response; `prompt` is its prompt text (a template may open
        the reasoning itself, ending the prompt with <think>)."""
        if not self.thinks:
            state = "no"
        elif prompt.rstrip().endswith(self.think_tags[0]):
            state = "in"
        else:
            state = "start"
        return CallParser(self, tools, reasoning=state)

    def trigger(self) -> str:
        """The lazy grammar's pattern: it must match the whole text generated so far;
        group 1 is where the constrained part starts."""
        alts = "|".join(re.escape(m) for m in self.markers)
        if self.calls_open_message_only:
            return r"\s*(" + alts + r")[\s\S]*"
        return r"[\s\S]*?(" + alts + r")[\s\S]*"

    def grammar(
        self,
        tools: Sequence[FunctionTool],
        *,
        parallel: bool,
        schema: SchemaGrammar,
        forced: bool = False,
    ) -> str:
        """GBNF (root `root`) for one call, or up to MAX_PARALLEL_CALLS, of `tools`."""
        raise NotImplementedError


class JsonCallFamily(Family):
    """Calls whose arguments are one JSON object between a head naming the tool and a
    tail; a block of calls may have an opening and a closing and a separator."""

    head: ClassVar[re.Pattern[str]]
    tail: ClassVar[re.Pattern[str]]
    id_after_args: ClassVar[bool] = False
    # whitespace after the arguments belongs to them (the template writes the arguments
    # and then the tail), unless the tail itself starts with whitespace (then `tail`
    # matches it)
    space_after_args_is_theirs: ClassVar[bool] = True
    block_open: ClassVar[str] = ""
    block_close: ClassVar[str] = ""
    separator: ClassVar[str] = "\n"

    def reader(self, tools: Mapping[str, FunctionTool]) -> CallReader:
        return JsonCallReader(self, tools)

    def call_rule(self, name: str, args_rule: str) -> str:
        """GBNF for one call of `name` whose arguments are `args_rule`."""
        raise NotImplementedError

    def grammar(
        self,
        tools: Sequence[FunctionTool],
        *,
        parallel: bool,
        schema: SchemaGrammar,
        forced: bool = False,
    ) -> str:
        rules: list[str] = []
        alternatives: list[str] = []
        for k, tool in enumerate(tools):
            prefix = f"t{k}"
            rules.append(prefix_rules(schema(tool.parameters, tool.param), prefix))
            alternatives.append(self.call_rule(tool.qualified, f"{prefix}-root"))
        more = ""
        if parallel and self.parallel:
            sep = f"{literal(self.separator)} " if self.separator else ""
            more = f" ( {sep}call ){{0,{MAX_PARALLEL_CALLS - 1}}}"
        root = "root ::= "
        root += f"{literal(self.block_open)} " if self.block_open else ""
        root += f"call{more}"
        root += f" {literal(self.block_close)}" if self.block_close else ""
        return "\n".join([root, "call ::= " + " | ".join(alternatives), *rules])
