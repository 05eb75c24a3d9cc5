"""Grammar building and the streaming parser of tool calls."""

from __future__ import annotations

import ctypes
import json
import re
from dataclasses import dataclass

import pytest

from warmloop.engine.sampling import json_schema_to_gbnf
from warmloop.protocol.errors import InvalidRequest
from warmloop.protocol.requests import TextFormat, parse_create
from warmloop.protocol.tools import FunctionTool
from warmloop.serving.families import ArgsDelta, CallEnd, CallParser, CallStart, Segment, TextDelta
from warmloop.serving.families.generic import Generic, tool_call_text
from warmloop.serving.grammar import Grammars

GENERIC = Generic()
TOOL_CALL_TRIGGER = GENERIC.trigger()
GRAMMARS = Grammars(json_schema_to_gbnf, GENERIC)
tool_call_grammar = GRAMMARS.tool_calls
text_format_grammar = GRAMMARS.text_format

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
    assert '{\\"name\\": \\"get_weather\\", \\"arguments\\": " t0-root' in defined["call"]
    assert '{\\"name\\": \\"add\\", \\"arguments\\": " t1-root' in defined["call"]
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


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str
    complete: bool = True


def OutputParser(names: list[str]) -> CallParser:
    return GENERIC.parser([FunctionTool(n, "", {"type": "object"}, False) for n in names])


def feed_all(parser: CallParser, chunks: list[str]) -> list[TextDelta | ToolCall]:
    """Text deltas and whole calls (a call's start, argument deltas and end, joined)."""
    segments: list[Segment] = []
    for c in chunks:
        segments += parser.feed(c)
    segments += parser.finish()
    out: list[TextDelta | ToolCall] = []
    name, args = "", ""
    for s in segments:
        if isinstance(s, TextDelta):
            out.append(s)
        elif isinstance(s, CallStart):
            name, args = s.name, ""
        elif isinstance(s, ArgsDelta):
            args += s.text
        elif isinstance(s, CallEnd):
            assert args == s.arguments  # the deltas add up to the arguments
            out.append(ToolCall(name, s.arguments, s.complete))
    return out


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
    # whitespace between two calls is not message text, however it is chunked
    assert out == ["Sure.", ToolCall("add", '{ "a" : 1 }'), ToolCall("add", '{ "a" : 1 }')]
    only_calls = merge(feed_all(OutputParser(["add"]), ["\n", CALL, "\n", CALL]))
    assert only_calls == [ToolCall("add", '{ "a" : 1 }'), ToolCall("add", '{ "a" : 1 }')]


def test_unterminated_call_is_incomplete_and_bad_bodies_are_text() -> None:
    cut = merge(feed_all(OutputParser(["add"]), [CALL[:-5]]))
    # whole arguments, but no </tool_call>: the output was cut off inside the call
    assert cut == [ToolCall("add", '{ "a" : 1 }', complete=False)]
    bad = "<tool_call>not json</tool_call>"
    assert merge(feed_all(OutputParser(["add"]), [bad])) == [bad]
    unknown = '<tool_call>{"name": "rm", "arguments": {}}</tool_call>'
    assert merge(feed_all(OutputParser(["add"]), [unknown])) == [unknown]


# ----- llama.cpp's own GBNF parser (model-free: a NULL vocab only parses) ---------------
def llama_accepts(grammar: str, trigger: str | None = None) -> bool:
    """Whether llama.cpp builds a grammar sampler from `grammar`, exactly as the backend
    asks for it. The parser only needs a vocab for `<token>` literals, which we never use."""
    llama_cpp = pytest.importorskip("llama_cpp")
    if not hasattr(llama_cpp, "llama_sampler_init_grammar"):
        pytest.skip("this llama_cpp has no model-free grammar parser")
    if trigger is None:
        sampler = llama_cpp.llama_sampler_init_grammar(None, grammar.encode(), b"root")
    else:
        patterns = (ctypes.c_char_p * 1)(trigger.encode())
        no_tokens = (llama_cpp.llama_token * 1)()
        sampler = llama_cpp.llama_sampler_init_grammar_lazy_patterns(
            None, grammar.encode(), b"root", patterns, 1, no_tokens, 0
        )
    if not sampler:
        return False
    llama_cpp.llama_sampler_free(sampler)
    return True


NAMES_THAT_COLLIDE = FunctionTool(
    "collide",
    "",
    {
        "type": "object",
        "properties": {
            "space": {"type": "string"},
            "root": {"enum": ["#x", "a]b", "c d"]},
            "string": {"type": "string", "pattern": "^[a\\]#-]+$"},
            "1": {"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 3},
            "nested": {
                "type": "object",
                "properties": {"x": {"anyOf": [{"type": "number"}, {"type": "null"}]}},
                "additionalProperties": False,
            },
            "free": {"type": "object"},
        },
        "required": ["space"],
    },
    False,
)
UNICODE = FunctionTool(
    "météo", "", {"type": "object", "properties": {"città": {"type": "string"}}}, False, "ns"
)


def test_llama_cpp_rejects_a_broken_grammar() -> None:  # the check below can fail
    assert not llama_accepts('root ::= "a" undefined-rule')
    assert not llama_accepts('root ::= "unterminated')
    assert llama_accepts('root ::= "a" [0-9]+')


@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize(
    "tools",
    [[ADD], [WEATHER, ADD], [WEATHER, NAMES_THAT_COLLIDE, UNICODE]],
    ids=["one", "two", "collisions"],
)
def test_tool_grammars_parse_in_llama_cpp(tools: list[FunctionTool], parallel: bool) -> None:
    g = tool_call_grammar(tools, parallel=parallel)
    assert llama_accepts(g)
    assert llama_accepts(g, TOOL_CALL_TRIGGER)  # the lazy form used with tool_choice auto


@pytest.mark.parametrize(
    "fmt",
    [
        TextFormat("json_object"),
        TextFormat("json_schema", "s", WEATHER.parameters),
        TextFormat("json_schema", "s", NAMES_THAT_COLLIDE.parameters),
        TextFormat("json_schema", "s", {"type": "array", "items": {"type": "string"}}),
    ],
)
def test_text_format_grammars_parse_in_llama_cpp(fmt: TextFormat) -> None:
    g = text_format_grammar(fmt)
    assert g is not None and llama_accepts(g)


def test_a_quote_in_a_schema_literal_is_a_400_or_a_valid_grammar() -> None:
    tool = FunctionTool(
        "f", "", {"type": "object", "properties": {"q": {"enum": ['say "hi"']}}}, False
    )
    try:
        g = tool_call_grammar([tool], parallel=False)
    except InvalidRequest as err:
        assert err.param == "tools[0].parameters"
        return
    assert llama_accepts(g)


# ----- rule prefixing -------------------------------------------------------------------
def test_prefixing_renames_definitions_and_references_only() -> None:
    g = tool_call_grammar([NAMES_THAT_COLLIDE], parallel=False)
    defined = rules(g)
    assert set(defined) >= {"root", "call", "t0-root", "t0-space", "t0-string", "t0-1"}
    assert all(name in ("root", "call") or name.startswith("t0-") for name in defined)
    # the property names survive inside their JSON string literals
    for prop in ("space", "root", "string", "1", "nested"):
        assert f'"\\"{prop}\\""' in g
    assert '"\\"#x\\""' in g and '"\\"a]b\\""' in g  # `#` and `]` inside literals
    assert "[a\\]#-]" in g  # a character class with `]` and `#` is copied verbatim
    # every rule referenced is defined
    referenced = set(
        re.findall(
            r"(?<![\w\"-])(t0-[a-z0-9-]+)", re.sub(r'"(?:[^"\\]|\\.)*"|\[(?:[^\]\\]|\\.)*\]', "", g)
        )
    )
    assert referenced <= set(defined)


def test_call_frame_matches_the_rendered_tool_call_text() -> None:
    """The grammar's literal frame is byte-for-byte what prompt.tool_call_text renders."""
    g = tool_call_grammar([WEATHER, UNICODE], parallel=True)
    call = rules(g)["call"]
    literals = [json.loads(x) for x in re.findall(r'"(?:[^"\\]|\\.)*"', call)]
    head0, close0, head1, close1 = literals
    args = '{"city": "oslo"}'
    assert head0 + args + close0 == tool_call_text("get_weather", args)
    assert head1 + args + close1 == tool_call_text("ns.météo", args)
    assert rules(g)["root"] == 'call ( "\\n" call ){0,7}'  # calls joined by one newline


def test_single_tool_choice_grammar_has_one_alternative() -> None:
    call = rules(tool_call_grammar([ADD], parallel=False))["call"]
    assert call.count('\\"name\\"') == 1 and "t0-root" in call and "t1-" not in call


def test_bad_tool_schema_names_the_tool() -> None:
    bad = {"type": "function", "name": "bad", "parameters": {"type": "object", "$ref": "#/x"}}
    ok = {"type": "function", "name": "add", "parameters": ADD.parameters}
    skipped = {"type": "web_search"}
    request = parse_create({"input": "hi", "tools": [ok, skipped, bad]})
    with pytest.raises(InvalidRequest) as err:
        tool_call_grammar(request.tools, parallel=True)
    assert err.value.param == "tools[2].parameters"


def test_trigger_fires_on_the_tag_only() -> None:
    trig = re.compile(TOOL_CALL_TRIGGER)
    m = trig.fullmatch('Sure.\n<tool_call>\n{"name"')
    assert m is not None and m.start(1) == len("Sure.\n")
    assert trig.fullmatch("no call <tool") is None


# ----- the streaming parser ---------------------------------------------------------------
def test_text_only_with_tools_streams_without_holding_back() -> None:
    p = OutputParser(["add"])
    assert p.feed("Hello") == [TextDelta("Hello")]
    # `<t` might open a call; the space before it waits to see whether one does
    assert p.feed(" world, <t") == [TextDelta(" world,")]
    assert p.feed("ag>") == [TextDelta(" <tag>")]
    assert p.finish() == []


def test_leading_whitespace_is_dropped_and_partial_tag_flushed_at_finish() -> None:
    p = OutputParser(["add"])
    assert p.feed("\n  ") == []
    assert p.feed("Hi <tool_ca") == [TextDelta("Hi")]
    assert p.finish() == [TextDelta(" <tool_ca")]


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 11])
def test_call_split_into_tiny_chunks_including_the_tag(size: int) -> None:
    text = "Let me add. " + CALL
    chunks = [text[i : i + size] for i in range(0, len(text), size)]
    out = feed_all(OutputParser(["add"]), chunks)
    # the space before the call is the template's to write, not the message's
    assert merge(out) == ["Let me add.", ToolCall("add", '{ "a" : 1 }')]
    assert not any(isinstance(s, TextDelta) and "<" in s.text for s in out)


def test_pure_parallel_calls_have_no_text_at_all() -> None:
    other = '<tool_call>\n{"name": "ns.g", "arguments": {}}\n</tool_call>'
    text = CALL + "\n" + other + "\n"
    for size in (1, 4, len(text)):
        chunks = [text[i : i + size] for i in range(0, len(text), size)]
        assert feed_all(OutputParser(["add", "ns.g"]), chunks) == [
            ToolCall("add", '{ "a" : 1 }'),
            ToolCall("ns.g", "{}"),
        ]


def test_text_after_a_call_is_text() -> None:
    assert merge(feed_all(OutputParser(["add"]), [CALL, " Done."])) == [
        ToolCall("add", '{ "a" : 1 }'),
        "Done.",
    ]


def test_output_cut_before_the_tool_is_named_is_text() -> None:
    out = feed_all(OutputParser(["add"]), ["Sure. ", CALL[:20]])
    assert merge(out) == ["Sure. " + CALL[:20]]


def test_invalid_arguments_are_an_incomplete_call_and_unknown_names_text() -> None:
    bad = '<tool_call>\n{"name": "add", "arguments": {"a": }\n</tool_call>'
    out = merge(feed_all(OutputParser(["add"]), ["x ", bad]))
    assert out == ["x", ToolCall("add", '{"a": }\n', complete=False)]
    unknown = '<tool_call>{"name": "ad", "arguments": {}}</tool_call>'
    assert merge(feed_all(OutputParser(["add"]), [unknown, CALL])) == [
        unknown,
        ToolCall("add", '{ "a" : 1 }'),
    ]


def test_without_tools_everything_is_text_verbatim() -> None:
    p = OutputParser([])
    assert p.feed("  <tool_call>{}") == [TextDelta("  <tool_call>{}")]
    assert p.feed("") == []
    assert p.finish() == []


def test_whitespace_between_calls_does_not_depend_on_chunking() -> None:
    text = "Sure. " + CALL + "\n" + CALL
    whole = merge(feed_all(OutputParser(["add"]), [text]))
    per_char = merge(feed_all(OutputParser(["add"]), list(text)))
    assert whole == ["Sure.", ToolCall("add", '{ "a" : 1 }'), ToolCall("add", '{ "a" : 1 }')]
    assert per_char == whole


def test_call_variants_the_frame_allows() -> None:
    p = ["add", "ns.g"]
    spaced = '<tool_call>{"name": "add", "arguments": {"a": [1, 2]} }</tool_call>'
    # whitespace after the value is the arguments' own (the template writes it back)
    assert merge(feed_all(OutputParser(p), [spaced])) == [ToolCall("add", '{"a": [1, 2]} ')]
    ns = '<tool_call>\n{"name": "ns.g", "arguments": {}}\n</tool_call>'
    assert merge(feed_all(OutputParser(p), [ns])) == [ToolCall("ns.g", "{}")]
    # the name must come first (the grammar writes it so): otherwise it is text
    other_order = '<tool_call>{"arguments": {"a": 1}, "name": "add"}</tool_call>'
    assert merge(feed_all(OutputParser(p), [other_order])) == [other_order]


def test_for_request_picks_grammar_and_trigger_from_tool_choice() -> None:
    def body(choice: object = None, **kw: object) -> dict[str, object]:
        tools = [{"type": "function", "name": "add", "parameters": ADD.parameters}]
        return {"input": "x", "tools": tools, **({"tool_choice": choice} if choice else {}), **kw}

    auto = GRAMMARS.for_request(parse_create(body()))
    assert auto[0] is not None and auto[1] == TOOL_CALL_TRIGGER  # lazy: text or a call
    required = GRAMMARS.for_request(parse_create(body("required")))
    assert required[0] == auto[0] and required[1] is None
    assert GRAMMARS.for_request(parse_create(body("none"))) == (None, None)
    fmt = {"format": {"type": "json_object"}}
    assert GRAMMARS.for_request(parse_create(body(text=fmt)))[1] is None  # the format wins


def test_for_request_names_the_schema_the_checker_refuses() -> None:
    """The checker is injected (llama.cpp in the server): whatever it refuses is a 400
    naming the one schema it refused."""

    def check(grammar: str, trigger: str | None) -> None:
        if "bad" in grammar:
            raise ValueError("repetition too large")

    grammars = Grammars(json_schema_to_gbnf, GENERIC, check=check)
    ok = {"type": "function", "name": "ok", "parameters": {"type": "object"}}
    bad = {"type": "function", "name": "f", "parameters": {"enum": ["bad"]}}
    with pytest.raises(InvalidRequest) as err:
        grammars.for_request(parse_create({"input": "x", "tools": [ok, bad]}))
    assert err.value.param == "tools[1].parameters" and err.value.code == "invalid_json_schema"
    assert "repetition too large" in err.value.message
    assert grammars.for_request(parse_create({"input": "x", "tools": [ok]}))[0] is not None
