"""WebSocket mode's client frames, parsed without a socket: one frame in, one typed
event or one typed error out.

A frame is a JSON object with a string `type`: `response.create` (the create body's
fields beside `type`, plus an optional `stream_id` naming a lane) or
`response.processed` (acknowledged, ignored). Everything else is a `FrameError`
carrying the APIError the client gets as an error event. Unit-tested frame by frame in
tests/unit/test_frames.py; transport/websocket.py only moves frames and runs lanes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from warmloop.protocol import wire_json
from warmloop.protocol.errors import APIError, InvalidRequest, MessageTooLarge
from warmloop.protocol.requests import CreateRequest, parse_create

IGNORED_CLIENT_EVENTS = frozenset({"response.processed"})
STREAM_ID = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")


@dataclass(frozen=True)
class CreateFrame:
    request: CreateRequest
    stream_id: str | None  # the lane; None is the connection's default lane


@dataclass(frozen=True)
class IgnoredFrame:
    type: str


@dataclass(frozen=True)
class FrameError:
    error: APIError
    stream_id: str | None = None  # echoed on the error event when the frame named a valid one


ClientFrame = CreateFrame | IgnoredFrame | FrameError


def parse_frame(data: str | bytes, *, max_bytes: int, max_depth: int) -> ClientFrame:
    """Parse one text or binary frame of at most `max_bytes` (UTF-8) bytes."""
    if isinstance(data, bytes):
        if len(data) > max_bytes:
            return FrameError(_too_large(len(data), max_bytes))
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            return FrameError(
                InvalidRequest("Frames must be UTF-8 JSON text.", code="invalid_json")
            )
    size = len(data.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        return FrameError(_too_large(size, max_bytes))
    try:
        event = wire_json.loads(data, what="The frame", max_depth=max_depth)
    except APIError as exc:
        return FrameError(exc)
    if not isinstance(event, dict):
        return FrameError(InvalidRequest("Frame must be a JSON object.", code="invalid_json"))
    kind = event.get("type")
    if not isinstance(kind, str):
        return FrameError(
            InvalidRequest(
                "'type' must be a string naming the event, e.g. 'response.create'.",
                param="type",
                code="unknown_event_type",
            )
        )
    if kind in IGNORED_CLIENT_EVENTS:
        return IgnoredFrame(kind)
    if kind != "response.create":
        return FrameError(
            InvalidRequest(
                f"Unknown event type '{kind}'. Supported: 'response.create'.",
                param="type",
                code="unknown_event_type",
            )
        )
    stream_id = event.get("stream_id")
    echo = stream_id if isinstance(stream_id, str) and STREAM_ID.fullmatch(stream_id) else None
    body = {k: v for k, v in event.items() if k not in ("type", "stream_id", "stream")}
    try:
        request = parse_create(body, websocket=True)  # `stream` is implied on a socket
    except APIError as exc:
        return FrameError(exc, echo)
    if stream_id is not None and echo is None:
        return FrameError(
            InvalidRequest(
                "'stream_id' must be 1-64 characters of letters, digits, '_', '-', '.', ':'.",
                param="stream_id",
                code="invalid_stream_id",
            )
        )
    return CreateFrame(request, echo)


def _too_large(size: int, limit: int) -> MessageTooLarge:
    return MessageTooLarge(f"Frame of {size} bytes is over the limit of {limit} bytes.")
