"""The `POST /v1/responses` body (and WebSocket `response.create`), validated.

Unknown fields are a 400 naming the field; fields that carry no meaning for a local
model (`service_tier`, `prompt_cache_key`, `user`, ...) are accepted and echoed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from warmloop.protocol import tool_kinds
from warmloop.protocol.errors import InvalidRequest
from warmloop.protocol.items import Item, ItemReference, parse_input

# Hosted tools run on OpenAI's side; this server cannot run them. They are accepted and
# not offered to the model (the response's `warmloop.tools_not_offered` lists them);
# a tool_choice that names one is a 400, and every other unknown kind is a 400 too.
HOSTED_TOOL_TYPES = frozenset(
    {
        "web_search",
        "web_search_preview",
        "file_search",
        "code_interpreter",
        "image_generation",
        "computer_use_preview",
        "mcp",
        "tool_search",
    }
)


# OpenAI's own bounds on the request's bookkeeping fields (they are echoed in every event
# and stored with the response, so they must not carry megabytes).
METADATA_MAX_PAIRS = 16
METADATA_MAX_KEY_CHARS = 64
METADATA_MAX_VALUE_CHARS = 512
SAFETY_IDENTIFIER_MAX_CHARS = 64
IDENTIFIER_MAX_CHARS = 512  # user, prompt_cache_key


class ContextManagement(BaseModel):
    """One `context_management` entry: server-side compaction once the rendered prompt
    passes `compact_threshold` tokens (None: the server's default)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["compaction"]
    compact_threshold: int | None = Field(default=None, ge=1)


class CreateBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)

    model: str | None = None
    input: str | list[Any] | None = None
    instructions: str | None = None
    previous_response_id: str | None = None
    store: bool | None = True
    stream: bool | None = False
    background: bool | None = None
    generate: bool | None = True
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = True
    max_tool_calls: int | None = Field(default=None, ge=1)
    text: dict[str, Any] | None = None
    metadata: dict[str, str] | None = Field(default=None, max_length=METADATA_MAX_PAIRS)
    prompt_cache_key: str | None = Field(default=None, max_length=IDENTIFIER_MAX_CHARS)
    prompt_cache_retention: str | None = Field(default=None, max_length=IDENTIFIER_MAX_CHARS)
    truncation: Literal["auto", "disabled"] | None = None
    context_management: list[ContextManagement] | None = Field(default=None, max_length=1)
    user: str | None = Field(default=None, max_length=IDENTIFIER_MAX_CHARS)
    safety_identifier: str | None = Field(default=None, max_length=SAFETY_IDENTIFIER_MAX_CHARS)
    include: list[str] | None = None
    reasoning: dict[str, Any] | None = None
    service_tier: str | None = None
    stream_options: dict[str, Any] | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=0)
    client_metadata: dict[str, Any] | None = Field(default=None, max_length=METADATA_MAX_PAIRS)

    @field_validator("metadata")
    @classmethod
    def _metadata_bounds(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for key, text in (value or {}).items():
            if len(key) > METADATA_MAX_KEY_CHARS:
                raise ValueError(f"metadata keys are at most {METADATA_MAX_KEY_CHARS} characters")
            if len(text) > METADATA_MAX_VALUE_CHARS:
                raise ValueError(
                    f"metadata values are at most {METADATA_MAX_VALUE_CHARS} characters"
                )
        return value


@dataclass(frozen=True)
class FunctionTool:
    name: str
    description: str
    parameters: dict[str, Any]
    strict: bool
    namespace: str | None = None  # from a `namespace` tool: a named group of functions
    # where its schema is in the request, e.g. "tools[2].parameters" (for error messages)
    param: str = field(default="tools", compare=False)
    # "function", or a client-run kind offered as a function (protocol/tool_kinds.py)
    kind: str = "function"
    # a custom tool's grammar for its `input`: ("lark" | "regex", definition)
    input_grammar: tuple[str, str] | None = field(default=None, compare=False)

    @property
    def qualified(self) -> str:
        """The name the model sees and writes: `namespace.name` inside a namespace."""
        return f"{self.namespace}.{self.name}" if self.namespace else self.name


@dataclass(frozen=True)
class TextFormat:
    kind: Literal["text", "json_schema", "json_object"]
    name: str | None = None
    schema: dict[str, Any] | None = None


ToolChoice = Literal["auto", "none", "required"] | str  # a bare name means "this function"


@dataclass(frozen=True)
class CreateRequest:
    body: CreateBody
    items: list[Item | ItemReference]
    tools: tuple[FunctionTool, ...]
    tool_choice: str  # "auto" | "none" | "required" | "function:<name>"
    text_format: TextFormat
    not_offered: tuple[str, ...] = ()  # hosted tool types accepted, not given to the model

    @property
    def store(self) -> bool:
        return self.body.store is not False

    @property
    def generate(self) -> bool:
        return self.body.generate is not False

    @property
    def compaction(self) -> ContextManagement | None:
        """The `context_management` compaction entry, if the request has one."""
        return self.body.context_management[0] if self.body.context_management else None


def _param_from_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("str", "list[any]", "dict[str,any]"):
            continue  # union member tags pydantic adds to the path
        else:
            out += f".{part}" if out else str(part)
    return out


def validation_error(exc: ValidationError) -> InvalidRequest:
    err = exc.errors()[0]
    param = _param_from_loc(tuple(err["loc"]))
    if err["type"] == "extra_forbidden":
        return InvalidRequest(
            f"Unknown parameter: '{param}'.", param=param, code="unknown_parameter"
        )
    return InvalidRequest(f"Invalid value for '{param}': {err['msg']}.", param=param)


def _parse_tools(raw: list[dict[str, Any]] | None) -> tuple[FunctionTool, ...]:
    tools: list[FunctionTool] = []
    served = ("function", "namespace", *tool_kinds.KINDS)
    for t, kind, param in _tool_entries(raw or [], "tools", served):
        if kind == "namespace":
            tools.extend(_parse_namespace(t, param))
        elif kind == "function":
            tools.append(_parse_function(t, param))
        else:
            tools.append(_parse_client_tool(t, kind, param))
    names = [t.qualified for t in tools]
    if len(set(names)) != len(names):
        raise InvalidRequest("Tool names must be unique.", param="tools")
    return tuple(tools)


def _tool_entries(
    raw: list[Any], where: str, supported: tuple[str, ...]
) -> Iterator[tuple[dict[str, Any], str, str]]:
    """(tool, type, param) of each entry of a tools list whose type we serve; the
    hosted types we cannot run are skipped, anything else is a 400."""
    for i, t in enumerate(raw):
        param = f"{where}[{i}]"
        if not isinstance(t, dict):
            raise InvalidRequest(f"'{param}' must be an object.", param=param)
        kind = t.get("type")
        if not isinstance(kind, str):
            raise InvalidRequest(f"'{param}.type' must be a string.", param=f"{param}.type")
        if kind in HOSTED_TOOL_TYPES:
            continue
        if kind not in supported:
            raise InvalidRequest(f"Tool type '{kind}' is not supported.", param=f"{param}.type")
        yield t, kind, param


def _parse_namespace(t: dict[str, Any], param: str) -> list[FunctionTool]:
    ns = t.get("name")
    if not isinstance(ns, str) or not ns or len(ns) > 64:
        raise InvalidRequest(f"'{param}.name' must be a non-empty string.", param=f"{param}.name")
    inner = t.get("tools")
    if not isinstance(inner, list):
        raise InvalidRequest(f"'{param}.tools' must be a list.", param=f"{param}.tools")
    out: list[FunctionTool] = []
    for member, _kind, where in _tool_entries(inner, f"{param}.tools", ("function",)):
        tool = _parse_function(member, where)
        out.append(
            FunctionTool(tool.name, tool.description, tool.parameters, tool.strict, ns, tool.param)
        )
    return out


def _parse_client_tool(t: dict[str, Any], kind: str, param: str) -> FunctionTool:
    """A custom tool, or local_shell / shell / apply_patch: offered as a function."""
    if kind == "custom":
        function = _parse_function(t, param)
        parameters = tool_kinds.custom_parameters(t.get("format"), param)
        return FunctionTool(
            function.name,
            function.description,
            parameters,
            False,
            param=param,
            kind=kind,
            input_grammar=tool_kinds.input_grammar(t.get("format")),
        )
    return FunctionTool(
        kind,
        tool_kinds.DESCRIPTIONS[kind],
        tool_kinds.PARAMETERS[kind],
        False,
        param=param,
        kind=kind,
    )


def not_offered(raw: list[dict[str, Any]] | None) -> tuple[str, ...]:
    """The hosted tool types of a tools list (accepted, not offered)."""
    return tuple(
        t["type"] for t in raw or [] if isinstance(t, dict) and t.get("type") in HOSTED_TOOL_TYPES
    )


def _parse_function(t: dict[str, Any], param: str) -> FunctionTool:
    name = t.get("name")
    if not isinstance(name, str) or not name or len(name) > 64:
        raise InvalidRequest(f"'{param}.name' must be a non-empty string.", param=f"{param}.name")
    params = t.get("parameters") or {"type": "object", "properties": {}}
    if not isinstance(params, dict):
        raise InvalidRequest(
            f"'{param}.parameters' must be a JSON schema object.", param=f"{param}.parameters"
        )
    desc = t.get("description") or ""
    if not isinstance(desc, str):
        raise InvalidRequest(
            f"'{param}.description' must be a string.", param=f"{param}.description"
        )
    strict = t.get("strict", False)
    if strict is None:
        strict = False
    if not isinstance(strict, bool):
        raise InvalidRequest(f"'{param}.strict' must be a boolean.", param=f"{param}.strict")
    return FunctionTool(name, desc, params, strict, param=f"{param}.parameters")


def _parse_tool_choice(raw: str | dict[str, Any] | None, tools: tuple[FunctionTool, ...]) -> str:
    if raw is None:
        return "auto"
    if isinstance(raw, str):
        if raw not in ("auto", "none", "required"):
            raise InvalidRequest(
                "'tool_choice' must be 'auto', 'none', 'required' or a function.",
                param="tool_choice",
            )
        if raw == "required" and not tools:
            raise InvalidRequest(
                "'tool_choice' is 'required' but no tools were given.", param="tool_choice"
            )
        return raw
    kind = raw.get("type")
    if kind in ("function", "custom") and isinstance(raw.get("name"), str):
        name = raw["name"]
        if name not in {t.qualified for t in tools if (t.kind == "custom") == (kind == "custom")}:
            raise InvalidRequest(
                f"Tool '{name}' in 'tool_choice' is not in 'tools'.", param="tool_choice"
            )
        return f"function:{name}"
    if kind in ("local_shell", "shell", "apply_patch"):
        if not any(t.kind == kind for t in tools):
            raise InvalidRequest(
                f"'tool_choice' names the {kind} tool, which is not in 'tools'.",
                param="tool_choice",
            )
        return f"function:{kind}"
    if kind in HOSTED_TOOL_TYPES:
        raise InvalidRequest(
            f"'tool_choice' names the hosted tool '{kind}', which this server cannot run.",
            param="tool_choice",
        )
    raise InvalidRequest(
        "Only function tool choices are supported ({'type': 'function', 'name': ...}).",
        param="tool_choice",
    )


def _parse_text_format(raw: dict[str, Any] | None) -> TextFormat:
    if not raw:
        return TextFormat("text")
    unknown = set(raw) - {"format", "verbosity"}
    if unknown:
        name = sorted(unknown)[0]
        raise InvalidRequest(f"Unknown parameter: 'text.{name}'.", param=f"text.{name}")
    fmt = raw.get("format") or {"type": "text"}
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return TextFormat("text")
    if kind == "json_object":
        return TextFormat("json_object")
    if kind == "json_schema":
        assert isinstance(fmt, dict)
        schema = fmt.get("schema")
        if not isinstance(schema, dict):
            raise InvalidRequest(
                "'text.format.schema' must be a JSON schema object.", param="text.format.schema"
            )
        try:
            json.dumps(schema)
        except (TypeError, ValueError) as exc:
            raise InvalidRequest(
                f"'text.format.schema' is not JSON: {exc}", param="text.format.schema"
            ) from exc
        schema_name = fmt.get("name")
        if not isinstance(schema_name, str) or not schema_name:
            raise InvalidRequest("'text.format.name' is required.", param="text.format.name")
        return TextFormat("json_schema", schema_name, schema)
    raise InvalidRequest(
        "'text.format.type' must be one of 'text', 'json_schema', 'json_object'.",
        param="text.format.type",
    )


REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")
REASONING_SUMMARIES = ("auto", "concise", "detailed")


def _check_reasoning(raw: dict[str, Any] | None) -> None:
    """`reasoning`: an effort the template's knobs take, a summary mode (accepted; no
    summaries are written: a summary needs a second model)."""
    for key, value in (raw or {}).items():
        allowed = {
            "effort": REASONING_EFFORTS,
            "summary": REASONING_SUMMARIES,
            "generate_summary": REASONING_SUMMARIES,
        }.get(key)
        if allowed is None:
            raise InvalidRequest(f"Unknown parameter: 'reasoning.{key}'.", param=f"reasoning.{key}")
        if value is not None and value not in allowed:
            raise InvalidRequest(
                f"'reasoning.{key}' must be one of {', '.join(allowed)}.", param=f"reasoning.{key}"
            )


def parse_create(raw: Any, *, websocket: bool = False) -> CreateRequest:
    if not isinstance(raw, dict):
        raise InvalidRequest("The request body must be a JSON object.", param=None)
    try:
        body = CreateBody.model_validate(raw)
    except ValidationError as exc:
        raise validation_error(exc) from None
    if body.background and websocket:
        raise InvalidRequest(
            "Background responses are not supported in WebSocket mode; create them over HTTP.",
            param="background",
        )
    if body.background and body.store is False:
        raise InvalidRequest(
            "A background response must be stored: set 'store' to true.", param="store"
        )
    if body.input is None and not websocket:
        raise InvalidRequest("Missing required parameter: 'input'.", param="input")
    if body.include:
        for i, inc in enumerate(body.include):
            if inc not in ("message.output_text.logprobs", "reasoning.encrypted_content"):
                raise InvalidRequest(f"Unsupported include value '{inc}'.", param=f"include[{i}]")
    _check_reasoning(body.reasoning)
    items = parse_input(body.input)
    tools = _parse_tools(body.tools)
    return CreateRequest(
        body=body,
        items=items,
        tools=tools,
        tool_choice=_parse_tool_choice(body.tool_choice, tools),
        text_format=_parse_text_format(body.text),
        not_offered=not_offered(body.tools),
    )
