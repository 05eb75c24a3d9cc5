"""Python functions as Responses API function tools: the JSON schema comes from type hints.

`function_tool(fn)` reads the signature with pydantic, so `def read_file(path: str,
max_lines: int = 200) -> str` becomes a tool whose parameters schema requires `path`
(a string) and allows `max_lines` (an integer, default 200). The docstring's first
paragraph is the description. Calling a tool validates the model's JSON arguments
against the same model before the function runs.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, get_type_hints

from pydantic import BaseModel, ConfigDict, ValidationError, create_model


class ToolArgumentsError(ValueError):
    """The model's arguments are not valid JSON for the tool's schema."""


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]
    fn: Callable[..., Any]
    arguments_model: type[BaseModel]

    def to_param(self) -> dict[str, Any]:
        """The `tools[]` entry of a create request."""
        return {
            "type": "function",
            "name": self.name,
            "description": self.description,
            "parameters": self.parameters,
            "strict": False,
        }

    async def call(self, arguments: str) -> str:
        """Run the function on the model's JSON arguments; the result as tool output text."""
        try:
            raw = json.loads(arguments or "{}")
            parsed = self.arguments_model.model_validate(raw)
        except (ValueError, ValidationError) as exc:
            raise ToolArgumentsError(f"invalid arguments for {self.name}: {exc}") from exc
        kwargs = {name: getattr(parsed, name) for name in type(parsed).model_fields}
        if inspect.iscoroutinefunction(self.fn):
            result = await self.fn(**kwargs)
        else:
            result = await asyncio.to_thread(self.fn, **kwargs)
        return result if isinstance(result, str) else json.dumps(result, default=str)


def function_tool(
    fn: Callable[..., Any], *, name: str | None = None, description: str | None = None
) -> Tool:
    """Describe `fn` as a function tool. Every parameter needs a type hint."""
    hints = get_type_hints(fn)
    fields: dict[str, Any] = {}
    for param in inspect.signature(fn).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise TypeError(f"{fn.__name__}: *args/**kwargs cannot be tool parameters")
        if param.name not in hints:
            raise TypeError(f"{fn.__name__}: parameter '{param.name}' needs a type hint")
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[param.name] = (hints[param.name], default)
    model = create_model(
        f"{fn.__name__}_arguments", __config__=ConfigDict(extra="forbid"), **fields
    )
    schema = model.model_json_schema()
    schema.pop("title", None)
    for prop in schema.get("properties", {}).values():
        prop.pop("title", None)
    schema.setdefault("properties", {})
    doc = inspect.getdoc(fn) or ""
    return Tool(
        name=name or fn.__name__,
        description=description if description is not None else doc.split("\n\n", 1)[0],
        parameters=schema,
        fn=fn,
        arguments_model=model,
    )


def as_tools(items: list[Callable[..., Any] | Tool]) -> dict[str, Tool]:
    tools: dict[str, Tool] = {}
    for item in items:
        tool = item if isinstance(item, Tool) else function_tool(item)
        if tool.name in tools:
            raise ValueError(f"two tools are named '{tool.name}'")
        tools[tool.name] = tool
    return tools
