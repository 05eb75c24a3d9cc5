"""Constrained output: which grammar a request samples under, built and checked before
the response starts.

Tool schemas and `text.format` JSON schemas become GBNF through an injected converter
(llama.cpp's maintained one, `engine.sampling.json_schema_to_gbnf`); the model's family
wraps each tool's rules in its own call syntax and names its lazy trigger; this module
picks the grammar from `tool_choice` and asks the injected checker whether llama.cpp
accepts the result: a schema llama.cpp refuses is the client's 400 naming that schema,
not a failed response.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from warmloop.protocol.errors import InvalidRequest
from warmloop.protocol.requests import CreateRequest, TextFormat
from warmloop.protocol.tools import FunctionTool
from warmloop.serving.families import Family
from warmloop.serving.gbnf import literal
from warmloop.serving.lark import input_rules
from warmloop.serving.text_grammar import JSON_STRING

SchemaToGBNF = Callable[[dict[str, Any]], str]  # raises on schemas it cannot convert
# Raises ValueError (with llama.cpp's reason) when a grammar + lazy trigger is refused.
GrammarCheck = Callable[[str, str | None], None]


FREE_TEXT = {"type": "object", "properties": {"input": {"type": "string"}}, "required": ["input"]}


def custom_input(tool: FunctionTool) -> str | None:
    """GBNF for a custom tool's JSON arguments, `{"input": "…"}`, whose string holds
    text in the tool's grammar (None when serving/lark.py cannot say it in GBNF)."""
    assert tool.input_grammar is not None
    found = input_rules(tool.input_grammar, JSON_STRING, "in")
    if found is None:
        return None
    quote, key = literal('"'), literal('"input"')
    return "\n".join(
        [
            f'root ::= "{{" space {key} space ":" space {quote} {found.start} {quote}'
            ' space "}" space',
            'space ::= | " " | "\\n" [ \\t]{0,20}',
            *found.rules,
        ]
    )


class Grammars:
    def __init__(
        self, to_gbnf: SchemaToGBNF, family: Family, check: GrammarCheck | None = None
    ) -> None:
        self.to_gbnf = to_gbnf
        self.family = family
        self.check = check

    def for_request(self, request: CreateRequest) -> tuple[str | None, str | None]:
        """The request's grammar and lazy trigger (None, None: unconstrained), checked."""
        grammar, trigger = self._choose(request)
        if grammar is None or self.check is None:
            return grammar, trigger
        try:
            self.check(grammar, trigger)
        except ValueError as exc:
            raise self._refused(request, str(exc)) from None
        return grammar, trigger

    def schema(self, schema: dict[str, Any], param: str) -> str:
        try:
            return self.to_gbnf(schema)
        except Exception as exc:  # the converter raises plain exceptions on bad schemas
            raise InvalidRequest(f"Unsupported JSON schema: {exc}", param=param) from exc

    def tool_calls(
        self, tools: Sequence[FunctionTool], *, parallel: bool, forced: bool = False
    ) -> str:
        """One or more calls in the family's syntax whose arguments follow each schema;
        `forced`: from the output's first token (else from the family's trigger on)."""
        # Families hand `schema` each tool's own `parameters` dict: a custom tool's is
        # recognised by identity, so every JSON family enforces its grammar alike.
        custom = {id(t.parameters): t for t in tools if t.input_grammar is not None}

        def schema(value: dict[str, Any], param: str) -> str:
            tool = custom.get(id(value))
            if tool is None:
                return self.schema(value, param)
            # what cannot be said in GBNF is shown to the model and not enforced
            return custom_input(tool) or self.schema(FREE_TEXT, param)

        return self.family.grammar(tools, parallel=parallel, schema=schema, forced=forced)

    def text_format(self, fmt: TextFormat) -> str | None:
        if fmt.kind == "json_schema":
            assert fmt.schema is not None
            return self.schema(fmt.schema, "text.format.schema")
        if fmt.kind == "json_object":
            return self.schema({"type": "object"}, "text.format")
        return None

    def _choose(self, request: CreateRequest) -> tuple[str | None, str | None]:
        fmt_grammar = self.text_format(request.text_format)
        tools = request.tools
        choice = request.tool_choice
        if tools and choice != "none":
            if choice.startswith("function:"):
                name = choice.split(":", 1)[1]
                chosen = tuple(t for t in tools if t.qualified == name)
                return self.tool_calls(chosen, parallel=False, forced=True), None
            parallel = request.body.parallel_tool_calls is not False
            if choice == "required":
                return self.tool_calls(tools, parallel=parallel, forced=True), None
            grammar = self.tool_calls(tools, parallel=parallel)
            if fmt_grammar is None:
                return grammar, self.family.trigger()
        return fmt_grammar, None

    def _refused(self, request: CreateRequest, reason: str) -> InvalidRequest:
        """Name the schema llama.cpp refused: each one is checked on its own."""
        assert self.check is not None
        candidates: list[tuple[str, dict[str, Any]]] = []
        fmt = request.text_format
        if fmt.kind == "json_schema" and fmt.schema is not None:
            candidates.append(("text.format.schema", fmt.schema))
        candidates.extend((tool.param, tool.parameters) for tool in request.tools)
        for param, schema in candidates:
            try:
                self.check(self.schema(schema, param), None)
            except ValueError:
                return InvalidRequest(
                    f"This JSON schema cannot be enforced by the model's grammar engine "
                    f"({reason}). Bounds such as maxLength, minItems and maxItems must be at "
                    "most 2000.",
                    param=param,
                    code="invalid_json_schema",
                )
        return InvalidRequest(
            f"The tools and text format cannot be enforced together ({reason}).",
            param="tools",
            code="invalid_json_schema",
        )
