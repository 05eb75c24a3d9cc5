"""Conversation items: parsed from the wire into small frozen records, and back.

Internally a conversation is a tuple of `Item`s; the wire shapes are the SDK's
(`openai.types.responses`), produced by `item_to_wire`.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from dataclasses import dataclass
from typing import Any, Literal

from warmloop.protocol import tool_kinds
from warmloop.protocol.errors import InvalidRequest

Role = Literal["user", "system", "developer", "assistant"]
_ROLES: tuple[str, ...] = ("user", "system", "developer", "assistant")


MAX_ID_CHARS = 256
# keys of the store's own copy of a tool kind's call and output (item_to_wire(stored=True))
RAW_ARGUMENTS = "warmloop_arguments"
RAW_OUTPUT = "warmloop_output"
RAW_ID = "warmloop_id"


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


@dataclass(frozen=True)
class MessageItem:
    id: str
    role: Role
    text: str
    type: Literal["message"] = "message"


@dataclass(frozen=True)
class FunctionCallItem:
    id: str
    call_id: str
    name: str
    arguments: str
    namespace: str | None = None
    # a client-run tool kind besides functions (protocol/tool_kinds.py): its wire shape
    kind: str = "function"
    type: Literal["function_call"] = "function_call"

    @property
    def qualified(self) -> str:
        return f"{self.namespace}.{self.name}" if self.namespace else self.name


@dataclass(frozen=True)
class FunctionCallOutputItem:
    id: str
    call_id: str
    output: str
    kind: str = "function"
    type: Literal["function_call_output"] = "function_call_output"


@dataclass(frozen=True)
class CompactionItem:
    """A summary of the earlier conversation, made by `POST /v1/responses/compact` (or
    `context_management`). On the wire its text travels as `encrypted_content`: opaque to
    clients, but only encoded (`encode_summary`), not encrypted."""

    id: str
    summary: str
    type: Literal["compaction"] = "compaction"


SUMMARY_PREFIX = "wl1."  # encoded by this server (a version, should the format change)


def encode_summary(summary: str) -> str:
    return SUMMARY_PREFIX + base64.urlsafe_b64encode(summary.encode()).decode()


def decode_summary(content: str, param: str) -> str:
    try:
        if not content.startswith(SUMMARY_PREFIX):
            raise ValueError
        return base64.urlsafe_b64decode(content[len(SUMMARY_PREFIX) :]).decode()
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidRequest(
            f"'{param}' is not a compaction made by this server.",
            param=param,
            code="invalid_encrypted_content",
        ) from None


@dataclass(frozen=True)
class ReasoningItem:
    """The model's reasoning before its answer or calls (`<think>`, harmony's analysis
    channel), kept as the text between the family's markers. `sealed` is a received
    `encrypted_content` that serving has not yet opened (parsing knows no tenant)."""

    id: str
    text: str
    sealed: str | None = None
    type: Literal["reasoning"] = "reasoning"


@dataclass(frozen=True)
class ItemReference:
    """`{"type": "item_reference", "id": ...}`: resolved against stored items."""

    id: str


Item = MessageItem | FunctionCallItem | FunctionCallOutputItem | CompactionItem | ReasoningItem


def item_size(item: Item) -> int:
    """Approximate bytes an item holds (for the store's byte bound)."""
    if isinstance(item, MessageItem):
        return 64 + len(item.text.encode())
    if isinstance(item, FunctionCallItem):
        return 96 + len(item.arguments.encode()) + len(item.name)
    if isinstance(item, CompactionItem):
        return 64 + 2 * len(item.summary.encode())
    if isinstance(item, ReasoningItem):
        return 64 + len(item.text.encode()) + len(item.sealed or "")
    return 64 + len(item.output.encode())


def item_to_wire(item: Item, *, stored: bool = False) -> dict[str, Any]:
    """The item's wire shape; `stored` (the store's own copy) also keeps what a client
    shape cannot carry exactly: a tool kind's arguments as the model wrote them, and an
    output's text as the model read it."""
    if isinstance(item, FunctionCallItem) and item.kind != "function":
        wire = tool_kinds.call_wire(
            item.kind, item.id, item.call_id, item.name, item.arguments, "completed"
        )
        return {**wire, RAW_ARGUMENTS: item.arguments} if stored else wire
    if isinstance(item, FunctionCallOutputItem) and item.kind != "function":
        wire = tool_kinds.output_wire(item.kind, item.id, item.call_id, item.output)
        return {**wire, RAW_OUTPUT: item.output, RAW_ID: item.id} if stored else wire
    return _wire(item)


def _wire(item: Item) -> dict[str, Any]:
    if isinstance(item, MessageItem):
        part = "output_text" if item.role == "assistant" else "input_text"
        content: dict[str, Any] = {"type": part, "text": item.text}
        if part == "output_text":
            content["annotations"] = []
            content["logprobs"] = []
        return {
            "type": "message",
            "id": item.id,
            "role": item.role,
            "status": "completed",
            "content": [content],
        }
    if isinstance(item, FunctionCallItem):
        call = {
            "type": "function_call",
            "id": item.id,
            "call_id": item.call_id,
            "name": item.name,
            "arguments": item.arguments,
            "status": "completed",
        }
        if item.namespace:
            call["namespace"] = item.namespace
        return call
    if isinstance(item, CompactionItem):
        return {
            "type": "compaction",
            "id": item.id,
            "encrypted_content": encode_summary(item.summary),
        }
    if isinstance(item, ReasoningItem):
        return {
            "type": "reasoning",
            "id": item.id,
            "summary": [],
            "content": [{"type": "reasoning_text", "text": item.text}],
            "encrypted_content": None,
            "status": "completed",
        }
    return {
        "type": "function_call_output",
        "id": item.id,
        "call_id": item.call_id,
        "output": item.output,
        "status": "completed",
    }


# ----- parsing ------------------------------------------------------------------------
def _str_field(raw: dict[str, Any], key: str, param: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str):
        raise InvalidRequest(f"'{param}.{key}' must be a string.", param=f"{param}.{key}")
    return value


def _message_text(content: Any, param: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest(
            f"'{param}.content' must be a string or a list of content parts.",
            param=f"{param}.content",
        )
    return _parts_text(content, f"{param}.content")


def _parts_text(parts: list[Any], param: str) -> str:
    """Text of a list of content parts; `param` names the list (e.g. 'input[0].content')."""
    texts: list[str] = []
    for j, part in enumerate(parts):
        where = f"{param}[{j}]"
        if not isinstance(part, dict):
            raise InvalidRequest(f"'{where}' must be an object.", param=where)
        kind = part.get("type")
        if kind in ("input_text", "output_text", "text"):
            texts.append(_str_field(part, "text", where))
        elif kind == "refusal":
            texts.append(_str_field(part, "refusal", where))
        else:
            raise InvalidRequest(
                f"Content part type '{kind}' is not supported by this model "
                "(text only: 'input_text', 'output_text').",
                param=f"{where}.type",
            )
    return "".join(texts)


def _output_text(raw: Any, param: str) -> str:
    if isinstance(raw, str):
        return raw
    if isinstance(raw, list):  # list of input_text parts is allowed for tool outputs
        return _parts_text(raw, param)
    raise InvalidRequest(f"'{param}' must be a string.", param=param)


def _item_id(raw: dict[str, Any], param: str, prefix: str) -> str:
    """The client's item id, or a new one; ids are strings of at most MAX_ID_CHARS."""
    value = raw.get("id")
    if value is None or value == "":
        return new_id(prefix)
    if not isinstance(value, str) or len(value) > MAX_ID_CHARS:
        raise InvalidRequest(
            f"'{param}.id' must be a string of at most {MAX_ID_CHARS} characters.",
            param=f"{param}.id",
        )
    return value


def parse_item(raw: Any, index: int, where: str = "input") -> Item | ItemReference:
    """Item `index` of the list `where` names (errors name `where[index]...`)."""
    param = f"{where}[{index}]"
    if not isinstance(raw, dict):
        raise InvalidRequest(f"'{param}' must be an object.", param=param)
    kind = raw.get("type", "message" if "role" in raw else None)
    if kind == "message":
        role = raw.get("role")
        if role not in _ROLES:
            raise InvalidRequest(
                f"'{param}.role' must be one of {', '.join(_ROLES)}.", param=f"{param}.role"
            )
        if "content" not in raw:
            raise InvalidRequest(f"'{param}.content' is required.", param=f"{param}.content")
        return MessageItem(_item_id(raw, param, "msg"), role, _message_text(raw["content"], param))
    if kind == "function_call":
        call_id = _str_field(raw, "call_id", param)
        name = _str_field(raw, "name", param)
        arguments = _str_field(raw, "arguments", param)
        namespace = raw.get("namespace")
        if namespace is not None and not isinstance(namespace, str):
            raise InvalidRequest(
                f"'{param}.namespace' must be a string.", param=f"{param}.namespace"
            )
        item_id = _item_id(raw, param, "fc")
        return FunctionCallItem(item_id, call_id, name, arguments, namespace or None)
    if kind == "function_call_output":
        call_id = _str_field(raw, "call_id", param)
        if "output" not in raw:
            raise InvalidRequest(f"'{param}.output' is required.", param=f"{param}.output")
        output = _output_text(raw["output"], f"{param}.output")
        return FunctionCallOutputItem(_item_id(raw, param, "fco"), call_id, output)
    if kind == "reasoning":
        return _reasoning(raw, param)
    if kind in tool_kinds.KIND_OF_CALL:
        tool = tool_kinds.KIND_OF_CALL[kind]
        name, arguments = tool_kinds.call_arguments(tool, raw, param)
        if isinstance(raw.get(RAW_ARGUMENTS), str):
            arguments = raw[RAW_ARGUMENTS]
        item_id = _item_id(raw, param, "fc")
        ref = raw.get("call_id") if isinstance(raw.get("call_id"), str) else raw.get("id")
        if not isinstance(ref, str) or not ref:
            raise InvalidRequest(f"'{param}.call_id' is required.", param=f"{param}.call_id")
        return FunctionCallItem(item_id, ref, name, arguments, None, tool)
    if kind in tool_kinds.KIND_OF_OUTPUT:
        tool = tool_kinds.KIND_OF_OUTPUT[kind]
        # a local_shell output names its call by the call's id (they are one here)
        ref = raw.get("call_id") if isinstance(raw.get("call_id"), str) else raw.get("id")
        if not isinstance(ref, str) or not ref:
            raise InvalidRequest(f"'{param}.call_id' is required.", param=f"{param}.call_id")
        text = raw[RAW_OUTPUT] if isinstance(raw.get(RAW_OUTPUT), str) else None
        output = text if text is not None else tool_kinds.output_text(tool, raw, param)
        if isinstance(raw.get(RAW_ID), str):
            item_id = raw[RAW_ID]
        elif tool == "local_shell":  # its `id` is the call's
            item_id = new_id("fco")
        else:
            item_id = _item_id(raw, param, "fco")
        return FunctionCallOutputItem(item_id, ref, output, tool)
    if kind == "item_reference":
        return ItemReference(_str_field(raw, "id", param))
    if kind == "compaction":
        content = _str_field(raw, "encrypted_content", param)
        summary = decode_summary(content, f"{param}.encrypted_content")
        return CompactionItem(_item_id(raw, param, "cmp"), summary)
    raise InvalidRequest(
        f"Input item type '{kind}' is not supported (supported: message, function_call, "
        "function_call_output, reasoning, compaction, item_reference, and the calls and "
        "outputs of custom, local_shell, shell and apply_patch tools).",
        param=f"{param}.type",
    )


def _reasoning(raw: dict[str, Any], param: str) -> ReasoningItem:
    """A reasoning item sent back: its text from `content` (reasoning_text parts) or from
    `encrypted_content` (sealed by this server; opened by serving). A `summary` alone
    (a client that kept neither) renders as no reasoning."""
    for key in ("summary", "content"):
        parts = raw.get(key)
        if parts is None:
            continue
        if not isinstance(parts, list):
            raise InvalidRequest(f"'{param}.{key}' must be a list.", param=f"{param}.{key}")
        want = "summary_text" if key == "summary" else "reasoning_text"
        for j, part in enumerate(parts):
            where = f"{param}.{key}[{j}]"
            if not isinstance(part, dict) or part.get("type") not in (want, "text"):
                raise InvalidRequest(f"'{where}' must be a {want} part.", param=where)
            _str_field(part, "text", where)
    sealed = raw.get("encrypted_content")
    if sealed is not None and not isinstance(sealed, str):
        raise InvalidRequest(
            f"'{param}.encrypted_content' must be a string.", param=f"{param}.encrypted_content"
        )
    text = "".join(p["text"] for p in raw.get("content") or [])
    return ReasoningItem(_item_id(raw, param, "rs"), text, sealed or None)


def parse_input(raw: Any) -> list[Item | ItemReference]:
    if raw is None:
        return []
    if isinstance(raw, str):
        return [MessageItem(new_id("msg"), "user", raw)]
    if not isinstance(raw, list):
        raise InvalidRequest("'input' must be a string or a list of items.", param="input")
    return [parse_item(x, i) for i, x in enumerate(raw)]
