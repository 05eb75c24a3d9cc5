"""The `POST /v1/responses` body (and WebSocket `response.create`), validated.

Unknown fields are a 400 naming the field; fields that carry no meaning for a local
model (`service_tier`, `prompt_cache_key`, `user`, ...) are accepted and echoed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from warmloop.protocol.errors import InvalidRequest
from warmloop.protocol.items import MAX_ID_CHARS, Item, ItemReference, parse_input
from warmloop.protocol.tools import FunctionTool, not_offered, parse_tool_choice, parse_tools

# OpenAI's own bounds on the request's bookkeeping fields (they are echoed in every event
# and stored with the response, so they must not carry megabytes).
METADATA_MAX_PAIRS = 16
METADATA_MAX_KEY_CHARS = 64
METADATA_MAX_VALUE_CHARS = 512
SAFETY_IDENTIFIER_MAX_CHARS = 64
IDENTIFIER_MAX_CHARS = 512  # user, prompt_cache_key


def _metadata_bounds(value: dict[str, str]) -> dict[str, str]:
    for key, text in value.items():
        if len(key) > METADATA_MAX_KEY_CHARS:
            raise ValueError(f"metadata keys are at most {METADATA_MAX_KEY_CHARS} characters")
        if len(text) > METADATA_MAX_VALUE_CHARS:
            raise ValueError(f"metadata values are at most {METADATA_MAX_VALUE_CHARS} characters")
    return value


# `metadata` of a response or a conversation: at most 16 pairs of short strings
Metadata = Annotated[
    dict[str, str], Field(max_length=METADATA_MAX_PAIRS), AfterValidator(_metadata_bounds)
]

# what `include` may ask for (on a create, and when listing a conversation's items)
INCLUDABLE = ("message.output_text.logprobs", "reasoning.encrypted_content")

# How long a prompt's cache should last; older SDKs spell "in_memory" "in-memory".
Retention = Literal["in_memory", "24h"]


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
    conversation: str | dict[str, Any] | None = None
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
    metadata: Metadata | None = None
    prompt_cache_key: str | None = Field(default=None, max_length=IDENTIFIER_MAX_CHARS)
    prompt_cache_retention: Retention | None = None
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

    @field_validator("prompt_cache_retention", mode="before")
    @classmethod
    def _retention_spelling(cls, value: Any) -> Any:
        return "in_memory" if value == "in-memory" else value


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
    conversation: str | None = None  # the id of the conversation this response belongs to

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


def _conversation_id(raw: str | dict[str, Any] | None) -> str | None:
    """`conversation`: its id, or `{"id": ...}`."""
    if raw is None:
        return None
    param = "conversation"
    if isinstance(raw, dict):
        unknown = sorted(set(raw) - {"id"})
        if unknown:
            raise InvalidRequest(
                f"Unknown parameter: 'conversation.{unknown[0]}'.",
                param=f"conversation.{unknown[0]}",
                code="unknown_parameter",
            )
        raw, param = raw.get("id"), "conversation.id"
    if not isinstance(raw, str) or not 0 < len(raw) <= MAX_ID_CHARS:
        raise InvalidRequest(
            f"'{param}' must be a conversation id: a string of 1 to {MAX_ID_CHARS} characters.",
            param=param,
        )
    return raw


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
            if inc not in INCLUDABLE:
                raise InvalidRequest(f"Unsupported include value '{inc}'.", param=f"include[{i}]")
    _check_reasoning(body.reasoning)
    conversation = _conversation_id(body.conversation)
    if conversation is not None and body.previous_response_id is not None:
        raise InvalidRequest(
            "Mutually exclusive parameters: give 'conversation' or 'previous_response_id', "
            "not both.",
            param="conversation",
        )
    items = parse_input(body.input)
    tools = parse_tools(body.tools)
    return CreateRequest(
        body=body,
        items=items,
        tools=tools,
        tool_choice=parse_tool_choice(body.tool_choice, tools),
        text_format=_parse_text_format(body.text),
        not_offered=not_offered(body.tools),
        conversation=conversation,
    )
