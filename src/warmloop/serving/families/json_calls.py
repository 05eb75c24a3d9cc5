"""Calls whose arguments are one JSON object between a head that names the tool and a
tail (Hermes, Llama 3, Mistral, DeepSeek, Granite, harmony's messages): where the JSON
value ends, read incrementally, and the reader of one such call."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Protocol

from warmloop.protocol.tools import FunctionTool
from warmloop.serving.families.parsing import (
    ArgsDelta,
    CallEnd,
    CallReader,
    CallStart,
    NotACall,
    Segment,
)


class JsonCallSyntax(Protocol):
    """What `JsonCallReader` needs of a family (`base.JsonCallFamily` provides it)."""

    @property
    def head(self) -> re.Pattern[str]: ...
    @property
    def tail(self) -> re.Pattern[str]: ...
    @property
    def id_after_args(self) -> bool: ...
    @property
    def space_after_args_is_theirs(self) -> bool: ...


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

    def __init__(self, family: JsonCallSyntax, tools: Mapping[str, FunctionTool]) -> None:
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
