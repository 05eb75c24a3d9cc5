"""What a family's output becomes while it streams: the segments a parser yields (text,
a call's start, its arguments as they arrive, its end, reasoning), `CallParser` (the
state machine over token text: reasoning first, then text and calls, with text that
may still become a marker held back), and the readers of one call (`JsonCallReader`
for calls whose arguments are JSON)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from warmloop.protocol.tools import FunctionTool


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


class PairwiseReader(CallReader):
    """A reader that builds the arguments' JSON object one whole parameter at a time
    (Qwen3-Coder's tagged pairs, Gemma's notation): the deltas are what its text grew
    by, the closing brace only at the end."""

    _sent = ""

    def _text(self) -> str:
        """The arguments read so far, as JSON."""
        raise NotImplementedError

    def _delta(self, *, closed: bool) -> list[Segment]:
        text = self._text()
        upto = text if closed else text[:-1]
        new = upto[len(self._sent) :]
        self._sent = upto
        return [ArgsDelta(new)] if new else []


class Syntax(Protocol):
    """What the parser needs of a family (`base.Family` provides it)."""

    @property
    def markers(self) -> tuple[str, ...]: ...  # text that opens a call
    @property
    def calls_open_message_only(self) -> bool: ...
    @property
    def continuation(self) -> str | None: ...
    @property
    def think_tags(self) -> tuple[str, str]: ...
    @property
    def think_newlines(self) -> str: ...

    def reader(self, tools: Mapping[str, FunctionTool]) -> CallReader: ...


class CallParser:
    """Incremental split of generated text into text deltas and tool-call segments.

    Text that could be the start of a call marker is held back until it is decided,
    and so is trailing whitespace (dropped before a call: the template writes its own
    separator there; kept before more text or at the end). Whitespace between calls is
    dropped, so an answer of calls only has no message."""

    def __init__(
        self, family: Syntax, tools: Sequence[FunctionTool], *, reasoning: str = "no"
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
