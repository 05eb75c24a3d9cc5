"""Responses stream events: one small function per event kind, plus the sequencer.

Events are plain JSON-ready dicts in the exact shapes of `openai.types.responses`
(unit tests validate every builder against the SDK's `ResponseStreamEvent`). SSE and
WebSocket carry the same dicts.
"""

from __future__ import annotations

from typing import Any

Event = dict[str, Any]


class Sequencer:
    """Numbers the events of one response: `sequence_number` strictly increases from 0."""

    def __init__(self) -> None:
        self._next = 0

    def __call__(self, event: Event) -> Event:
        event["sequence_number"] = self._next
        self._next += 1
        return event


def usage(
    input_tokens: int, cached_tokens: int, output_tokens: int, reasoning_tokens: int = 0
) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {
            "cached_tokens": cached_tokens,
            "cache_write_tokens": input_tokens - cached_tokens,
        },
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
        "total_tokens": input_tokens + output_tokens,
    }


def response_lifecycle(kind: str, response: dict[str, Any]) -> Event:
    """created | in_progress | completed | incomplete | failed | cancelled-as-incomplete."""
    return {"type": f"response.{kind}", "response": response}


def message_added(output_index: int, item_id: str) -> Event:
    return {
        "type": "response.output_item.added",
        "output_index": output_index,
        "item": {
            "type": "message",
            "id": item_id,
            "role": "assistant",
            "status": "in_progress",
            "content": [],
        },
    }


def content_part_added(output_index: int, item_id: str) -> Event:
    return {
        "type": "response.content_part.added",
        "output_index": output_index,
        "item_id": item_id,
        "content_index": 0,
        "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []},
    }


def text_delta(output_index: int, item_id: str, delta: str) -> Event:
    return {
        "type": "response.output_text.delta",
        "output_index": output_index,
        "item_id": item_id,
        "content_index": 0,
        "delta": delta,
        "logprobs": [],
    }


def text_done(output_index: int, item_id: str, text: str) -> Event:
    return {
        "type": "response.output_text.done",
        "output_index": output_index,
        "item_id": item_id,
        "content_index": 0,
        "text": text,
        "logprobs": [],
    }


def content_part_done(output_index: int, item_id: str, text: str) -> Event:
    return {
        "type": "response.content_part.done",
        "output_index": output_index,
        "item_id": item_id,
        "content_index": 0,
        "part": {"type": "output_text", "text": text, "annotations": [], "logprobs": []},
    }


def output_item_done(output_index: int, item: dict[str, Any]) -> Event:
    return {"type": "response.output_item.done", "output_index": output_index, "item": item}


def function_call_added(output_index: int, item_id: str, call_id: str, name: str) -> Event:
    return {
        "type": "response.output_item.added",
        "output_index": output_index,
        "item": {
            "type": "function_call",
            "id": item_id,
            "call_id": call_id,
            "name": name,
            "arguments": "",
            "status": "in_progress",
        },
    }


def function_args_delta(output_index: int, item_id: str, delta: str) -> Event:
    return {
        "type": "response.function_call_arguments.delta",
        "output_index": output_index,
        "item_id": item_id,
        "delta": delta,
    }


def function_args_done(output_index: int, item_id: str, name: str, arguments: str) -> Event:
    return {
        "type": "response.function_call_arguments.done",
        "output_index": output_index,
        "item_id": item_id,
        "name": name,
        "arguments": arguments,
    }


def compaction_added(output_index: int, item_id: str) -> Event:
    """context_management: the summary has begun (its content comes with the done event)."""
    return {
        "type": "response.output_item.added",
        "output_index": output_index,
        "item": {"type": "compaction", "id": item_id, "encrypted_content": ""},
    }


def compaction_compacting(output_index: int, item_id: str) -> Event:
    """More of the summary was sampled (the event carries none of it)."""
    return {
        "type": "response.compaction.compacting",
        "output_index": output_index,
        "item_id": item_id,
    }


def reasoning_added(output_index: int, item_id: str) -> Event:
    return {
        "type": "response.output_item.added",
        "output_index": output_index,
        "item": {
            "type": "reasoning",
            "id": item_id,
            "summary": [],
            "content": [],
            "status": "in_progress",
        },
    }


def reasoning_delta(output_index: int, item_id: str, delta: str) -> Event:
    return {
        "type": "response.reasoning_text.delta",
        "output_index": output_index,
        "item_id": item_id,
        "content_index": 0,
        "delta": delta,
    }


def reasoning_done(output_index: int, item_id: str, text: str) -> Event:
    return {
        "type": "response.reasoning_text.done",
        "output_index": output_index,
        "item_id": item_id,
        "content_index": 0,
        "text": text,
    }


def output_item_added(output_index: int, item: dict[str, Any]) -> Event:
    return {"type": "response.output_item.added", "output_index": output_index, "item": item}


def custom_input_delta(output_index: int, item_id: str, delta: str) -> Event:
    return {
        "type": "response.custom_tool_call_input.delta",
        "output_index": output_index,
        "item_id": item_id,
        "delta": delta,
    }


def custom_input_done(output_index: int, item_id: str, text: str) -> Event:
    return {
        "type": "response.custom_tool_call_input.done",
        "output_index": output_index,
        "item_id": item_id,
        "input": text,
    }
