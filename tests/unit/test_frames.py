"""WebSocket frames, parsed without a socket: each frame → one typed event or error."""

from __future__ import annotations

import json

import pytest

from warmloop.protocol.frames import CreateFrame, FrameError, IgnoredFrame, parse_frame

LIMIT = 4096


def parse(data: str | bytes) -> object:
    return parse_frame(data, max_bytes=LIMIT, max_depth=16)


def create(**fields: object) -> str:
    frame = {"type": "response.create", "model": "m", "input": "hi", **fields}
    return json.dumps(frame, ensure_ascii=False)


def error_of(frame: object) -> tuple[str | None, str | None, str | None]:
    assert isinstance(frame, FrameError), frame
    return frame.error.code, frame.error.param, frame.stream_id


def test_a_create_becomes_a_typed_request() -> None:
    frame = parse(create(max_output_tokens=5))
    assert isinstance(frame, CreateFrame) and frame.stream_id is None
    assert frame.request.body.max_output_tokens == 5 and frame.request.body.model == "m"


def test_stream_and_stream_id_are_not_part_of_the_body() -> None:
    frame = parse(create(stream=True, stream_id="lane-1"))
    assert isinstance(frame, CreateFrame) and frame.stream_id == "lane-1"


def test_binary_frames_are_utf8_json() -> None:
    assert isinstance(parse(create().encode()), CreateFrame)
    assert error_of(parse(b"\xff\xfe")) == ("invalid_json", None, None)


def test_a_continuation_needs_no_input() -> None:
    frame = parse(json.dumps({"type": "response.create", "previous_response_id": "resp_1"}))
    assert isinstance(frame, CreateFrame)


def test_response_processed_is_ignored() -> None:
    assert parse(json.dumps({"type": "response.processed"})) == IgnoredFrame("response.processed")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ("not json", ("invalid_json", None, None)),
        ("[1, 2]", ("invalid_json", None, None)),
        ('"text"', ("invalid_json", None, None)),
        ("[" * 40 + "]" * 40, ("invalid_json", "[0]" * 16, None)),
        ('{"type": "response.create", "input": "\\ud800"}', ("invalid_value", "input", None)),
        ("{}", ("unknown_event_type", "type", None)),
        ('{"type": 7}', ("unknown_event_type", "type", None)),
        ('{"type": ["response.create"]}', ("unknown_event_type", "type", None)),
        ('{"type": "session.update"}', ("unknown_event_type", "type", None)),
        (create(temperature="hot"), ("invalid_request", "temperature", None)),
        (create(temperature="hot", stream_id="s1"), ("invalid_request", "temperature", "s1")),
        (create(stream_id="bad id!"), ("invalid_stream_id", "stream_id", None)),
        (create(stream_id=""), ("invalid_stream_id", "stream_id", None)),
        (create(stream_id=5), ("invalid_stream_id", "stream_id", None)),
        (create(stream_id="x" * 65), ("invalid_stream_id", "stream_id", None)),
        (create(background=True), ("invalid_request", "background", None)),
    ],
)
def test_bad_frames_are_typed_errors(
    data: str, expected: tuple[str, str | None, str | None]
) -> None:
    assert error_of(parse(data)) == expected


def test_frames_over_the_limit_count_utf8_bytes() -> None:
    fits = create(instructions="x" * (LIMIT - 200))
    assert isinstance(parse(fits), CreateFrame)
    wide = create(instructions="é" * (LIMIT // 2))  # under the limit in characters only
    assert len(wide) < LIMIT and error_of(parse(wide))[0] == "message_too_large"
    assert error_of(parse(b"x" * (LIMIT + 1)))[0] == "message_too_large"
