"""What a benchmark sends: agent sessions as scripts of turns, synthetic or from a trace.

A synthetic session is an agent loop with fixed instructions (the size of a coding
agent's system prompt and tool list), a task, then one tool output per turn. Every word
comes from a seeded RNG, so the same parameters give byte-identical requests in every
mode and on every server. Tool outputs go back as user messages: the workload is then
the same whatever the model answers, and a tiny model's tool-calling skill cannot skew it.

A trace is a JSONL file with one turn per line, in order:
    {"session": "a", "input": "text of the turn", "instructions": "...", "max_output_tokens": 32}
`instructions` is read from a session's first line; `max_output_tokens` is optional.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

WORDS = (
    "file read write tool call result test build error line module function class value "
    "return import path config server client socket cache token model prompt output input "
    "list item index check patch diff commit branch status log trace stack frame thread "
    "queue batch slot memory state chain turn agent loop shell command exit code warning"
).split()


@dataclass(frozen=True)
class Turn:
    text: str
    max_output_tokens: int
    pause_s: float = 0.0  # the client waits this long before sending it (a tool running)


@dataclass(frozen=True)
class SessionScript:
    name: str
    instructions: str
    turns: tuple[Turn, ...]


@dataclass(frozen=True)
class Workload:
    sessions: int = 1
    turns: int = 10
    instruction_words: int = 400
    tool_words: int = 60
    output_tokens: int = 16
    seed: int = 7

    def scripts(self) -> list[SessionScript]:
        rng = random.Random(self.seed)
        # One agent, many sessions: they share the instructions (as real agents do).
        instructions = "You are a coding agent. Follow these rules. " + _words(
            rng, self.instruction_words
        )
        return [self._session(instructions, s) for s in range(self.sessions)]

    def _session(self, instructions: str, s: int) -> SessionScript:
        turns = []
        for t in range(self.turns):
            rng = random.Random(self.seed * 1_000_003 + s * 1009 + t)
            if t == 0:
                text = f"Task {s}: fix the failing test. " + _words(rng, 20)
            else:
                text = f"Tool output {t}:\n" + _words(rng, self.tool_words)
            turns.append(Turn(text, self.output_tokens))
        return SessionScript(f"s{s}", instructions, tuple(turns))


def _words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def load_trace(path: Path, default_output_tokens: int = 16) -> list[SessionScript]:
    """Sessions from a JSONL trace, in the order each session first appears."""
    sessions: dict[str, tuple[str, list[Turn]]] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            name = str(row["session"])
            text = row["input"]
            if not isinstance(text, str):
                raise TypeError("'input' must be a string")
            max_out = int(row.get("max_output_tokens", default_output_tokens))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}:{n}: {exc}") from exc
        sessions.setdefault(name, (str(row.get("instructions", "")), []))[1].append(
            Turn(text, max_out)
        )
    if not sessions:
        raise ValueError(f"{path}: no turns")
    return [SessionScript(name, ins, tuple(turns)) for name, (ins, turns) in sessions.items()]
