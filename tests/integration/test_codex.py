"""The Codex CLI (`@openai/codex`) runs `codex exec` against warmloop over WebSocket mode.

Installs Codex with npm when npm is present (skipped otherwise). The tiny model's answer
does not matter; the run must finish without a protocol error. See docs/codex.md.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import start_server

CONFIG = """\
model = "default"
model_provider = "warmloop"
# Codex's own instructions and tool list are ~17k characters; SmolLM2 has an 8k context.
model_instructions_file = "{home}/instructions.md"
project_doc_max_bytes = 0

[model_providers.warmloop]
name = "warmloop"
base_url = "http://127.0.0.1:{port}/v1"
wire_api = "responses"
env_key = "WARMLOOP_API_KEY"
supports_websockets = true
"""


def codex_binary() -> str:
    found = shutil.which("codex")
    if found:
        return found
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not installed: the Codex CLI test needs it")
    subprocess.run(
        [npm, "install", "-g", "@openai/codex"], check=True, timeout=600, capture_output=True
    )
    found = shutil.which("codex")
    if found is None:
        pytest.fail("npm installed @openai/codex but `codex` is not on PATH")
    return found


def codex_home(tmp_path: Path, port: int, *, short_instructions: bool) -> dict[str, str]:
    """A CODEX_HOME for a warmloop provider on `port`; the environment to run codex in."""
    home = tmp_path / "codex-home"
    home.mkdir()
    (tmp_path / "work").mkdir()
    config = CONFIG.format(home=home, port=port)
    if short_instructions:
        (home / "instructions.md").write_text(
            "You are a helpful assistant. Answer in one short sentence.\n"
        )
    else:  # Codex's own instructions and tool list: its whole fixed head (~9k tokens)
        config = "\n".join(
            line
            for line in config.splitlines()
            if not line.startswith(("model_instructions_file", "project_doc", "#"))
        )
    (home / "config.toml").write_text(config)
    return os.environ | {"CODEX_HOME": str(home), "WARMLOOP_API_KEY": "sk-codex"}


def field(line: str, name: str) -> str:
    return line.split(f" {name}=")[1].split()[0]


def run_codex(codex: str, args: list[str], tmp_path: Path, env: dict[str, str]) -> str:
    run = subprocess.run(
        [codex, "exec", *args],
        cwd=tmp_path / "work",
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=900,
    )
    output = run.stdout + run.stderr
    # Codex printed the model's answer ...
    assert "\ncodex\n" in output, output
    # ... and the only error it may report is the tiny model running out of output
    # tokens (an answer-quality matter, surfaced through the protocol as designed).
    errors = [line for line in output.splitlines() if line.startswith("ERROR")]
    allowed = "ERROR: Incomplete response returned, reason: max_output_tokens"
    assert all(line == allowed for line in errors), output
    assert run.returncode == 0 or errors, output
    return output


def test_codex_exec_over_websocket(tmp_path: Path) -> None:
    codex = codex_binary()
    server = start_server(
        "--ctx", "8192", "--api-key", "sk-codex", "--max-output-tokens", "64",
        "--default-temperature", "0", name="codex",
    )  # fmt: skip
    try:
        env = codex_home(tmp_path, server.port, short_instructions=True)
        run_codex(
            codex,
            ["--skip-git-repo-check", "-s", "read-only", "Reply with just the word hi."],
            tmp_path,
            env,
        )
        log = server.log()
        # Codex used WebSocket mode, and its turn completed on the server
        assert '"WebSocket /v1/responses" [accepted]' in log, log[-3000:]
        assert "status=completed" in log or "status=incomplete" in log, log[-3000:]
    finally:
        server.stop()


def test_codex_session_of_five_turns_with_its_own_instructions(tmp_path: Path) -> None:
    """Codex's real fixed head (its instructions and tools, ~9k tokens) needs more than
    the embedded model's 8,192-token context: at --ctx 16384 a session of five turns
    (`codex exec`, then `codex exec resume --last`) runs without context_length_exceeded."""
    codex = codex_binary()
    server = start_server(
        "--ctx", "16384", "--slots", "1", "--api-key", "sk-codex", "--max-output-tokens", "48",
        "--default-temperature", "0", name="codex-long",
    )  # fmt: skip
    try:
        env = codex_home(tmp_path, server.port, short_instructions=False)
        flags = ["--skip-git-repo-check", "-s", "read-only"]
        run_codex(codex, [*flags, "Reply with just the word hi."], tmp_path, env)
        for prompt in ("Now say two.", "Now say three.", "Now say four.", "Now say five."):
            run_codex(codex, [*flags, "resume", "--last", prompt], tmp_path, env)
        log = server.log()
        assert "context_length_exceeded" not in log, log[-3000:]
        turns = [
            (int(field(line, "input")), int(field(line, "output")))
            for line in log.splitlines()
            if "response id=" in line
        ]
        # Five turns that carried Codex's whole head and answered (warm-ups answer nothing).
        assert len([t for t in turns if t[0] > 8192 and t[1] > 0]) >= 5, turns
    finally:
        server.stop()
