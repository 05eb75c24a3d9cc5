"""Grammar building and the streaming parser of tool calls."""

from __future__ import annotations

import re

import pytest

from warmloop.protocol.errors import InvalidRequest
from warmloop.protocol.requests import FunctionTool, TextFormat
from warmloop.serving.tool_calls import (
    OutputParser,
    TextDelta,
    ToolCall,
    parse_call_body,
    text_format_grammar,
    tool_call_grammar,
)

WEATHER = FunctionTool(
    "get_weather",
    "",
    {
        "type": "object",
        "properties": {
            "city": {"type": "string", "pattern": "^[a-z]+$"},
            "unit": {"enum": ["c", "f"]},
        },
        "required": ["city"],
    },
    False,
)
ADD = FunctionTool("add", "", {"type": "object", "properties": {"a": {"type": "integer"}}}, False)


def rules(grammar: str) -> dict[str, str]:
    return dict(re.findall(r"^([A-Za-z0-9-]+) ::= (.*)$", grammar, re.MULTILINE))


def test_tool_grammar_namespaces_each_tools_rules() -> None:
    g = tool_call_grammar([WEATHER, ADD], parallel=False)
    defined = rules(g)
    assert defined["root"] == "call"
    assert "t0-root" in defined and "t1-root" in defined
    assert not any(name in defined for name in ("space", "string", "char"))  # all prefixed
    assert '"{\\"name\\": \\"get_weather\\", \\"arguments\\": " t0-root' in defined["call"]
    assert '"{\\"name\\": \\"add\\", \\"arguments\\": " t1-root' in defined["call"]
    # literals and character classes keep their text: nothing inside them was renamed
    assert all("t0-t0" not in body for body in defined.values())
    for body in defined.values():
        for literal in re.findall(r'"(?:[^"\\]|\\.)*"', body):
            assert "t0-" not in literal and "t1-" not in literal


def test_parallel_allows_more_calls() -> None:
    assert rules(tool_call_grammar([ADD], parallel=True))["root"].startswith(
        'call ( "\\n" call ){0,'
    )
    assert rules(tool_call_grammar([ADD], parallel=False))["root"] == "call"


def test_text_formats() -> None:
    assert text_format_grammar(TextFormat("text")) is None
    assert "root ::=" in (text_format_grammar(TextFormat("json_object")) or "")
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    assert '"\\"n\\""' in (text_format_grammar(TextFormat("json_schema", "s", schema)) or "")


def test_bad_schema_is_a_400() -> None:
    with pytest.raises(InvalidRequest) as err:
        text_format_grammar(TextFormat("json_schema", "s", {"type": "object", "$ref": "#/nowhere"}))
    assert err.value.param == "text.format.schema"


def feed_all(parser: OutputParser, chunks: list[str]) -> list[TextDelta | ToolCall]:
    out: list[TextDelta | ToolCall] = []
    for c in chunks:
        out += parser.feed(c)
    return out + parser.finish()


def merge(segments: list[TextDelta | ToolCall]) -> list[object]:
    merged: list[object] = []
    for s in segments:
        if isinstance(s, TextDelta) and merged and isinstance(merged[-1], str):
            merged[-1] += s.text
        else:
            merged.append(s.text if isinstance(s, TextDelta) else s)
    return merged


CALL = '<tool_call>\n{"name": "add", "arguments": { "a" : 1 }}\n</tool_call>'


def test_plain_text_without_tools_passes_through() -> None:
    assert merge(feed_all(OutputParser([]), ["  Hel", "lo <tool"])) == ["  Hello <tool"]


def test_pure_tool_call_in_tiny_chunks() -> None:
    chunks = [CALL[i : i + 2] for i in range(0, len(CALL), 2)]
    assert merge(feed_all(OutputParser(["add"]), chunks)) == [ToolCall("add", '{ "a" : 1 }')]


def test_text_then_call_and_parallel_calls() -> None:
    out = merge(feed_all(OutputParser(["add"]), ["Sure. ", CALL, "\n", CALL]))
    assert out == ["Sure. ", ToolCall("add", '{ "a" : 1 }'), "\n", ToolCall("add", '{ "a" : 1 }')]
    only_calls = merge(feed_all(OutputParser(["add"]), ["\n", CALL, "\n", CALL]))
    assert only_calls == [ToolCall("add", '{ "a" : 1 }'), ToolCall("add", '{ "a" : 1 }')]


def test_unterminated_call_is_dropped_and_bad_bodies_are_text() -> None:
    assert merge(feed_all(OutputParser(["add"]), [CALL[:-5]])) == []
    bad = "<tool_call>not json</tool_call>"
    assert merge(feed_all(OutputParser(["add"]), [bad])) == [bad]
    unknown = '<tool_call>{"name": "rm", "arguments": {}}</tool_call>'
    assert merge(feed_all(OutputParser(["add"]), [unknown])) == [unknown]


def test_parse_call_body_keeps_raw_arguments() -> None:
    call = parse_call_body('{"name": "add", "arguments": {"a":  2}}', {"add"})
    assert call == ToolCall("add", '{"a":  2}')
    assert parse_call_body('{"name": "add"}', {"add"}) == ToolCall("add", "{}")
    assert parse_call_body("[]", {"add"}) is None
