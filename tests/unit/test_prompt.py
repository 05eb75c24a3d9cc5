"""Prompt rendering with the GGUF chat template, and the prefix stability that delta-only
continuation depends on."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from warmloop.protocol.errors import InvalidRequest
from warmloop.protocol.items import (
    CompactionItem,
    FunctionCallItem,
    FunctionCallOutputItem,
    Item,
    MessageItem,
)
from warmloop.protocol.tools import FunctionTool
from warmloop.serving.families.generic import Generic, tool_call_text, tools_system_text
from warmloop.serving.prompt import CHATML_TEMPLATE, Head, PromptRenderer, compacted

SMOLLM2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
TOOL = FunctionTool("get_weather", "Weather.", {"type": "object", "properties": {}}, False)


def system_text(instructions: str | None, tools: list[FunctionTool]) -> Head:
    """The head of a request to a model whose template knows no tools (the generic frame)."""
    return Head(Generic().system(instructions, tools), tuple(tools))


def test_smollm2_default_system_prompt_and_generation_prompt() -> None:
    r = PromptRenderer(SMOLLM2)
    text = r.render(None, [MessageItem("m", "user", "Hi")])
    assert text == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
        "Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert not r.render(
        None, [MessageItem("m", "user", "Hi")], add_generation_prompt=False
    ).endswith("assistant\n")


def test_instructions_tools_and_roles() -> None:
    r = PromptRenderer(CHATML_TEMPLATE)
    items = [
        MessageItem("d", "developer", "Dev note."),
        MessageItem("u", "user", "Weather?"),
        FunctionCallItem("f1", "c1", "get_weather", '{"city": "Oslo"}'),
        FunctionCallItem("f2", "c2", "get_weather", '{"city": "Rome"}'),
        FunctionCallOutputItem("o1", "c1", "Sunny"),
        FunctionCallOutputItem("o2", "c2", "Rain"),
    ]
    text = r.render(system_text("Be brief.", [TOOL]), items)
    assert text.startswith("<|im_start|>system\nBe brief.\n\n# Tools")
    assert '{"name": "get_weather", "description": "Weather."' in text
    assert "<|im_start|>system\nDev note.<|im_end|>" in text  # developer -> system
    calls = (
        tool_call_text("get_weather", '{"city": "Oslo"}')
        + "\n"
        + tool_call_text("get_weather", '{"city": "Rome"}')
    )
    assert f"<|im_start|>assistant\n{calls}<|im_end|>" in text  # both calls, one turn
    assert "<|im_start|>tool\nSunny<|im_end|>\n<|im_start|>tool\nRain<|im_end|>" in text


def test_tool_call_text_is_what_the_grammar_writes() -> None:
    assert (
        tool_call_text("ns.f", '{"a": 1}')
        == '<tool_call>\n{"name": "ns.f", "arguments": {"a": 1}}\n</tool_call>'
    )
    assert "ns.f" in tools_system_text([FunctionTool("f", "", {}, False, "ns")])


def test_continuation_extends_the_previous_prompt_and_output() -> None:
    """render(H) + generated text is a prefix of render(H + output + new items)."""
    r = PromptRenderer(SMOLLM2)
    system = system_text("Rules.", [TOOL])
    history = [MessageItem("u1", "user", "Hello")]
    prompt = r.render(system, history)
    generated = "Hi there!"
    nxt = [*history, MessageItem("a1", "assistant", generated), MessageItem("u2", "user", "More")]
    assert r.render(system, nxt).startswith(prompt + generated)
    # a tool-call turn extends the same way
    call = FunctionCallItem("f", "c", "get_weather", "{}")
    nxt2 = [*history, call, FunctionCallOutputItem("o", "c", "ok")]
    assert r.render(system, nxt2).startswith(prompt + tool_call_text("get_weather", "{}"))


def test_warmup_render_is_a_prefix_of_the_next_turn() -> None:
    r = PromptRenderer(SMOLLM2)
    system = system_text("Rules.", [])
    head = [MessageItem("d", "developer", "Context.")]
    warm = r.render(system, head, add_generation_prompt=False)
    assert r.render(system, [*head, MessageItem("u", "user", "Go")]).startswith(warm)


def test_no_system_text_without_instructions_or_tools() -> None:
    assert system_text(None, []).system is None
    assert system_text("", []).system is None


# ----- exact renderings -----------------------------------------------------------------
def test_default_template_exact_rendering() -> None:
    r = PromptRenderer(None)  # no GGUF template: ChatML
    assert r.render(None, [MessageItem("u", "user", "Hi")]) == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert r.render(None, [MessageItem("u", "user", "Hi")], add_generation_prompt=False) == (
        "<|im_start|>user\nHi<|im_end|>\n"
    )
    assert PromptRenderer(CHATML_TEMPLATE).render(Head("S"), [MessageItem("u", "user", "Hi")]) == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_smollm2_keeps_its_default_system_prompt_only_without_a_system_message() -> None:
    r = PromptRenderer(SMOLLM2)
    text = r.render(Head("Rules."), [MessageItem("u", "user", "Hi")], add_generation_prompt=False)
    assert text == "<|im_start|>system\nRules.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    dev_first = r.render(None, [MessageItem("d", "developer", "Dev.")], add_generation_prompt=False)
    assert dev_first == "<|im_start|>system\nDev.<|im_end|>\n"  # developer counts as system


def test_instructions_and_tools_become_one_system_message() -> None:
    r = PromptRenderer(CHATML_TEMPLATE)
    system = system_text("Be brief.", [TOOL])
    assert system.system == "Be brief.\n\n" + tools_system_text([TOOL])
    msgs = r.family.messages(system.system, [MessageItem("u", "user", "Hi")])
    assert [m["role"] for m in msgs] == ["system", "user"]
    assert msgs[0]["content"].startswith("Be brief.\n\n# Tools\n\n")
    assert (
        '<tools>\n{"name": "get_weather", "description": "Weather.", "parameters": {"type": "object", "properties": {}}}\n</tools>'
        in msgs[0]["content"]
    )
    assert system_text(None, [TOOL]).system == tools_system_text([TOOL])
    assert system_text("Only.", []).system == "Only."


def test_messages_merge_calls_into_one_assistant_turn_and_outputs_are_tool_turns() -> None:
    r = PromptRenderer(CHATML_TEMPLATE)
    items = [
        MessageItem("u", "user", "Go"),
        MessageItem("a", "assistant", "Calling."),
        FunctionCallItem("f1", "c1", "a", "{}"),
        FunctionCallItem("f2", "c2", "b", '{"x": 1}', "ns"),
        FunctionCallOutputItem("o1", "c1", "A"),
        FunctionCallOutputItem("o2", "c2", "B"),
        FunctionCallItem("f3", "c3", "a", "[]"),
        MessageItem("s", "system", "Sys."),
    ]
    # the text and the calls after it are one turn, as the model wrote them
    assert r.family.messages(None, items) == [
        {"role": "user", "content": "Go"},
        {
            "role": "assistant",
            "content": "Calling.\n"
            + tool_call_text("a", "{}")
            + "\n"
            + tool_call_text("ns.b", '{"x": 1}'),
        },
        {"role": "tool", "content": "A"},
        {"role": "tool", "content": "B"},
        {"role": "assistant", "content": tool_call_text("a", "[]")},  # trailing calls flushed
        {"role": "system", "content": "Sys."},
    ]


def test_tool_call_text_escapes_the_name_and_keeps_arguments_verbatim() -> None:
    assert tool_call_text('a"b', '{ "k" :1 }') == (
        '<tool_call>\n{"name": "a\\"b", "arguments": { "k" :1 }}\n</tool_call>'
    )


def test_template_errors_are_invalid_requests() -> None:
    r = PromptRenderer("{{ raise_exception('no tools here') }}")
    with pytest.raises(InvalidRequest) as err:
        r.render(None, [MessageItem("u", "user", "Hi")])
    assert err.value.param == "input" and "no tools here" in err.value.message


def test_templates_see_bos_eos_and_strftime() -> None:
    r = PromptRenderer(
        "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{{ eos_token }}{% endfor %}"
        "{{ strftime_now('%Y') | length }}",
        bos_token="<s>",
        eos_token="</s>",
    )
    assert r.render(None, [MessageItem("u", "user", "x")]) == "<s>x</s>4"


# ----- prefix stability: the property delta-only continuation depends on ---------------
TEXTS = st.text(alphabet='ab \n{}"<|>', max_size=6)
OPENING = st.one_of(
    st.builds(MessageItem, st.just("u"), st.just("user"), TEXTS),
    st.builds(MessageItem, st.just("d"), st.sampled_from(["developer", "system"]), TEXTS),
)
MIDDLE = st.one_of(
    OPENING,
    st.builds(MessageItem, st.just("a"), st.just("assistant"), TEXTS),
    st.builds(FunctionCallItem, st.just("f"), st.just("c"), st.sampled_from(["f", "ns.g"]), TEXTS),
    st.builds(FunctionCallOutputItem, st.just("o"), st.just("c"), TEXTS),
)
# A prompt's history ends with what the client sent: a message or a tool's output.
LAST = st.one_of(OPENING, st.builds(FunctionCallOutputItem, st.just("o"), st.just("c"), TEXTS))
HISTORIES = st.builds(lambda mid, last: [*mid, last], st.lists(MIDDLE, max_size=5), LAST)
SYSTEMS = st.sampled_from([Head(None), Head("Rules."), system_text("Rules.", [TOOL])])
TEMPLATES = st.sampled_from([SMOLLM2, CHATML_TEMPLATE])


@settings(max_examples=150, deadline=None)
@given(TEMPLATES, SYSTEMS, HISTORIES, TEXTS, st.lists(LAST, max_size=3))
def test_assistant_text_continuation_is_prefix_stable(
    template: str, system: Head, history: list[Item], generated: str, new: list[Item]
) -> None:
    r = PromptRenderer(template)
    prompt = r.render(system, history)
    after = r.render(system, [*history, MessageItem("a", "assistant", generated), *new])
    assert after.startswith(prompt + generated)
    assert after[len(prompt + generated) :].startswith("<|im_end|>")


@settings(max_examples=150, deadline=None)
@given(
    TEMPLATES,
    SYSTEMS,
    HISTORIES,
    st.lists(
        st.tuples(st.sampled_from(["f", "ns.g"]), st.sampled_from(["{}", '{"a": 1}'])),
        min_size=1,
        max_size=3,
    ),
    st.lists(LAST, max_size=3),
)
def test_tool_call_continuation_is_prefix_stable(
    template: str,
    system: Head,
    history: list[Item],
    calls: list[tuple[str, str]],
    new: list[Item],
) -> None:
    """Parallel calls are generated joined by one newline, exactly as they are rendered."""
    r = PromptRenderer(template)
    prompt = r.render(system, history)
    generated = "\n".join(tool_call_text(name, args) for name, args in calls)
    items = [FunctionCallItem(f"f{k}", f"c{k}", n, a) for k, (n, a) in enumerate(calls)]
    outputs = [FunctionCallOutputItem(f"o{k}", f"c{k}", "ok") for k in range(len(calls))]
    after = r.render(system, [*history, *items, *outputs, *new])
    assert after.startswith(prompt + generated + "<|im_end|>")


@settings(max_examples=150, deadline=None)
@given(TEMPLATES, SYSTEMS, HISTORIES, st.lists(MIDDLE, max_size=3), LAST)
def test_warmup_is_a_prefix_of_any_next_turn(
    template: str, system: Head, history: list[Item], more: list[Item], last: Item
) -> None:
    r = PromptRenderer(template)
    warm = r.render(system, history, add_generation_prompt=False)
    assert r.render(system, [*history, *more, last]).startswith(warm)
    assert r.render(system, history) == warm + "<|im_start|>assistant\n"


def test_the_latest_compaction_stands_for_all_before_it_but_the_users_messages() -> None:
    """What the model sees of a history with compaction items: the fixed head and the
    user's messages verbatim, then the latest summary and what follows it. So a client
    may send every item or drop those before the summary: the prompt is the same."""
    dev = MessageItem("d", "developer", "Be terse.")
    task = MessageItem("u1", "user", "Fix the test.")
    call = FunctionCallItem("fc1", "c1", "read", "{}")
    out = FunctionCallOutputItem("o1", "c1", "def f(): ...")
    first = CompactionItem("cmp1", "older summary")
    reply = MessageItem("a1", "assistant", "Reading it.")
    latest = CompactionItem("cmp2", "newer summary")
    more = MessageItem("u2", "user", "Go on.")
    history = (dev, task, call, out, first, reply, latest, more)
    assert compacted(history) == (dev, task, latest, more)
    assert compacted(compacted(history)) == compacted(history)
    assert compacted((dev, task, latest, more)) == (dev, task, latest, more)
    assert compacted((task, call, out)) == (task, call, out)  # nothing compacted yet
