"""Prompt rendering with the GGUF chat template, and the prefix stability that delta-only
continuation depends on."""

from __future__ import annotations

from warmloop.protocol.items import FunctionCallItem, FunctionCallOutputItem, MessageItem
from warmloop.protocol.requests import FunctionTool
from warmloop.serving.prompt import (
    CHATML_TEMPLATE,
    PromptRenderer,
    system_text,
    tool_call_text,
    tools_system_text,
)

SMOLLM2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
TOOL = FunctionTool("get_weather", "Weather.", {"type": "object", "properties": {}}, False)


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
    assert system_text(None, []) is None
    assert system_text("", []) is None
