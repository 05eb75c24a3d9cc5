"""Names of Responses stream events, and reading a response object, that servers and
clients both need."""

from __future__ import annotations

from typing import Any

# The events that end a response's stream (a `cancelled` response ends "incomplete").
TERMINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})


def output_text(response: dict[str, Any]) -> str:
    """The text of a wire `response` object's output messages, joined."""
    return "".join(
        part.get("text", "")
        for item in response.get("output", [])
        if item.get("type") == "message"
        for part in item.get("content", [])
    )
