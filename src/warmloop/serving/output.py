"""What a response looks like on the wire: the `response` object, and the builder that
turns the parser's text and tool-call segments into output items and their stream
events (numbered by the caller's `Sequencer`). The event shapes are event_builder.py's.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import replace
from typing import Any

from warmloop.protocol import tool_kinds
from warmloop.protocol.errors import ServerError, StoreUnavailable
from warmloop.protocol.events import TERMINAL_EVENTS
from warmloop.protocol.items import (
    FunctionCallItem,
    Item,
    MessageItem,
    ReasoningItem,
    item_to_wire,
    new_id,
)
from warmloop.serving import event_builder as ev
from warmloop.serving.families import (
    ArgsDelta,
    CallEnd,
    CallParser,
    CallStart,
    ReasoningDelta,
    ReasoningEnd,
    Segment,
    TextDelta,
)
from warmloop.serving.prepared import Prepared

ECHOED_TOOL_TYPES = ("function", "namespace", *tool_kinds.KINDS)  # not hosted ones


def response_object(
    p: Prepared,
    model_id: str,
    status: str,
    output: list[dict[str, Any]],
    *,
    usage: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
    incomplete_reason: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The Responses API `response` object of `p` in `status`, as the client sees it."""
    body = p.request.body
    obj: dict[str, Any] = {
        "id": p.id,
        "object": "response",
        "created_at": int(p.created_at),
        "status": status,
        "background": body.background is True,
        "error": error,
        "incomplete_details": {"reason": incomplete_reason} if incomplete_reason else None,
        "instructions": body.instructions,
        "max_output_tokens": body.max_output_tokens,
        "max_tool_calls": body.max_tool_calls,
        "model": model_id,
        "output": output,
        "parallel_tool_calls": body.parallel_tool_calls is not False,
        "previous_response_id": body.previous_response_id,
        "conversation": {"id": p.conversation.id} if p.conversation else None,
        "prompt_cache_key": body.prompt_cache_key,
        "prompt_cache_retention": p.retention,
        "reasoning": {
            "effort": (body.reasoning or {}).get("effort"),
            "summary": (body.reasoning or {}).get("summary"),
        },
        "safety_identifier": body.safety_identifier,
        "service_tier": "default",
        "store": p.request.store,
        "temperature": p.params.temperature,
        "text": {"format": (body.text or {}).get("format") or {"type": "text"}},
        "tool_choice": body.tool_choice if body.tool_choice is not None else "auto",
        "tools": [t for t in body.tools or [] if t.get("type") in ECHOED_TOOL_TYPES],
        "top_p": p.params.top_p,
        "truncation": body.truncation or "disabled",
        "usage": usage,
        "user": body.user,
        "metadata": body.metadata or {},
    }
    if status in ("completed", "incomplete", "failed", "cancelled"):
        obj["completed_at"] = int(time.time())
    if extra:
        obj["warmloop"] = extra
    return obj


class OutputBuilder:
    """Turns parser segments into output items and their stream events."""

    def __init__(
        self,
        seq: ev.Sequencer,
        parser: CallParser,
        namespaced: set[str],
        seal: Callable[[str], str] | None = None,
        kinds: dict[str, str] | None = None,
    ) -> None:
        self.seq = seq
        self.kinds = kinds or {}  # qualified name -> a client-run kind (not "function")
        self.seal = seal  # include reasoning.encrypted_content: seals a reasoning text
        self.reasoning_tokens = 0  # feeds that were reasoning (one per sampled token)
        self._reasoning: list[str] | None = None  # the reasoning item's text, while open
        self._reasoning_id = ""
        self.parser = parser
        self.namespaced = namespaced  # qualified names of tools that live in a namespace
        self.items: list[Item] = []
        self._msg_id: str | None = None
        self._msg_text: list[str] = []
        self._call: FunctionCallItem | None = None  # the call whose arguments stream
        self._broken: set[str] = set()  # ids of calls the output ended inside

    def feed(self, text: str) -> list[ev.Event]:
        thinking = self.parser.in_reasoning
        segments = self.parser.feed(text)
        if thinking or any(isinstance(s, ReasoningDelta) for s in segments):
            self.reasoning_tokens += 1
        return self._segments(segments)

    def finish(self) -> list[ev.Event]:
        return self._segments(self.parser.finish()) + self._close_message()

    def add(self, item: Item) -> ev.Event:
        """A finished item made elsewhere (a compaction's summary): its done event."""
        self.items.append(item)
        return self.seq(ev.output_item_done(len(self.items) - 1, item_to_wire(item)))

    def items_wire(self) -> list[dict[str, Any]]:
        return [self._wire(i) for i in self.items]

    def _wire(self, item: Item) -> dict[str, Any]:
        wire = item_to_wire(item)
        if item.id in self._broken and "status" in wire:
            wire["status"] = "in_progress" if wire["type"] == "apply_patch_call" else "incomplete"
        if isinstance(item, ReasoningItem) and self.seal is not None:
            wire["encrypted_content"] = self.seal(item.text)
        return wire

    def _segments(self, segments: list[Segment]) -> list[ev.Event]:
        events: list[ev.Event] = []
        for s in segments:
            if isinstance(s, TextDelta):
                if self._msg_id is None:
                    self._msg_id = new_id("msg")
                    index = len(self.items)
                    events.append(self.seq(ev.message_added(index, self._msg_id)))
                    events.append(self.seq(ev.content_part_added(index, self._msg_id)))
                self._msg_text.append(s.text)
                events.append(self.seq(ev.text_delta(len(self.items), self._msg_id, s.text)))
            elif isinstance(s, CallStart):
                events.extend(self._close_message())
                ns, _, name = (
                    s.name.rpartition(".") if s.name in self.namespaced else ("", "", s.name)
                )
                kind = self.kinds.get(s.name, "function")
                # a local_shell output names its call by the call's id: one id for both
                item_id = new_id("lsh" if kind == "local_shell" else "fc")
                call_id = item_id if kind == "local_shell" else s.call_id or new_id("call")
                call = FunctionCallItem(item_id, call_id, name, "", ns or None, kind)
                self._call = call
                index = len(self.items)
                if kind == "function":
                    added = ev.function_call_added(index, call.id, call.call_id, name)
                else:
                    wire = tool_kinds.call_wire(kind, call.id, call_id, name, "{}", "in_progress")
                    added = ev.output_item_added(index, wire)
                events.append(self.seq(added))
            elif isinstance(s, ReasoningDelta):
                if self._reasoning is None:
                    self._reasoning, self._reasoning_id = [], new_id("rs")
                    events.append(self.seq(ev.reasoning_added(len(self.items), self._reasoning_id)))
                self._reasoning.append(s.text)
                delta = ev.reasoning_delta(len(self.items), self._reasoning_id, s.text)
                events.append(self.seq(delta))
            elif isinstance(s, ReasoningEnd):
                events.extend(self._end_reasoning(s))
            elif isinstance(s, ArgsDelta):
                assert self._call is not None
                if self._call.kind != "function":  # its item shape is told whole at the end
                    continue
                events.append(
                    self.seq(ev.function_args_delta(len(self.items), self._call.id, s.text))
                )
            elif isinstance(s, CallEnd):
                events.extend(self._end_call(s))
        return events

    def _end_reasoning(self, end: ReasoningEnd) -> list[ev.Event]:
        if self._reasoning is None:  # <think></think>: nothing was reasoned
            return []
        index = len(self.items)
        item = ReasoningItem(self._reasoning_id, "".join(self._reasoning))
        self._reasoning = None
        self.items.append(item)
        if not end.complete:
            self._broken.add(item.id)
        return [
            self.seq(ev.reasoning_done(index, item.id, item.text)),
            self.seq(ev.output_item_done(index, self._wire(item))),
        ]

    def _end_call(self, end: CallEnd) -> list[ev.Event]:
        assert self._call is not None
        index = len(self.items)
        item = replace(self._call, arguments=end.arguments)
        self._call = None
        self.items.append(item)
        if not end.complete:  # the output ended inside the call
            self._broken.add(item.id)
        wire = self._wire(item)
        done = ev.output_item_done(index, wire)
        if item.kind == "function":
            args = ev.function_args_done(index, item.id, item.name, item.arguments)
            return [self.seq(args), self.seq(done)]
        if item.kind == "custom":
            text = wire["input"]
            delta = ev.custom_input_delta(index, item.id, text)
            return [
                *([self.seq(delta)] if text else []),
                self.seq(ev.custom_input_done(index, item.id, text)),
                self.seq(done),
            ]
        return [self.seq(done)]

    def _close_message(self) -> list[ev.Event]:
        if self._msg_id is None:
            return []
        index = len(self.items)
        text = "".join(self._msg_text)
        item = MessageItem(self._msg_id, "assistant", text)
        self.items.append(item)
        self._msg_id = None
        self._msg_text = []
        return [
            self.seq(ev.text_done(index, item.id, text)),
            self.seq(ev.content_part_done(index, item.id, text)),
            self.seq(ev.output_item_done(index, item_to_wire(item))),
        ]


async def collect(events: AsyncGenerator[ev.Event]) -> dict[str, Any]:
    """Run to the end and return the final response object (non-streaming). A
    response that failed on the server's side is an error in OpenAI's shape."""
    final: dict[str, Any] | None = None
    async with contextlib.aclosing(events) as stream:
        async for event in stream:
            if event["type"] in TERMINAL_EVENTS:
                final = event["response"]
    assert final is not None
    error = final.get("error")
    if final["status"] == "failed" and error is not None:
        if error.get("code") == StoreUnavailable.code:
            raise StoreUnavailable(error["message"])
        raise ServerError(error["message"])
    return final
