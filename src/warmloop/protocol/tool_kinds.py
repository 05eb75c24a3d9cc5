"""The client-run tool kinds besides functions: `custom` (freeform text input),
`local_shell`, `shell` and `apply_patch` (the Codex CLI's).

The model is offered each one as a function with fixed JSON arguments (a custom tool's
text is `{"input": …}`), writes the call in its family's syntax like any function call,
and the call goes out in the kind's own item shape (`custom_tool_call`,
`local_shell_call`, `shell_call`, `apply_patch_call`, as the SDK's types define them).
The client's items come back the other way: a call becomes the same arguments, an
output becomes the text the model reads. This module is that mapping and nothing else.
"""

from __future__ import annotations

import json
from typing import Any

from warmloop.protocol.errors import InvalidRequest

KINDS = ("custom", "local_shell", "shell", "apply_patch")
CALL_TYPES = {
    "custom": "custom_tool_call",
    "local_shell": "local_shell_call",
    "shell": "shell_call",
    "apply_patch": "apply_patch_call",
}
OUTPUT_TYPES = {kind: f"{call}_output" for kind, call in CALL_TYPES.items()}
KIND_OF_CALL = {v: k for k, v in CALL_TYPES.items()}
KIND_OF_OUTPUT = {v: k for k, v in OUTPUT_TYPES.items()}

_STRINGS = {"type": "array", "items": {"type": "string"}}
PARAMETERS: dict[str, dict[str, Any]] = {
    "local_shell": {
        "type": "object",
        "properties": {
            "command": {**_STRINGS, "description": "the program and its arguments"},
            "workdir": {"type": "string"},
            "timeout_ms": {"type": "integer"},
        },
        "required": ["command"],
    },
    "shell": {
        "type": "object",
        "properties": {
            "commands": {**_STRINGS, "description": "shell commands, run in order"},
            "timeout_ms": {"type": "integer"},
        },
        "required": ["commands"],
    },
    "apply_patch": {
        "type": "object",
        "properties": {
            "type": {"enum": ["create_file", "update_file", "delete_file"]},
            "path": {"type": "string"},
            "diff": {"type": "string", "description": "the file's content or a V4A diff"},
        },
        "required": ["type", "path"],
    },
}
DESCRIPTIONS = {
    "local_shell": "Run a command on the user's machine and get its output.",
    "shell": "Run shell commands on the user's machine and get their output.",
    "apply_patch": "Create, update (with a diff) or delete a file in the user's workspace.",
}


def custom_parameters(fmt: Any, param: str) -> dict[str, Any]:
    """A custom tool's input as a JSON string: unconstrained text, or text in a grammar
    (`input_grammar`), which the model is shown (a regex as the string's `pattern`, a
    Lark grammar in its description) and which `serving/lark.py` enforces as far as
    GBNF can say it."""
    text: dict[str, Any] = {"type": "string"}
    if fmt is None or fmt == {"type": "text"}:
        return {"type": "object", "properties": {"input": text}, "required": ["input"]}
    if not isinstance(fmt, dict) or fmt.get("type") not in ("text", "grammar"):
        raise InvalidRequest(
            f"'{param}.format' must be {{'type': 'text'}} or a grammar.", param=f"{param}.format"
        )
    syntax, definition = fmt.get("syntax"), fmt.get("definition")
    if fmt["type"] == "grammar":
        if syntax not in ("regex", "lark") or not isinstance(definition, str):
            raise InvalidRequest(
                f"'{param}.format' needs 'syntax' ('regex' or 'lark') and a 'definition'.",
                param=f"{param}.format",
            )
        if syntax == "regex":
            anchored = definition.startswith("^") and definition.endswith("$")
            text["pattern"] = definition if anchored else f"^({definition})$"
        else:
            text["description"] = f"text in this Lark grammar:\n{definition}"
    return {"type": "object", "properties": {"input": text}, "required": ["input"]}


def input_grammar(fmt: Any) -> tuple[str, str] | None:
    """A custom tool's grammar format (checked by custom_parameters) as (syntax,
    definition); None for free text."""
    if isinstance(fmt, dict) and fmt.get("type") == "grammar":
        return str(fmt["syntax"]), str(fmt["definition"])
    return None


def _args(arguments: str) -> dict[str, Any]:
    try:
        value = json.loads(arguments)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _strings(value: Any) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def call_wire(
    kind: str, item_id: str, call_id: str, name: str, arguments: str, status: str
) -> dict[str, Any]:
    """The call item the client sees, from the arguments the model wrote."""
    args = _args(arguments)
    base = {"type": CALL_TYPES[kind], "id": item_id, "call_id": call_id}
    timeout = args.get("timeout_ms") if isinstance(args.get("timeout_ms"), int) else None
    action: dict[str, Any]
    if kind == "custom":
        text = args.get("input")
        return {**base, "name": name, "input": text if isinstance(text, str) else ""}
    if kind == "local_shell":
        workdir = args.get("workdir") if isinstance(args.get("workdir"), str) else None
        action = {
            "type": "exec",
            "command": _strings(args.get("command")),
            "env": {},
            "timeout_ms": timeout,
            "working_directory": workdir,
            "user": None,
        }
        return {**base, "action": action, "status": status}
    if kind == "shell":
        action = {
            "commands": _strings(args.get("commands")),
            "timeout_ms": timeout,
            "max_output_length": None,
        }
        return {**base, "action": action, "status": status}
    kinds = PARAMETERS["apply_patch"]["properties"]["type"]["enum"]
    op_type = args.get("type") if args.get("type") in kinds else "update_file"
    operation: dict[str, Any] = {"type": op_type, "path": str(args.get("path") or "")}
    if op_type != "delete_file":
        operation["diff"] = str(args.get("diff") or "")
    done = "completed" if status == "completed" else "in_progress"
    return {**base, "operation": operation, "status": done}


def _field(raw: dict[str, Any], key: str, param: str, kind: type = str) -> Any:
    value = raw.get(key)
    if not isinstance(value, kind):
        raise InvalidRequest(f"'{param}.{key}' is required.", param=f"{param}.{key}")
    return value


def call_arguments(kind: str, raw: dict[str, Any], param: str) -> tuple[str, str]:
    """(name, arguments JSON) of a call item the client sent back."""
    if kind == "custom":
        name = _field(raw, "name", param)
        return name, json.dumps({"input": _field(raw, "input", param)}, ensure_ascii=False)
    if kind == "apply_patch":
        op = _field(raw, "operation", param, dict)
        patch = {k: op[k] for k in ("type", "path", "diff") if isinstance(op.get(k), str)}
        return kind, json.dumps(patch, ensure_ascii=False)
    action = _field(raw, "action", param, dict)
    args: dict[str, Any]
    if kind == "local_shell":
        args = {"command": _strings(action.get("command"))}
        if isinstance(action.get("working_directory"), str):
            args["workdir"] = action["working_directory"]
    else:
        args = {"commands": _strings(action.get("commands"))}
    if isinstance(action.get("timeout_ms"), int):
        args["timeout_ms"] = action["timeout_ms"]
    return kind, json.dumps(args, ensure_ascii=False)


def output_text(kind: str, raw: dict[str, Any], param: str) -> str:
    """What the model reads of a client's output item."""
    output = raw.get("output")
    if kind == "shell":
        if not isinstance(output, list):
            raise InvalidRequest(f"'{param}.output' must be a list.", param=f"{param}.output")
        parts = []
        for chunk in output:
            if not isinstance(chunk, dict):
                continue
            outcome = chunk.get("outcome") or {}
            ending = (
                "(timed out)"
                if outcome.get("type") == "timeout"
                else f"(exit code {outcome.get('exit_code')})"
            )
            parts.append(f"{chunk.get('stdout') or ''}{chunk.get('stderr') or ''}{ending}")
        return "\n".join(parts)
    if kind == "apply_patch":
        status = raw.get("status")
        if status not in ("completed", "failed"):
            raise InvalidRequest(
                f"'{param}.status' must be 'completed' or 'failed'.", param=f"{param}.status"
            )
        return f"{status}: {output}" if isinstance(output, str) and output else str(status)
    if isinstance(output, str):
        return output
    if isinstance(output, list):  # custom outputs may be content parts
        return "".join(p.get("text", "") for p in output if isinstance(p, dict))
    raise InvalidRequest(f"'{param}.output' must be a string.", param=f"{param}.output")


def output_wire(kind: str, item_id: str, call_id: str, text: str) -> dict[str, Any]:
    """An output item the way it is stored and listed (its text as the model read it)."""
    if kind == "local_shell":
        return {"type": OUTPUT_TYPES[kind], "id": call_id, "output": text, "status": "completed"}
    if kind == "shell":
        chunk = {"stdout": text, "stderr": "", "outcome": {"type": "exit", "exit_code": 0}}
        return {"type": OUTPUT_TYPES[kind], "id": item_id, "call_id": call_id, "output": [chunk]}
    if kind == "apply_patch":
        return {
            "type": OUTPUT_TYPES[kind],
            "id": item_id,
            "call_id": call_id,
            "status": "failed" if text.startswith("failed") else "completed",
            "output": text,
        }
    return {"type": OUTPUT_TYPES[kind], "id": item_id, "call_id": call_id, "output": text}
