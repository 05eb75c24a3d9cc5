"""A model's Jinja chat template, rendered the way the model's authors render it.

Templates are written for Hugging Face's renderer, so the environment is that one:
sandboxed, `trim_blocks` and `lstrip_blocks`, loop controls, a `{% generation %}` tag
that only marks text, `raise_exception`, `strftime_now`, and a `tojson` that writes
plain JSON (Jinja's own escapes `<`, `>` and `&` for HTML).

One thing differs on purpose: a tool call's arguments travel as `RawArgs`, a dict that
remembers the exact text the model wrote. `tojson` writes that text back wherever the
arguments appear, alone or inside a larger object, so a call rendered as history is
the very text that was generated and its KV stays usable (Llama 3's and Hermes'
templates `tojson` the arguments; a model may have spaced them otherwise).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from jinja2 import nodes
from jinja2.exceptions import TemplateError
from jinja2.ext import Extension, loopcontrols
from jinja2.parser import Parser
from jinja2.sandbox import ImmutableSandboxedEnvironment


class RawArgs(dict[str, Any]):
    """Parsed tool-call arguments that also keep the text they were parsed from."""

    def __init__(self, raw: str) -> None:
        try:
            value = json.loads(raw)
        except ValueError:
            value = None
        super().__init__(value if isinstance(value, dict) else {})
        self.raw = raw


def tojson(
    value: Any,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
    ensure_ascii: bool = False,
) -> str:
    """Hugging Face's `tojson`, except that `RawArgs` keep their own text."""
    raws: dict[str, str] = {}

    def swap(v: Any) -> Any:
        if isinstance(v, RawArgs):
            key = f"\x00raw{secrets.token_hex(8)}\x00"
            raws[key] = v.raw
            return key
        if isinstance(v, Mapping):
            return {k: swap(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [swap(x) for x in v]
        return v

    text = json.dumps(
        swap(value),
        indent=indent,
        separators=separators,
        sort_keys=sort_keys,
        ensure_ascii=ensure_ascii,
    )
    for key, raw in raws.items():
        text = text.replace(json.dumps(key, ensure_ascii=ensure_ascii), raw)
    return text


class _Generation(Extension):
    """`{% generation %}…{% endgeneration %}` marks the assistant's text for training
    masks; rendering just writes the body."""

    tags = {"generation"}  # noqa: RUF012 (jinja2 declares it so)

    def parse(self, parser: Parser) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.Scope(body, lineno=lineno)


# For a GGUF that carries no template, the turn format of its architecture's family.
# Gemma has no system role: its authors put the system text at the start of the first
# user turn (a system-only prompt leaves that turn open, so it stays a prefix of the
# next one); tool results are user turns.
GEMMA_TEMPLATE = (
    "{{ bos_token }}"
    "{%- set ns = namespace(prefix='') -%}"
    "{%- set loop_messages = messages -%}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set ns.prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else 'user' -%}"
    "{{ '<start_of_turn>' + role + '\n' + ns.prefix + message['content'] + '<end_of_turn>\n' }}"
    "{%- set ns.prefix = '' -%}"
    "{%- endfor -%}"
    "{%- if ns.prefix -%}{{ '<start_of_turn>user\n' + ns.prefix }}"
    "{%- elif add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def fallback_template(architecture: str) -> str:
    """The template for a GGUF without one: its architecture's turn format, else ChatML."""
    return GEMMA_TEMPLATE if architecture.startswith("gemma") else CHATML_TEMPLATE


def _raise(message: str) -> None:
    raise TemplateError(message)


class ChatTemplate:
    """One compiled template; `render` raises jinja2's TemplateError on a template that
    refuses its input (the caller turns it into a 400)."""

    def __init__(self, source: str, *, bos_token: str = "", eos_token: str = "") -> None:
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols, _Generation]
        )
        env.filters["tojson"] = tojson
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        self.source = source
        self._template = env.from_string(source)
        self._bos = bos_token
        self._eos = eos_token

    def render(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        **knobs: Any,
    ) -> str:
        kwargs: dict[str, Any] = {
            "messages": messages,
            "add_generation_prompt": add_generation_prompt,
            "bos_token": self._bos,
            "eos_token": self._eos,
            **knobs,
        }
        if tools:  # templates test `tools is defined` / `tools is not none`
            kwargs["tools"] = tools
        try:
            return self._template.render(**kwargs)
        except TemplateError:
            raise
        except Exception as exc:  # a template's own bug (a None where it wants text, …)
            raise TemplateError(f"{type(exc).__name__}: {exc}") from exc
