"""Codex's tool kinds: custom tools (freeform input, regex/Lark formats), local_shell,
shell and apply_patch are offered to the model as functions and come out in their own
item shapes (checked against the SDK's types); their calls and outputs are accepted
back; hosted tools are accepted and not offered."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai.types.responses import ResponseOutputItem, ResponseStreamEvent
from pydantic import TypeAdapter

from tests.unit.test_tool_calls import llama_accepts
from warmloop.engine.sampling import json_schema_to_gbnf
from warmloop.protocol.errors import InvalidRequest
from warmloop.protocol.items import (
    FunctionCallItem,
    FunctionCallOutputItem,
    item_to_wire,
    parse_item,
)
from warmloop.protocol.requests import parse_create
from warmloop.serving import event_builder as ev
from warmloop.serving.families.generic import Generic, tool_call_text
from warmloop.serving.grammar import Grammars
from warmloop.serving.output import OutputBuilder

EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
OUTPUT: TypeAdapter[Any] = TypeAdapter(ResponseOutputItem)
CODEX_TOOLS: list[dict[str, Any]] = [
    {"type": "function", "name": "read_file", "parameters": {"type": "object"}},
    {
        "type": "custom",
        "name": "patch",
        "description": "Apply a patch.",
        "format": {"type": "grammar", "syntax": "lark", "definition": 'start: "*** Begin"'},
    },
    {
        "type": "custom",
        "name": "ticket",
        "format": {"type": "grammar", "syntax": "regex", "definition": "[A-Z]{3}-[0-9]{2}"},
    },
    {"type": "local_shell"},
    {"type": "shell"},
    {"type": "apply_patch"},
    {"type": "web_search"},
    {"type": "mcp", "server_label": "x"},
]


def request(**kw: Any) -> Any:
    return parse_create({"input": "x", "tools": CODEX_TOOLS, **kw})


def test_each_kind_is_offered_as_a_function_and_hosted_ones_are_listed() -> None:
    r = request()
    assert [(t.qualified, t.kind) for t in r.tools] == [
        ("read_file", "function"),
        ("patch", "custom"),
        ("ticket", "custom"),
        ("local_shell", "local_shell"),
        ("shell", "shell"),
        ("apply_patch", "apply_patch"),
    ]
    assert r.not_offered == ("web_search", "mcp")
    ticket = r.tools[2].parameters["properties"]["input"]
    assert ticket == {"type": "string", "pattern": "^([A-Z]{3}-[0-9]{2})$"}
    assert "Lark grammar" in r.tools[1].parameters["properties"]["input"]["description"]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "custom", "name": "ticket"}, "function:ticket"),
        ({"type": "shell"}, "function:shell"),
        ({"type": "apply_patch"}, "function:apply_patch"),
        ({"type": "local_shell"}, "function:local_shell"),
    ],
)
def test_tool_choice_names_a_kind(choice: dict[str, Any], expected: str) -> None:
    assert request(tool_choice=choice).tool_choice == expected


@pytest.mark.parametrize(
    "choice",
    [
        {"type": "web_search"},
        {"type": "custom", "name": "read_file"},
        {"type": "function", "name": "patch"},
    ],
)
def test_tool_choice_of_a_hosted_or_mismatched_tool_is_a_400(choice: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest) as err:
        request(tool_choice=choice)
    assert err.value.param == "tool_choice"


def test_a_regex_custom_tool_is_enforced_by_a_grammar_llama_cpp_accepts() -> None:
    r = request(tool_choice={"type": "custom", "name": "ticket"})
    grammar, trigger = Grammars(json_schema_to_gbnf, Generic()).for_request(r)
    assert grammar is not None and trigger is None and llama_accepts(grammar)


def stream(r: Any, text: str) -> tuple[OutputBuilder, list[dict[str, Any]]]:
    kinds = {t.qualified: t.kind for t in r.tools if t.kind != "function"}
    out = OutputBuilder(ev.Sequencer(), Generic().parser(r.tools), set(), None, kinds)
    events = [*out.feed(text), *out.finish()]
    for e in events:
        EVENTS.validate_python(e)
    return out, events


@pytest.mark.parametrize(
    ("name", "args", "wire_type", "check"),
    [
        ("ticket", {"input": "ABC-12"}, "custom_tool_call", lambda w: w["input"] == "ABC-12"),
        (
            "shell",
            {"commands": ["ls -la", "pwd"], "timeout_ms": 5000},
            "shell_call",
            lambda w: w["action"]["commands"] == ["ls -la", "pwd"],
        ),
        (
            "local_shell",
            {"command": ["ls"], "workdir": "/tmp"},
            "local_shell_call",
            lambda w: w["action"]["command"] == ["ls"] and w["id"] == w["call_id"],
        ),
        (
            "apply_patch",
            {"type": "create_file", "path": "a.txt", "diff": "+hi\n"},
            "apply_patch_call",
            lambda w: w["operation"] == {"type": "create_file", "path": "a.txt", "diff": "+hi\n"},
        ),
    ],
)
def test_calls_come_out_in_their_kind_shape(
    name: str, args: dict[str, Any], wire_type: str, check: Any
) -> None:
    r = request()
    out, events = stream(r, tool_call_text(name, json.dumps(args)))
    (wire,) = out.items_wire()
    OUTPUT.validate_python(wire)
    assert wire["type"] == wire_type and check(wire)
    assert events[0]["type"] == "response.output_item.added"
    assert events[0]["item"]["type"] == wire_type
    if wire_type == "custom_tool_call":
        done = [e for e in events if e["type"] == "response.custom_tool_call_input.done"]
        assert done[0]["input"] == args["input"]
    else:
        assert not any("function_call_arguments" in e["type"] for e in events)
    # stored and read back: the same call, arguments as the model wrote them
    item = out.items[0]
    assert isinstance(item, FunctionCallItem)
    assert parse_item(item_to_wire(item, stored=True), 0) == item


@pytest.mark.parametrize(
    ("raw", "kind", "text"),
    [
        (
            {"type": "custom_tool_call_output", "call_id": "c1", "output": "applied"},
            "custom",
            "applied",
        ),
        (
            {"type": "local_shell_call_output", "id": "c1", "output": "a.txt\n"},
            "local_shell",
            "a.txt\n",
        ),
        (
            {
                "type": "shell_call_output",
                "call_id": "c1",
                "output": [
                    {"stdout": "ok\n", "stderr": "", "outcome": {"type": "exit", "exit_code": 0}}
                ],
            },
            "shell",
            "ok\n(exit code 0)",
        ),
        (
            {
                "type": "apply_patch_call_output",
                "call_id": "c1",
                "status": "failed",
                "output": "no such file",
            },
            "apply_patch",
            "failed: no such file",
        ),
    ],
)
def test_outputs_are_accepted_back_as_the_text_the_model_reads(
    raw: dict[str, Any], kind: str, text: str
) -> None:
    item = parse_item(raw, 0)
    assert isinstance(item, FunctionCallOutputItem)
    assert (item.call_id, item.kind, item.output) == ("c1", kind, text)
    assert parse_item(item_to_wire(item, stored=True), 0) == item


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        ({"type": "custom_tool_call", "call_id": "c", "name": "x"}, "input[0].input"),
        ({"type": "shell_call", "call_id": "c"}, "input[0].action"),
        ({"type": "shell_call_output", "call_id": "c", "output": "text"}, "input[0].output"),
        ({"type": "apply_patch_call_output", "call_id": "c", "status": "maybe"}, "input[0].status"),
        ({"type": "custom_tool_call_output", "output": "x"}, "input[0].call_id"),
    ],
)
def test_malformed_kind_items_are_a_400_naming_the_field(raw: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        parse_item(raw, 0)
    assert err.value.param == param


def test_client_sent_calls_become_the_arguments_the_model_writes() -> None:
    custom = parse_item(
        {"type": "custom_tool_call", "call_id": "c", "name": "patch", "input": "*** Begin"}, 0
    )
    assert isinstance(custom, FunctionCallItem) and json.loads(custom.arguments) == {
        "input": "*** Begin"
    }
    shell = parse_item(
        {"type": "shell_call", "call_id": "c", "action": {"commands": ["ls"], "timeout_ms": 10}}, 0
    )
    assert isinstance(shell, FunctionCallItem)
    assert (shell.name, json.loads(shell.arguments)) == (
        "shell",
        {"commands": ["ls"], "timeout_ms": 10},
    )
