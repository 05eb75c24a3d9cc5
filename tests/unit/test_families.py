"""Model families on their real templates (llama.cpp's corpus, tests/data/templates):
which family each template gets, what the parser makes of outputs in the family's
syntax (the forms llama.cpp's tests/test-chat.cpp expects), and the round trip that
keeps a tool loop's KV warm: the parsed output rendered back as history is the very
text the model generated."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.gbnf_match import gbnf_regex
from tests.unit.test_tool_calls import llama_accepts
from warmloop.engine.sampling import json_schema_to_gbnf
from warmloop.protocol.errors import InvalidRequest
from warmloop.protocol.items import (
    FunctionCallItem,
    FunctionCallOutputItem,
    Item,
    MessageItem,
    ReasoningItem,
)
from warmloop.protocol.tools import FunctionTool
from warmloop.serving import event_builder as ev
from warmloop.serving.chat_template import CHATML_TEMPLATE, RawArgs, fallback_template, tojson
from warmloop.serving.families import family_for
from warmloop.serving.families.mistral import id9
from warmloop.serving.grammar import Grammars
from warmloop.serving.output import OutputBuilder
from warmloop.serving.prompt import PromptRenderer, kept_reasoning
from warmloop.serving.sealing import Sealer

TEMPLATES = Path(__file__).parent.parent / "data" / "templates"
WEATHER = FunctionTool(
    "get_weather",
    "The weather in a city.",
    {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city"],
    },
    False,
)
TIME = FunctionTool(
    "get_time", "The time.", {"type": "object", "properties": {"zone": {"type": "string"}}}, False
)
TOOLS = (WEATHER, TIME)

HERMES_1 = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
HERMES_2 = (
    HERMES_1 + '\n<tool_call>\n{"name": "get_time", "arguments": {"zone": "CET"}}\n</tool_call>'
)
CODER_1 = (
    "<tool_call>\n<function=get_weather>\n<parameter=city>\nOslo\n</parameter>\n"
    "<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>"
)
CODER_2 = CODER_1 + (
    "\n<tool_call>\n<function=get_time>\n<parameter=zone>\nCET\n</parameter>\n"
    "</function>\n</tool_call>"
)
SMALL_1 = '[TOOL_CALLS]get_weather[CALL_ID]a1b2c3d4e[ARGS]{"city": "Oslo"}'
SMALL_2 = SMALL_1 + '[TOOL_CALLS]get_time[CALL_ID]f5g6h7i8j[ARGS]{"zone": "CET"}'
DEVSTRAL_1 = '[TOOL_CALLS]get_weather[ARGS]{"city": "Oslo"}'
NEMO_1 = '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Oslo"}, "id": "a1b2c3d4e"}]'
NEMO_2 = (
    '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Oslo"}, "id": "a1b2c3d4e"}, '
    '{"name": "get_time", "arguments": {"zone": "CET"}, "id": "f5g6h7i8j"}]'
)
LLAMA_1 = '{"name": "get_weather", "parameters": {"city": "Oslo"}}'
HARMONY_1 = (
    "<|channel|>analysis<|message|>The user wants the weather.<|end|>"
    '<|start|>assistant to=functions.get_weather<|channel|>commentary json<|message|>{"city": "Oslo"}'
)
DS_CALL = "<｜tool▁call▁begin｜>{}<｜tool▁sep｜>{}<｜tool▁call▁end｜>"
DS_1 = (
    "<｜tool▁calls▁begin｜>"
    + DS_CALL.format("get_weather", '{"city": "Oslo"}')
    + "<｜tool▁calls▁end｜>"
)
DS_2 = (
    "<｜tool▁calls▁begin｜>"
    + DS_CALL.format("get_weather", '{"city": "Oslo"}')
    + DS_CALL.format("get_time", '{"zone": "CET"}')
    + "<｜tool▁calls▁end｜>"
)
R1_CALL = "<｜tool▁call▁begin｜>function<｜tool▁sep｜>{}\n```json\n{}\n```<｜tool▁call▁end｜>"
R1_2 = (
    "<｜tool▁calls▁begin｜>"
    + R1_CALL.format("get_weather", '{"city": "Oslo"}')
    + "\n"
    + R1_CALL.format("get_time", '{"zone": "CET"}')
    + "<｜tool▁calls▁end｜>"
)
GRANITE_2 = (
    '<|tool_call|>[{"name": "get_weather", "arguments": {"city": "Oslo"}}, '
    '{"name": "get_time", "arguments": {"zone": "CET"}}]'
)
GLM_CALL = "<tool_call>{}\n<arg_key>{}</arg_key>\n<arg_value>{}</arg_value>\n</tool_call>"
GLM_1 = "\n<think>I should call.</think>\n" + GLM_CALL.format("get_weather", "city", "Oslo")
GLM_2 = (
    "\n<think></think>\n"
    + GLM_CALL.format("get_weather", "city", "Oslo")
    + "\n"
    + GLM_CALL.format("get_time", "zone", "CET")
)
GEMMA_1 = '<|tool_call>call:get_weather{city:<|"|>Oslo<|"|>}<tool_call|>'
GEMMA_2 = GEMMA_1 + '<|tool_call>call:get_time{zone:<|"|>CET<|"|>}<tool_call|>'
GEMMA_DAYS = '<|tool_call>call:get_weather{city:<|"|>Oslo<|"|>,days:3}<tool_call|>'
HARMONY_BARE = ' to=functions.get_weather<|channel|>commentary json<|message|>{"city": "Oslo"}'
# llama.cpp's JSON grammars allow whitespace after a value: it is the arguments' own
HERMES_SPACED = (
    '<tool_call>\n{"name": "get_weather", "arguments": { "city": "Oslo" } \n}\n</tool_call>'
)
LLAMA_SPACED = '{"name": "get_weather", "parameters": {"city": "Oslo"}\n }'
SMALL_SPACED = SMALL_1 + " \n" + SMALL_2[len(SMALL_1) :]

# template file, its family, generated outputs with the calls each holds
CASES = [
    (
        "Qwen-Qwen2.5-7B-Instruct",
        "hermes",
        [HERMES_1, HERMES_2, "Let me look.\n" + HERMES_1, HERMES_SPACED],
    ),
    ("Qwen-Qwen3-0.6B", "hermes", [HERMES_1, HERMES_2, "Let me look.\n" + HERMES_1]),
    ("NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use", "hermes", [HERMES_1, HERMES_2]),
    ("NousResearch-Hermes-3-Llama-3.1-8B-tool_use", "hermes", [HERMES_1, HERMES_2]),
    ("Qwen3-Coder", "qwen3-coder", [CODER_1, CODER_2]),
    ("meta-llama-Llama-3.1-8B-Instruct", "llama3", [LLAMA_1, LLAMA_SPACED]),
    ("meta-llama-Llama-3.2-3B-Instruct", "llama3", [LLAMA_1]),
    ("meta-llama-Llama-3.3-70B-Instruct", "llama3", [LLAMA_1]),
    ("Mistral-Small-3.2-24B-Instruct-2506", "mistral-ids", [SMALL_1, SMALL_2, SMALL_SPACED]),
    ("unsloth-mistral-Devstral-Small-2507", "mistral", [DEVSTRAL_1, "Let me look." + DEVSTRAL_1]),
    ("mistralai-Mistral-Nemo-Instruct-2407", "mistral-nemo", [NEMO_1, NEMO_2]),
    ("openai-gpt-oss-120b", "harmony", [HARMONY_1, HARMONY_BARE]),
    ("deepseek-ai-DeepSeek-V3.1", "deepseek-v3", [DS_1, DS_2]),
    ("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B", "deepseek-r1", [R1_2]),
    ("ibm-granite-granite-3.3-2B-Instruct", "granite", [GRANITE_2, "Let me look." + GRANITE_2]),
    ("GLM-4.6", "glm", [GLM_1, GLM_2]),
    (
        "mistralai-Ministral-3-14B-Reasoning-2512",
        "mistral",
        [DEVSTRAL_1, "[THINK]The user wants the weather.[/THINK]" + DEVSTRAL_1],
    ),
    ("google-gemma-4-31B-it", "gemma", [GEMMA_1, GEMMA_2, GEMMA_DAYS, "Let me look." + GEMMA_1]),
]
# Templates whose own rule changes what was generated when they render it back (the
# R1 distills write a call turn without the <think> block their generation prompt
# opened, Gemma 4 without its empty thought channel): reuse stops there, by the
# template's choice (docs/models.md).
TEMPLATE_REWRITES = {"deepseek-r1", "gemma"}
EXPECTED = {
    "get_weather": {"city": "Oslo"},
    "get_time": {"zone": "CET"},
}


def renderer(name: str) -> PromptRenderer:
    source = (TEMPLATES / f"{name}.jinja").read_text()
    return PromptRenderer(source, bos_token="<s>", eos_token="</s>")


def parse(r: PromptRenderer, text: str, *, chunk: int = 1) -> tuple[list[Item], list[ev.Event]]:
    """The output items (and their events) the server makes of `text` streamed in chunks."""
    out = OutputBuilder(ev.Sequencer(), r.family.parser(TOOLS), set())
    events = []
    for i in range(0, len(text), chunk):
        events += out.feed(text[i : i + chunk])
    events += out.finish()
    return out.items, events


@pytest.mark.parametrize(("name", "family", "outputs"), CASES)
def test_detected_family(name: str, family: str, outputs: list[str]) -> None:
    assert renderer(name).family.name == family


@pytest.mark.parametrize(("name", "family", "outputs"), CASES)
@pytest.mark.parametrize("chunk", [1, 7, 10_000])
def test_parse_calls_in_the_family_syntax(
    name: str, family: str, outputs: list[str], chunk: int
) -> None:
    r = renderer(name)
    for text in outputs:
        items, events = parse(r, text, chunk=chunk)
        calls = [i for i in items if isinstance(i, FunctionCallItem)]
        assert calls, text
        for call in calls:
            args = json.loads(call.arguments)
            assert {k: v for k, v in args.items() if k != "days"} == EXPECTED[call.name]
        messages = [i for i in items if isinstance(i, MessageItem)]
        assert [m.text for m in messages] == (["Let me look."] if "Let me" in text else [])
        # the arguments streamed as deltas add up to the final arguments
        for call in calls:
            deltas = "".join(
                e["delta"]
                for e in events
                if e["type"] == "response.function_call_arguments.delta" and e["item_id"] == call.id
            )
            assert deltas == call.arguments


@pytest.mark.parametrize(("name", "family", "outputs"), CASES)
def test_round_trip_renders_what_was_generated(name: str, family: str, outputs: list[str]) -> None:
    """History + parsed output, rendered, starts with the prompt + the generated text: a
    continuation with the calls' outputs computes only the new items."""
    if family in TEMPLATE_REWRITES:
        pytest.skip("the template rewrites the turn: see test_r1_distills_rewrite_the_call_turn")
    r = renderer(name)
    # Nemo's template writes the system prompt into the last user message only while
    # that message is the last one: instructions are the template's own break in reuse.
    head = r.head(None if family == "mistral-nemo" else "You are terse.", TOOLS)
    user = MessageItem("u1", "user", "What is the weather in Oslo?")
    prompt = r.render(head, [user])
    for text in outputs:
        items, _ = parse(r, text)
        results = [
            FunctionCallOutputItem(f"o{k}", i.call_id, "sunny")
            for k, i in enumerate(items)
            if isinstance(i, FunctionCallItem)
        ]
        after = r.render(head, [user, *items, *results])
        assert after.startswith(prompt + text), (prompt + text, after)
        assert "sunny" in after


def test_tool_calls_render_natively_not_as_a_system_frame() -> None:
    r = renderer("Qwen-Qwen2.5-7B-Instruct")
    text = r.render(r.head("Be brief.", TOOLS), [MessageItem("u", "user", "Hi")])
    assert '"name": "get_weather"' in text and "<tools>" in text
    assert "Each line is one function's JSON signature" not in text  # the generic frame
    items, _ = parse(r, HERMES_1)
    after = r.render(
        r.head("Be brief.", TOOLS),
        [
            MessageItem("u", "user", "Hi"),
            *items,
            FunctionCallOutputItem("o", items[0].call_id, "7"),
        ],  # type: ignore[union-attr]
    )
    assert "<tool_response>\n7\n</tool_response>" in after


def test_text_without_tools_passes_through() -> None:
    r = renderer("Qwen-Qwen2.5-7B-Instruct")
    out = OutputBuilder(ev.Sequencer(), r.family.parser(()), set())
    out.feed(HERMES_1)
    out.finish()
    assert [type(i).__name__ for i in out.items] == ["MessageItem"]


@pytest.mark.parametrize(
    ("name", "text"),
    [
        (
            "Qwen-Qwen2.5-7B-Instruct",
            '<tool_call>\n{"name": "nope", "arguments": {}}\n</tool_call>',
        ),
        ("Qwen-Qwen2.5-7B-Instruct", "<tool_call> not json at all"),
        ("meta-llama-Llama-3.1-8B-Instruct", '{"answer": 42}'),
        ("Qwen3-Coder", "<tool_call>\n<function=nope>\n</function>\n</tool_call>"),
        ("google-gemma-4-31B-it", "<|tool_call>call:nope{}<tool_call|>"),
        ("google-gemma-4-31B-it", "<|tool_call>not a call"),
    ],
)
def test_what_is_not_a_call_to_a_known_tool_is_text(name: str, text: str) -> None:
    items, _ = parse(renderer(name), text)
    assert [type(i).__name__ for i in items] == ["MessageItem"]
    assert isinstance(items[0], MessageItem) and items[0].text == text.strip()


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("Qwen-Qwen2.5-7B-Instruct", '<tool_call>\n{"name": "get_weather", "arguments": {"ci'),
        (
            "mistralai-Mistral-Nemo-Instruct-2407",
            '[TOOL_CALLS][{"name": "get_weather", "arguments": {',
        ),
        ("Qwen3-Coder", "<tool_call>\n<function=get_weather>\n<parameter=city>\nOs"),
        ("google-gemma-4-31B-it", '<|tool_call>call:get_weather{city:<|"|>Os'),
    ],
)
def test_a_call_the_output_breaks_off_ends_incomplete(name: str, text: str) -> None:
    r = renderer(name)
    out = OutputBuilder(ev.Sequencer(), r.family.parser(TOOLS), set())
    for c in text:
        out.feed(c)
    events = out.finish()
    wire = out.items_wire()
    assert [w["type"] for w in wire] == ["function_call"]
    assert wire[0]["status"] == "incomplete"
    assert events[-1]["type"] == "response.output_item.done"


def test_raw_arguments_render_as_generated_even_inside_a_larger_object() -> None:
    args = RawArgs('{ "city":"Oslo" }')
    assert args == {"city": "Oslo"}
    assert tojson(args) == '{ "city":"Oslo" }'
    assert (
        tojson({"name": "f", "arguments": args}) == '{"name": "f", "arguments": { "city":"Oslo" }}'
    )
    assert tojson({"x": "<&>"}) == '{"x": "<&>"}'  # no HTML escapes


def test_mistral_ids_are_nine_characters_and_stable() -> None:
    assert id9("a1b2c3d4e") == "a1b2c3d4e"
    made = id9("call_0123456789abcdef")
    assert len(made) == 9 and made.isalnum() and made == id9("call_0123456789abcdef")


def test_client_call_ids_satisfy_a_template_that_demands_nine_characters() -> None:
    r = renderer("Mistral-Small-3.2-24B-Instruct-2506")
    head = r.head(None, TOOLS)
    items = [
        MessageItem("u", "user", "Weather?"),
        FunctionCallItem("fc", "call_abc", "get_weather", '{"city": "Oslo"}'),
        FunctionCallOutputItem("o", "call_abc", "sunny"),
    ]
    text = r.render(head, items)
    assert f"[CALL_ID]{id9('call_abc')}" in text and f"[TOOL_RESULTS]{id9('call_abc')}" in text


def test_unknown_templates_get_the_generic_frame() -> None:
    assert family_for("{{ messages }}").name == "generic"
    assert renderer("google-gemma-2-2b-it").family.name == "generic"


@pytest.mark.parametrize("name", sorted({c[0] for c in CASES}))
@pytest.mark.parametrize("parallel", [False, True])
def test_each_family_grammar_parses_in_llama_cpp(name: str, parallel: bool) -> None:
    family = renderer(name).family
    grammar = Grammars(json_schema_to_gbnf, family).tool_calls(TOOLS, parallel=parallel)
    assert llama_accepts(grammar)  # tool_choice required / named
    assert llama_accepts(grammar, family.trigger())  # auto: lazy from the family's marker


@pytest.mark.parametrize(("name", "family", "outputs"), CASES)
def test_the_lazy_trigger_fires_at_the_family_marker(
    name: str, family: str, outputs: list[str]
) -> None:
    trigger = re.compile(renderer(name).family.trigger())
    for text in outputs:
        m = trigger.fullmatch(text)
        assert m is not None, text
        before = re.sub(
            r"^\s*(<think>.*?</think>|\[THINK\].*?\[/THINK\])", "", text[: m.start(1)], flags=re.S
        ).strip()
        if family == "harmony":  # the analysis message may come first
            assert before in (
                "",
                "<|channel|>analysis<|message|>The user wants the weather.<|end|><|start|>assistant",
            )
        else:
            assert before in ("", "Let me look."), text


def test_a_template_without_a_system_role_gets_the_system_text_in_the_first_user_turn() -> None:
    r = renderer("google-gemma-2-2b-it")  # its template raises on a system message
    assert not r.system_role
    text = r.render(r.head("Be brief.", ()), [MessageItem("u", "user", "Hi")])
    assert text == "<s><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n"


def test_gemma_gguf_without_a_template_gets_gemma_turns_and_keeps_tool_loops_warm() -> None:
    r = PromptRenderer(fallback_template("gemma3"), bos_token="<bos>")
    assert r.family.name == "generic" and r.system_role
    head = r.head("Be brief.", TOOLS)
    user = MessageItem("u", "user", "Weather in Oslo?")
    warm = r.render(head, [], add_generation_prompt=False)  # a warm-up of the head alone
    prompt = r.render(head, [user])
    assert prompt.startswith(warm) and warm.startswith("<bos><start_of_turn>user\nBe brief.")
    assert prompt.endswith("Weather in Oslo?<end_of_turn>\n<start_of_turn>model\n")
    items, _ = parse(r, HERMES_2)
    results = [
        FunctionCallOutputItem(f"o{k}", i.call_id, "sunny")
        for k, i in enumerate(items)
        if isinstance(i, FunctionCallItem)
    ]
    after = r.render(head, [user, *items, *results])
    assert after.startswith(prompt + HERMES_2 + "<end_of_turn>\n<start_of_turn>user\nsunny")
    assert fallback_template("llama") == CHATML_TEMPLATE


# ----- reasoning ----------------------------------------------------------------------------
THOUGHT = "<think>\nThe user wants the weather.\nI will call the tool.\n</think>\n\n"


@pytest.mark.parametrize("chunk", [1, 3, 10_000])
def test_think_becomes_a_reasoning_item_before_the_calls(chunk: int) -> None:
    r = renderer("Qwen-Qwen3-0.6B")
    assert r.family.thinks
    items, events = parse(r, THOUGHT + HERMES_1, chunk=chunk)
    reasoning, call = items
    assert isinstance(reasoning, ReasoningItem) and isinstance(call, FunctionCallItem)
    assert reasoning.text == "The user wants the weather.\nI will call the tool."
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.reasoning_text.delta")
    assert deltas == reasoning.text
    kinds = [e["type"] for e in events]
    assert kinds[0] == "response.output_item.added" and events[0]["item"]["type"] == "reasoning"
    assert kinds.index("response.reasoning_text.done") < kinds.index(
        "response.function_call_arguments.done"
    )


def test_reasoning_round_trips_through_qwen3s_template_in_a_tool_loop() -> None:
    r = renderer("Qwen-Qwen3-0.6B")
    head = r.head("You are terse.", TOOLS)
    user = MessageItem("u", "user", "Weather in Oslo?")
    prompt = r.render(head, [user])
    for text in (THOUGHT + HERMES_1, THOUGHT + "Let me look.\n" + HERMES_2):
        items, _ = parse(r, text)
        results = [
            FunctionCallOutputItem(f"o{k}", i.call_id, "sunny")
            for k, i in enumerate(items)
            if isinstance(i, FunctionCallItem)
        ]
        after = r.render(head, [user, *items, *results])
        assert after.startswith(prompt + text), (prompt + text, after)


def test_reasoning_then_an_answer_and_an_unfinished_thought() -> None:
    r = renderer("Qwen-Qwen3-0.6B")
    items, _ = parse(r, "<think>\nEasy.\n</think>\n\nIt is sunny.")
    assert [(type(i).__name__, getattr(i, "text", "")) for i in items] == [
        ("ReasoningItem", "Easy."),
        ("MessageItem", "It is sunny."),
    ]
    out = OutputBuilder(ev.Sequencer(), r.family.parser(TOOLS), set())
    out.feed("<think>\nStill thinking")
    out.finish()
    assert [w["status"] for w in out.items_wire()] == ["incomplete"]
    # no <think> at all: plain text, even from a thinking family
    items, _ = parse(r, "Just text.")
    assert [type(i).__name__ for i in items] == ["MessageItem"]


def test_a_prompt_that_opens_the_reasoning_starts_the_parser_inside_it() -> None:
    r = renderer("Qwen-Qwen3-0.6B")
    parser = r.family.parser(TOOLS, "<|im_start|>assistant\n<think>\n")
    out = OutputBuilder(ev.Sequencer(), parser, set())
    out.feed("Hmm.\n</think>\n\nHi.")
    out.finish()
    assert [type(i).__name__ for i in out.items] == ["ReasoningItem", "MessageItem"]


def test_reasoning_effort_none_turns_qwen3_thinking_off() -> None:
    r = renderer("Qwen-Qwen3-0.6B")
    head = r.head(None, (), (("enable_thinking", False),))
    assert r.render(head, [MessageItem("u", "user", "Hi")]).endswith("<think>\n\n</think>\n\n")


def test_the_generic_frame_renders_reasoning_as_it_was_generated() -> None:
    r = PromptRenderer(CHATML_TEMPLATE)
    items: list[Item] = [
        MessageItem("u", "user", "Hi"),
        ReasoningItem("r", "Think."),
        MessageItem("a", "assistant", "Hello."),
    ]
    text = r.render(None, items)
    assert "<|im_start|>assistant\n<think>\nThink.\n</think>\n\nHello.<|im_end|>" in text


def test_sealed_reasoning_opens_only_for_its_tenant_and_key() -> None:
    sealer = Sealer("fleet-secret")
    blob = sealer.seal("Thinking, with ünïcode.", "tenant-a")
    assert sealer.open(blob, "tenant-a", "p") == "Thinking, with ünïcode."
    assert Sealer("fleet-secret").open(blob, "tenant-a", "p")  # another worker, same key
    for bad_key, tenant, text in [
        ("other-secret", "tenant-a", blob),
        ("fleet-secret", "tenant-b", blob),
        ("fleet-secret", "tenant-a", blob[:-2] + "xx"),
        ("fleet-secret", "tenant-a", "wlr1.Zm9v"),
        ("fleet-secret", "tenant-a", "not a blob"),
    ]:
        with pytest.raises(InvalidRequest) as err:
            Sealer(bad_key).open(text, tenant, "input[0].encrypted_content")
        assert err.value.code == "invalid_encrypted_content"
        assert err.value.param == "input[0].encrypted_content"


def test_harmony_channels_become_reasoning_text_and_calls() -> None:
    r = renderer("openai-gpt-oss-120b")
    items, _ = parse(r, HARMONY_1, chunk=3)
    assert [type(i).__name__ for i in items] == ["ReasoningItem", "FunctionCallItem"]
    assert isinstance(items[0], ReasoningItem) and items[0].text == "The user wants the weather."
    # the channel-header form the model also writes, and a final answer
    other = (
        '<|channel|>commentary to=functions.get_time <|constrain|>json<|message|>{"zone": "CET"}'
    )
    items, _ = parse(r, other, chunk=2)
    assert isinstance(items[0], FunctionCallItem) and items[0].name == "get_time"
    items, _ = parse(
        r,
        "<|channel|>analysis<|message|>Easy.<|end|><|start|>assistant<|channel|>final<|message|>Sunny.",
    )
    assert [(type(i).__name__, getattr(i, "text", "")) for i in items] == [
        ("ReasoningItem", "Easy."),
        ("MessageItem", "Sunny."),
    ]


def test_harmony_effort_reaches_the_template() -> None:
    r = renderer("openai-gpt-oss-120b")
    head = r.head("Be brief.", TOOLS, (("enable_thinking", True), ("reasoning_effort", "high")))
    text = r.render(head, [MessageItem("u", "user", "Hi")])
    assert "Reasoning: high" in text and text.endswith("<|start|>assistant")


def test_r1_distills_rewrite_the_call_turn() -> None:
    """The known cost: the prompt opened <think>, the rendered call turn has none."""
    r = renderer("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B")
    head = r.head(None, TOOLS)
    user = MessageItem("u", "user", "Weather?")
    prompt = r.render(head, [user])
    assert prompt.endswith("<｜Assistant｜><think>\n</think>")
    items, _ = parse(r, R1_2)
    after = r.render(head, [user, *items])
    assert not after.startswith(prompt)
    assert (
        "<｜Assistant｜><｜tool▁calls▁begin｜>" + R1_CALL.format("get_weather", '{"city": "Oslo"}')
        in after
    )


def test_mistral_think_is_reasoning_rendered_back_as_a_thinking_block() -> None:
    r = renderer("mistralai-Ministral-3-14B-Reasoning-2512")
    assert r.family.thinks
    text = "[THINK]Let me check the weather.\nThen answer.[/THINK]" + DEVSTRAL_1
    items, events = parse(r, text, chunk=2)
    assert [type(i).__name__ for i in items] == ["ReasoningItem", "FunctionCallItem"]
    assert isinstance(items[0], ReasoningItem)
    assert items[0].text == "Let me check the weather.\nThen answer."  # newlines are its own
    assert any(e["type"] == "response.reasoning_text.delta" for e in events)
    items, _ = parse(r, "[THINK]Easy.[/THINK]Sunny.")
    assert [getattr(i, "text", "") for i in items] == ["Easy.", "Sunny."]


@pytest.mark.parametrize("answer", ["It is sunny.", ""])
def test_reasoning_history_keep_restores_what_the_template_dropped(answer: str) -> None:
    """Qwen3 drops a turn's reasoning once a new user message follows; `keep` continues
    the chain as generated instead, so the new turn is the chain + only the new text."""
    r = renderer("Qwen-Qwen3-0.6B")
    head = r.head(None, ())
    first = [MessageItem("u1", "user", "Weather?")]
    generated = "<think>\nLet me think.\n</think>\n\n" + answer
    chain = r.render(head, first) + generated
    history: list[Item] = [*first, ReasoningItem("r", "Let me think.")]
    if answer:
        history.append(MessageItem("a", "assistant", answer))
    text = r.render(head, [*history, MessageItem("u2", "user", "And tomorrow?")])
    assert not text.startswith(chain)  # the template dropped the reasoning
    markup = r.family.reasoning_markup
    new = kept_reasoning(text, chain, ["Let me think."], markup)
    assert new is not None and new.endswith("And tomorrow?<|im_end|>\n<|im_start|>assistant\n")
    assert new.startswith("<|im_end|>\n<|im_start|>user\n")
    # only reasoning may be restored: any other difference keeps the template's text
    assert kept_reasoning(text, chain, ["something else"], markup) is None
    changed = text.replace("Weather", "Climate")
    assert kept_reasoning(changed, chain, ["Let me think."], markup) is None


def test_reasoning_history_keep_on_harmony_after_a_final_answer() -> None:
    r = renderer("openai-gpt-oss-120b")
    head = r.head(None, ())
    first = [MessageItem("u1", "user", "Weather?")]
    generated = (
        "<|channel|>analysis<|message|>Think it over.<|end|>"
        "<|start|>assistant<|channel|>final<|message|>Sunny."
    )
    chain = r.render(head, first) + generated
    history = [
        *first,
        ReasoningItem("r", "Think it over."),
        MessageItem("a", "assistant", "Sunny."),
    ]
    text = r.render(head, [*history, MessageItem("u2", "user", "Tomorrow?")])
    assert not text.startswith(chain)  # gpt-oss drops the analysis after a final answer
    new = kept_reasoning(text, chain, ["Think it over."], r.family.reasoning_markup)
    assert new is not None and new.startswith("<|end|><|start|>user<|message|>Tomorrow?")


# llama.cpp's tests/test-chat.cpp, Gemma 4: outputs and the arguments they carry
GEMMA_FACTS = [
    ('get_time{city:<|"|>San Francisco<|"|>}', {"city": "San Francisco"}),
    ("empty_args{}", {}),
    ("special_function{arg1:42}", {"arg1": 42}),
    ("special_function{arg1:-7}", {"arg1": -7}),
    ("amount{orig:3.14}", {"orig": 3.14}),
    ("amount{orig:1.5e10}", {"orig": 1.5e10}),
    ("toggle{enabled:true}", {"enabled": True}),
    ("toggle{enabled:false}", {"enabled": False}),
    ("set_nullable{value:null}", {"value": None}),
    (
        'todo_list{todos:[<|"|>buy milk<|"|>,<|"|>walk dog<|"|>]}',
        {"todos": ["buy milk", "walk dog"]},
    ),
    (
        'set_config{config:{count:3,theme:<|"|>dark<|"|>}}',
        {"config": {"count": 3, "theme": "dark"}},
    ),
    ("todo_list{todos:[]}", {"todos": []}),
    ("set_config{config:{}}", {"config": {}}),
    ('get_time{city:<|"|>a{b},c:"d"<|"|>}', {"city": 'a{b},c:"d"'}),  # nothing escaped inside
]
# Google's parser reads a bare word as a string; the template writes it back quoted
GEMMA_FACTS.append(("get_time{city:Oslo}", {"city": "Oslo"}))


def test_a_broken_gemma_call_ends_incomplete_at_its_closing_tag() -> None:
    items, _ = parse(
        renderer("google-gemma-4-31B-it"),
        "<|tool_call>call:get_weather{city<tool_call|>Sorry.",
    )
    assert [type(i).__name__ for i in items] == ["FunctionCallItem", "MessageItem"]
    assert items[1].text == "Sorry."  # type: ignore[union-attr]


@pytest.mark.parametrize(("call", "expected"), GEMMA_FACTS)
def test_gemma4_notation_becomes_json_and_renders_back_as_generated(
    call: str, expected: dict[str, object]
) -> None:
    r = renderer("google-gemma-4-31B-it")
    name = call.split("{", 1)[0]
    tools = (FunctionTool(name, "", {"type": "object"}, False),)
    text = f"<|tool_call>call:{call}<tool_call|>"
    out = OutputBuilder(ev.Sequencer(), r.family.parser(tools), set())
    events = [e for c in text for e in out.feed(c)] + out.finish()
    (item,) = out.items
    assert isinstance(item, FunctionCallItem) and item.name == name
    assert json.loads(item.arguments) == expected
    deltas = "".join(e["delta"] for e in events if e["type"].endswith("arguments.delta"))
    assert deltas == item.arguments
    # the template writes the call back as it was generated: numbers as written, the
    # keys sorted (the grammar writes them in that order), strings unescaped; a bare
    # word goes back quoted
    text = text.replace("city:Oslo", 'city:<|"|>Oslo<|"|>')
    head = r.head(None, tools)
    user = MessageItem("u", "user", "Go.")
    after = r.render(head, [user, item, FunctionCallOutputItem("o", item.call_id, "ok")])
    assert "<|turn>model\n" + text + "<|tool_response>" in after


def test_gemma4_continues_a_tool_loop_from_what_it_generated() -> None:
    """The template drops the generation prompt's empty thought channel from the call
    turn: the rest of the turn renders as generated, and `--reasoning-history keep`
    continues the chain itself, so the next turn is only the tool's output."""
    r = renderer("google-gemma-4-31B-it")
    head = r.head("You are terse.", TOOLS)
    user = MessageItem("u1", "user", "What is the weather in Oslo?")
    prompt = r.render(head, [user])
    assert prompt.endswith("<|turn>model\n<|channel>thought\n<channel|>")
    for text in (GEMMA_1, GEMMA_2, GEMMA_DAYS):
        items, _ = parse(r, text)
        results = [
            FunctionCallOutputItem(f"o{k}", i.call_id, "sunny")
            for k, i in enumerate(items)
            if isinstance(i, FunctionCallItem)
        ]
        after = r.render(head, [user, *items, *results])
        dropped = prompt.removesuffix("<|channel>thought\n<channel|>")
        assert after.startswith(dropped + text + "<|tool_response>response:get_")
        new = kept_reasoning(after, prompt + text, [], r.family.reasoning_markup)
        assert new is not None and new.startswith("<|tool_response>response:get_")
        assert new.endswith("<tool_response|>") and "sunny" in new


def test_gemma4_reasons_in_its_thought_channel() -> None:
    r = renderer("google-gemma-4-31B-it")
    text = "<|channel>thought\nI'm\nthinking<channel|>" + GEMMA_1
    items, events = parse(r, text)
    assert isinstance(items[0], ReasoningItem) and items[0].text == "I'm\nthinking"
    assert isinstance(items[1], FunctionCallItem)
    assert any(e["type"] == "response.reasoning_text.delta" for e in events)


FUNCTION_GEMMA = (
    "{{ bos_token }}{%- for message in messages -%}{%- for tool_call in message.get("
    "'tool_calls', []) -%}{{- '<start_function_call>call:' + tool_call['function']['name']"
    " + '{' -}}{%- endfor -%}{%- endfor -%}"
)


def test_function_gemma_reads_googles_documented_call() -> None:
    """FunctionGemma's template is not in llama.cpp's corpus: the family is found by its
    marker and reads the call Google's documentation shows."""
    family = family_for(FUNCTION_GEMMA)
    assert family.name == "function-gemma" and not family.thinks
    tool = FunctionTool(
        "get_current_temperature",
        "",
        {"type": "object", "properties": {"location": {"type": "string"}}},
        False,
    )
    text = (
        "<start_function_call>call:get_current_temperature{location:<escape>London<escape>}"
        "<end_function_call>"
    )
    out = OutputBuilder(ev.Sequencer(), family.parser((tool,)), set())
    out.feed(text)
    out.finish()
    (item,) = out.items
    assert isinstance(item, FunctionCallItem)
    assert json.loads(item.arguments) == {"location": "London"}
    grammar = Grammars(json_schema_to_gbnf, family).tool_calls((tool,), parallel=True)
    assert '"<escape>"' in grammar and llama_accepts(grammar, family.trigger())


def test_gemma_grammar_writes_keys_in_the_templates_order() -> None:
    """Keys come sorted as dictsort sorts them (case-insensitively), optional ones may
    be left out, required ones may not; values in Gemma's notation."""
    tool = FunctionTool(
        "f",
        "",
        {
            "type": "object",
            "properties": {
                "zeta": {"type": "string", "enum": ["a", "b"]},
                "Alpha": {"type": "integer"},
                "mid": {
                    "type": "object",
                    "properties": {"y": {"type": "boolean"}, "x": {"type": "number"}},
                    "required": ["y"],
                },
                "list": {"type": "array", "items": {"type": ["string", "null"]}},
            },
            "required": ["zeta", "list"],
        },
        False,
    )
    family = renderer("google-gemma-4-31B-it").family
    grammar = Grammars(json_schema_to_gbnf, family).tool_calls((tool,), parallel=True)
    assert llama_accepts(grammar) and llama_accepts(grammar, family.trigger())
    accepts = gbnf_regex(grammar).fullmatch
    q = '<|"|>'
    call = "<|tool_call>call:f{{{}}}<tool_call|>".format
    full = f"Alpha:-12,list:[{q}x, y{q},null],mid:{{x:1.5e3,y:true}},zeta:{q}a{q}"
    assert accepts(call(full))
    assert accepts(call(f"list:[],zeta:{q}b{q}") * 2)  # parallel calls, optional keys left out
    assert accepts(call(f"list:[],mid:{{y:false}},zeta:{q}b{q}"))
    assert not accepts(call(f"zeta:{q}a{q},list:[]"))  # not in the template's order
    assert not accepts(call("list:[]"))  # zeta is required
    assert not accepts(call(f"list:[],zeta:{q}c{q}"))  # not in the enum
    assert not accepts(call(f"list:[],mid:{{x:1}},zeta:{q}a{q}"))  # mid.y is required
    assert not accepts(call(f"list:[{q}a{q}b{q}],zeta:{q}a{q}"))  # a quote inside a string
    # the grammar's output is what the parser reads back
    out = OutputBuilder(ev.Sequencer(), family.parser((tool,)), set())
    out.feed(call(full))
    out.finish()
    (item,) = out.items
    assert json.loads(item.arguments) == {  # type: ignore[union-attr]
        "Alpha": -12,
        "list": ["x, y", None],
        "mid": {"x": 1500.0, "y": True},
        "zeta": "a",
    }


@pytest.mark.parametrize("name", ["Qwen3-Coder", "GLM-4.6", "meta-llama-Llama-3.1-8B-Instruct"])
def test_every_text_that_fires_the_lazy_grammar_is_in_the_grammar(name: str) -> None:
    """llama.cpp feeds the output from the trigger's match on into the grammar and aborts
    the whole process if the grammar cannot take it. Qwen3-Coder's models also write a
    bare `<function=…>` (a marker, so a trigger): the lazy grammar must accept that form
    as well as the template's <tool_call>-wrapped one; forced, only the template's."""
    family = renderer(name).family
    trigger = re.compile(family.trigger())
    grammars = Grammars(json_schema_to_gbnf, family)
    lazy = gbnf_regex(grammars.tool_calls((WEATHER,), parallel=False)).fullmatch
    forced = gbnf_regex(grammars.tool_calls((WEATHER,), parallel=False, forced=True)).fullmatch
    calls = {
        "qwen3-coder": {
            "<tool_call>": "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n"
            "</parameter>\n</function>\n</tool_call>",
            "<function=": "<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
            "</function>",
        },
        "glm": {
            "<tool_call>": "<tool_call>get_weather\n<arg_key>city</arg_key>\n"
            "<arg_value>Paris</arg_value>\n</tool_call>"
        },
        "llama3": {'{"name"': '{"name": "get_weather", "parameters": {"city": "Paris"}}'},
    }[family.name]
    for marker in family.markers:
        prefix = "" if family.calls_open_message_only else "Let me check. "
        fired = trigger.fullmatch(prefix + marker + " …")
        if fired is None:
            continue  # not a trigger (Llama 3's <|python_tag|>)
        assert marker in calls, f"{family.name}: no example call opening with {marker!r}"
        text = calls[marker]
        assert lazy(text), (family.name, marker)
    if family.name == "qwen3-coder":
        assert forced(calls["<tool_call>"]) and not forced(calls["<function="])
