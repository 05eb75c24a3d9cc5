"""The `tools` of a create and its `tool_choice`: functions, namespaces of functions,
Codex's client-run kinds (`tool_kinds.py`) offered as functions, and hosted tools that
are accepted and not offered."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from warmloop.protocol import tool_kinds
from warmloop.protocol.errors import InvalidRequest

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


def parse_tools(raw: list[dict[str, Any]] | None) -> tuple[FunctionTool, ...]:
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


def parse_tool_choice(raw: str | dict[str, Any] | None, tools: tuple[FunctionTool, ...]) -> str:
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
