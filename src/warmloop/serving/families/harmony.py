"""gpt-oss: OpenAI's harmony format. The output is a run of messages, each a header, a
body and a terminator:

    <|channel|>analysis<|message|>…reasoning…<|end|>
    <|start|>assistant to=functions.NAME<|channel|>commentary json<|message|>{…}<|call|>
    <|start|>assistant<|channel|>final<|message|>…answer…<|return|>

The analysis channel is reasoning, a message to `functions.NAME` (named in the role
header, as the template writes it, or in the channel header, as the model also does)
is a call, anything else is text. `<|call|>` and `<|return|>` end generation, so they
never reach the parser. The template renders one call per assistant turn and the
reasoning before it (until a final answer follows, when it drops it): the grammar makes
the model write the template's form, so a tool loop's next turn is a delta.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import ClassVar

from warmloop.protocol.tools import FunctionTool
from warmloop.serving.families.base import Family, SchemaGrammar
from warmloop.serving.families.parsing import (
    ArgsDelta,
    CallEnd,
    CallParser,
    CallReader,
    CallStart,
    ReasoningDelta,
    ReasoningEnd,
    Segment,
    partial_suffix,
)
from warmloop.serving.gbnf import literal, prefix_rules

MESSAGE, END, CALL, RETURN, START = "<|message|>", "<|end|>", "<|call|>", "<|return|>", "<|start|>"
TERMINATORS = (END, CALL, RETURN)
_CHANNEL = re.compile(r"<\|channel\|>\s*(\w+)")
_RECIPIENT = re.compile(r"to=functions\.([^\s<]+)")


class HarmonyParser(CallParser):
    """Harmony's messages → reasoning, text and call segments."""

    HEADER_MAX = 256

    def __init__(self, family: Family, tools: Sequence[FunctionTool]) -> None:
        super().__init__(family, tools)
        self._hbuf = ""  # the header being read, or the body's undecided tail
        self._body: str | None = None  # "reasoning" | "text" | "call" while in a body
        self._args = ""

    @property
    def in_reasoning(self) -> bool:
        return self._body == "reasoning"

    def feed(self, text: str) -> list[Segment]:
        self._hbuf += text
        return self._step(final=False)

    def finish(self) -> list[Segment]:
        out = self._step(final=True)
        if self._body is not None:
            out += self._close(complete=False)
        elif self._hbuf.strip():  # a header with no body: say it as text
            out += self._say(self._hbuf)
        self._hbuf = ""
        return out

    def _step(self, final: bool) -> list[Segment]:
        out: list[Segment] = []
        while True:
            if self._body is None:
                at = self._hbuf.find(MESSAGE)
                if at < 0:
                    if len(self._hbuf) > self.HEADER_MAX:  # no header: it is plain text
                        out += self._say(self._hbuf)
                        self._hbuf = ""
                    return out
                header, self._hbuf = self._hbuf[:at], self._hbuf[at + len(MESSAGE) :]
                out += self._open(header)
                continue
            ends = [(i, t) for t in TERMINATORS if (i := self._hbuf.find(t)) >= 0]
            if ends:
                i, term = min(ends)
                out += self._deliver(self._hbuf[:i])
                self._hbuf = self._hbuf[i + len(term) :]
                out += self._close(complete=True)
                if self._hbuf.startswith(START):
                    self._hbuf = self._hbuf[len(START) :]
                continue
            keep = 0 if final else partial_suffix(self._hbuf, TERMINATORS)
            ready = self._hbuf[: len(self._hbuf) - keep]
            out += self._deliver(ready)
            self._hbuf = self._hbuf[len(ready) :]
            return out

    def _open(self, header: str) -> list[Segment]:
        recipient = _RECIPIENT.search(header)
        channel = _CHANNEL.search(header)
        if recipient is not None and recipient.group(1) in self._tools:
            self._body, self._args = "call", ""
            return [CallStart(recipient.group(1))]
        if channel is not None and channel.group(1) == "analysis":
            self._body = "reasoning"
        else:
            self._body = "text"
        return []

    def _deliver(self, text: str) -> list[Segment]:
        if not text:
            return []
        if self._body == "call":
            self._args += text
            return [ArgsDelta(text)]
        if self._body == "reasoning":
            return [ReasoningDelta(text)]
        return self._say(text)

    def _close(self, *, complete: bool) -> list[Segment]:
        body, self._body = self._body, None
        if body == "call":
            return [CallEnd.of(self._args, complete)]
        if body == "reasoning":
            return [ReasoningEnd(complete)]
        return []

    def _say(self, text: str) -> list[Segment]:
        return self._text(text)


class Harmony(Family):
    name = "harmony"
    markers = (" to=functions.",)
    parallel = False  # the template renders one call per assistant turn
    head: ClassVar[str] = " to=functions."

    def __init__(self, template: str = "") -> None:
        super().__init__(template)
        self.thinks = False  # its reasoning is a channel, not <think>

    @classmethod
    def detect(cls, template: str) -> bool:
        return "<|channel|>" in template and "<|message|>" in template

    @property
    def reasoning_markup(self) -> tuple[str, ...]:
        return ("<|start|>assistant", "<|channel|>analysis", MESSAGE, END)

    def parser(self, tools: Sequence[FunctionTool], prompt: str = "") -> CallParser:
        return HarmonyParser(self, tools)

    def reader(self, tools: Mapping[str, FunctionTool]) -> CallReader:
        raise NotImplementedError("harmony's parser reads whole messages")

    def trigger(self) -> str:
        return r"[\s\S]*?(" + re.escape(self.head) + r")[\s\S]*"

    def grammar(
        self,
        tools: Sequence[FunctionTool],
        *,
        parallel: bool,
        schema: SchemaGrammar,
        forced: bool = False,
    ) -> str:
        """One call in the template's form, right after the prompt's `<|start|>assistant`:
        ` to=functions.NAME<|channel|>commentary json<|message|>{…}` (a forced call does
        not reason first: harmony allows a call as the turn's first message). From the
        lazy trigger on, the channel-header form the model also writes is allowed too."""
        rules: list[str] = []
        alternatives: list[str] = []
        for k, tool in enumerate(tools):
            rules.append(prefix_rules(schema(tool.parameters, tool.param), f"t{k}"))
            alternatives.append(f"{literal(tool.qualified)} header t{k}-root")
        return "\n".join(
            [
                "root ::= call",
                f"call ::= {literal(self.head)} ( {' | '.join(alternatives)} )",
                'header ::= "<|channel|>commentary json<|message|>" '
                '| " " "<|constrain|>"? "json<|message|>"',
                *rules,
            ]
        )
