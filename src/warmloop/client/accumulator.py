"""Fold one response's stream of events into its final `Response`, calling back as it goes.

Mirrors the shape of openai-python's `lib/streaming/responses`: events in, callbacks for
text as it arrives, and the terminal event's `response` object out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from openai.types.responses import Response, ResponseStreamEvent

from warmloop.client.transports import ResponseError

TextCallback = Callable[[str], Any]
EventCallback = Callable[[ResponseStreamEvent], Any]


class ResponseFailed(ResponseError):
    """The response ended with `response.failed` (a model or server error)."""


class ResponseAccumulator:
    def __init__(
        self, *, on_text: TextCallback | None = None, on_event: EventCallback | None = None
    ) -> None:
        self.on_text = on_text
        self.on_event = on_event
        self.text: list[str] = []
        self.events = 0
        self.response: Response | None = None

    def feed(self, event: ResponseStreamEvent) -> Response | None:
        """Take one event; the final response once the stream ended, else None."""
        self.events += 1
        if self.on_event is not None:
            self.on_event(event)
        if event.type == "response.output_text.delta":
            self.text.append(event.delta)
            if self.on_text is not None:
                self.on_text(event.delta)
        elif event.type in ("response.completed", "response.incomplete"):
            self.response = event.response
            return event.response
        elif event.type == "response.failed":
            err = event.response.error
            raise ResponseFailed(
                err.message if err else "the response failed",
                code=err.code if err else "server_error",
                status=500,
            )
        return None
