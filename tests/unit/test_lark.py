"""A custom tool's Lark grammar (or regex) as GBNF (serving/lark.py, regex.py and
text_grammar.py): Codex's own
apply_patch grammar, Lark's constructs one by one, regexes against Python's `re`, the
constructs that are not translated, and the tool-call grammars that carry them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.gbnf_match import gbnf_regex
from tests.unit.test_tool_calls import llama_accepts
from warmloop.engine.sampling import json_schema_to_gbnf
from warmloop.protocol import tool_kinds
from warmloop.protocol.tools import FunctionTool
from warmloop.serving import event_builder as ev
from warmloop.serving.families import family_for
from warmloop.serving.grammar import Grammars, custom_input
from warmloop.serving.lark import input_rules, translate, translate_regex
from warmloop.serving.output import OutputBuilder
from warmloop.serving.text_grammar import JSON_STRING, RAW, Encoding, Unsupported

DATA = Path(__file__).parent.parent / "data"
APPLY_PATCH = (DATA / "codex" / "apply_patch.lark").read_text()
PATCH = (
    "*** Begin Patch\n"
    "*** Update File: src/app.py\n"
    "@@ def greet():\n"
    '-    print("hi")\n'
    '+    print("hello, \\"world\\"")\n'
    "     return\n"
    "*** Add File: notes.md\n"
    "+# Notes\n"
    "+\ttabbed\n"
    "*** Delete File: old.txt\n"
    "*** End Patch\n"
)


def accepts(rules: tuple[str, ...], start: str) -> re.Pattern[str]:
    return gbnf_regex("\n".join([f"root ::= {start}", *rules]))


def encoded(text: str, encoding: Encoding) -> str:
    return json.dumps(text, ensure_ascii=False)[1:-1] if encoding.json else text


@pytest.mark.parametrize("encoding", [RAW, JSON_STRING], ids=["raw", "json"])
def test_codex_apply_patch_grammar(encoding: Encoding) -> None:
    t = translate(APPLY_PATCH, encoding, "lk")
    grammar = "\n".join([f"root ::= {t.start}", *t.rules])
    assert llama_accepts(grammar)
    match = gbnf_regex(grammar).fullmatch
    assert match(encoded(PATCH, encoding))
    assert match(encoded(PATCH.removesuffix("\n"), encoding))  # end_patch: LF?
    assert not match(encoded(PATCH.replace("*** End Patch\n", ""), encoding))
    assert not match(encoded(PATCH.replace("+# Notes", "# Notes"), encoding))  # add_line: "+"
    assert not match(encoded("*** Begin Patch\n*** End Patch\n", encoding))  # hunk+
    if encoding.json:  # the raw text is not its JSON string's content
        assert not match(PATCH)


LARK_CASES = [
    # (grammar, accepted, refused)
    ('start: "ab" | "c"', ["ab", "c"], ["", "abc"]),
    ('start: "a".."c"+', ["abcba"], ["abd", ""]),
    ('start: "x" ["y"] "z"?', ["x", "xy", "xyz", "xz"], ["xzz"]),
    ('start: "a"~2 "b"~1..2', ["aab", "aabb"], ["ab", "aabbb"]),
    ('start: "hi"i', ["hi", "HI", "hI"], ["h"]),
    ('?start: item+ -> items\nitem.2: /[0-9]+/ ","\n', ["1,22,"], ["1", ","]),
    ("start: NAME\n%import common.CNAME -> NAME", ["_a1"], ["1a"]),
    ("start: INT (WS INT)*\n%import common (INT, WS)", ["1 22\n3"], ["1,2"]),
    ("start: SIGNED_NUMBER\n%import common.SIGNED_NUMBER", ["-1.5e3", "+2", ".5"], ["1e"]),
    ("start: ESCAPED_STRING\n%import common.ESCAPED_STRING", ['"a\\"b"'], ['"a"b"']),
    ('start: a\n  | b\na: "1" // a comment\nb: _B\n_B: /two/i', ["1", "TWO"], ["3"]),
]


@pytest.mark.parametrize(("grammar", "good", "bad"), LARK_CASES)
@pytest.mark.parametrize("encoding", [RAW, JSON_STRING], ids=["raw", "json"])
def test_lark_constructs(grammar: str, good: list[str], bad: list[str], encoding: Encoding) -> None:
    t = translate(grammar, encoding, "lk")
    assert llama_accepts("\n".join([f"root ::= {t.start}", *t.rules]))
    match = accepts(t.rules, t.start).fullmatch
    for text in good:
        assert match(encoded(text, encoding)), text
    for text in bad:
        assert not match(encoded(text, encoding)), text


REGEX_CASES = [
    (r"[A-Z]{3}-[0-9]{2}", ["ABC-12", "ABC-1", "abc-12", "ABCD-12"]),
    (r"\d+(\.\d*)?|\.\d+", ["1", "1.", "1.5", ".5", ".", "a"]),
    (r"[^\s,]+(,[\w-]+)*", ["a,b-c", "a b", "a,", "x,y_z"]),
    (r"(?:ab|cd){2,}x?", ["abcd", "abcdx", "ab", "abababx"]),
    (r"[\d\s]+", ["1 2\n3", "1a"]),
    (r"[^\d\s]+", ["ab", "a1", "a b"]),
    (r"a.c", ["abc", "a\nc", 'a"c']),
    (r"^[a-c]*$", ["abcabc", "abd"]),
    (r"say \"hi\" \\ \t", ['say "hi" \\ \t', "say hi"]),
]


@pytest.mark.parametrize(("pattern", "samples"), REGEX_CASES)
@pytest.mark.parametrize("encoding", [RAW, JSON_STRING], ids=["raw", "json"])
def test_regexes_accept_what_python_accepts(
    pattern: str, samples: list[str], encoding: Encoding
) -> None:
    t = translate_regex(pattern, encoding, "rx")
    assert llama_accepts("\n".join([f"root ::= {t.start}", *t.rules]))
    match = accepts(t.rules, t.start).fullmatch
    for text in samples:
        assert bool(match(encoded(text, encoding))) == bool(re.fullmatch(pattern, text)), text


@pytest.mark.parametrize(
    ("syntax", "definition", "construct"),
    [
        ("lark", 'start: "a"+\n%ignore " "', "%ignore"),
        ("lark", "start: x{1}\nx{p}: p", "templates"),
        ("lark", "start: NAME\n%import python.NAME", "python"),
        ("lark", "start: other", "'other' is not defined"),
        ("lark", 'a: "x"', "no 'start'"),
        ("regex", r"a(?=b)", "look-arounds"),
        ("regex", r"(a)\1", "back-references"),
    ],
)
def test_what_is_not_translated_is_said_and_left_unenforced(
    syntax: str, definition: str, construct: str
) -> None:
    with pytest.raises(Unsupported, match=re.escape(construct)):
        if syntax == "lark":
            translate(definition, RAW, "lk")
        else:
            translate_regex(definition, RAW, "rx")
    assert input_rules((syntax, definition), RAW, "lk") is None
    tool = custom_tool(syntax, definition)
    assert custom_input(tool) is None  # the tool is offered, its text unconstrained
    grammar = Grammars(json_schema_to_gbnf, family_for("")).tool_calls((tool,), parallel=False)
    assert llama_accepts(grammar)


def custom_tool(syntax: str, definition: str) -> FunctionTool:
    fmt = {"type": "grammar", "syntax": syntax, "definition": definition}
    return FunctionTool(
        "apply_patch",
        "Edit files.",
        tool_kinds.custom_parameters(fmt, "tools[0]"),
        False,
        kind="custom",
        input_grammar=tool_kinds.input_grammar(fmt),
    )


TEMPLATES = DATA / "templates"


@pytest.mark.parametrize(
    "template",
    ["", "Qwen-Qwen2.5-7B-Instruct", "Qwen3-Coder", "GLM-4.6", "google-gemma-4-31B-it"],
)
def test_each_family_enforces_the_lark_grammar_in_its_call(template: str) -> None:
    """JSON arguments carry the text as a JSON string, Qwen3-Coder's and GLM's parameters
    and Gemma's strings as it is: either way the call's text is the patch."""
    family = family_for((TEMPLATES / f"{template}.jinja").read_text() if template else "")
    tool = custom_tool("lark", APPLY_PATCH)
    grammar = Grammars(json_schema_to_gbnf, family).tool_calls((tool,), parallel=False)
    assert llama_accepts(grammar) and llama_accepts(grammar, family.trigger())
    assert "lk-" not in grammar and "in-start" in grammar
    if family.name == "generic" or family.name == "hermes":
        call = '<tool_call>\n{"name": "apply_patch", "arguments": {"input": %s}}\n</tool_call>'
        text = call % json.dumps(PATCH)
        assert gbnf_regex(grammar).fullmatch(text)
        assert not gbnf_regex(grammar).fullmatch(call % json.dumps("*** Begin Patch\n"))
        out = OutputBuilder(ev.Sequencer(), family.parser((tool,)), set())
        out.feed(text)
        out.finish()
        assert json.loads(out.items[0].arguments)["input"] == PATCH  # type: ignore[union-attr]
    if family.name == "gemma":
        text = '<|tool_call>call:apply_patch{input:<|"|>' + PATCH + '<|"|>}<tool_call|>'
        assert gbnf_regex(grammar).fullmatch(text)
