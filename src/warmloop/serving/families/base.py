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

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

from warmloop.protocol.items import (
    CompactionItem,
    FunctionCallItem,
    FunctionCallOutputItem,
    Item,
    MessageItem,
    ReasoningItem,
)
from warmloop.protocol.tools import FunctionTool
from warmloop.serving.chat_template import RawArgs
from warmloop.serving.families.json_calls import JsonCallReader
from warmloop.serving.families.parsing import THINK_CLOSE, THINK_OPEN, CallParser, CallReader
from warmloop.serving.gbnf import literal, prefix_rules

MAX_PARALLEL_CALLS = 8
SUMMARY_HEADER = "Summary of the conversation so far:\n"

# (JSON schema, where it is in the request) -> GBNF whose root is that schema's value;
# raises the client's InvalidRequest when the schema cannot be converted.
SchemaGrammar = Callable[[dict[str, Any], str], str]


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
