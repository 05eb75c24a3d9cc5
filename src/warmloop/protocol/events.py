"""Names of Responses stream events that servers and clients both need."""

from __future__ import annotations

# The events that end a response's stream (a `cancelled` response ends "incomplete").
TERMINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})
