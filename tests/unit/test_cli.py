"""`Config` is the one source of the server's settings: flags and WARMLOOP_* variables are
generated from its fields, and every value is validated in `Config` itself."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from warmloop.cli import Parser, serve
from warmloop.config import Config


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The defaults under test must not depend on the shell that runs pytest."""
    for name in list(os.environ):
        if name.startswith("WARMLOOP_"):
            monkeypatch.delenv(name)


def parse(argv: list[str]) -> Config:
    cli = Parser("serve")
    return cli.config(cli.parse(["serve", *argv]))


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF")
    return path


def test_defaults_are_configs_defaults() -> None:
    c = parse([])
    assert c == Config()
    assert c.port == 8000 and c.slots == 4 and c.kv_reuse and c.websocket
    assert c.api_key == () and c.model is None


def test_flags(model: Path) -> None:
    c = parse(
        [
            "--port", "9",
            "--api-key", "k1",
            "--api-key", "k2",
            "--model-alias", "gpt-x",
            "--no-kv-reuse",
            "--no-websocket",
            "--no-batching",
            "--no-self-test",
            "--model", str(model),
            "--kv-host-budget", "1000",
            "--ws-max-in-flight", "3",
        ]
    )  # fmt: skip
    assert c.port == 9
    assert c.api_key == ("k1", "k2")
    assert c.model_alias == ("gpt-x",)
    assert not c.kv_reuse and not c.websocket and not c.batching and not c.self_test
    assert c.model_path() == model and c.kv_host_budget == 1000 and c.ws_max_in_flight == 3


def test_every_field_is_a_flag() -> None:
    """Adding a field adds its flag: nothing is listed by hand."""
    help_text = Parser("serve").parser._subparsers._group_actions[0].choices["serve"].format_help()  # type: ignore[union-attr]
    for name, field in Config.model_fields.items():
        flag = "--" + name.replace("_", "-")
        assert flag in help_text, flag
        if field.annotation is bool:
            assert "--no-" + name.replace("_", "-") in help_text


def test_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WARMLOOP_SLOTS", "7")
    monkeypatch.setenv("WARMLOOP_API_KEY", "a, b")
    monkeypatch.setenv("WARMLOOP_KV_REUSE", "false")
    monkeypatch.setenv("WARMLOOP_WS_MAX_AGE", "12.5")
    c = parse([])
    assert c.slots == 7 and c.api_key == ("a", "b")
    assert not c.kv_reuse and c.ws_max_age == 12.5
    assert parse(["--slots", "3"]).slots == 3  # flags win
    assert Config().slots == 7  # a Config built in code reads the environment too
    assert Config(slots=2).slots == 2  # ... and its arguments win


@pytest.mark.parametrize(
    ("var", "value", "field", "expected"),
    [
        ("WARMLOOP_PORT", "9100", "port", 9100),
        ("WARMLOOP_HOST", "0.0.0.0", "host", "0.0.0.0"),
        ("WARMLOOP_CTX", "4096", "ctx", 4096),
        ("WARMLOOP_MODEL_ALIAS", "gpt-a,gpt-b", "model_alias", ("gpt-a", "gpt-b")),
        ("WARMLOOP_WEBSOCKET", "0", "websocket", False),
        ("WARMLOOP_WEBSOCKET", "yes", "websocket", True),
        ("WARMLOOP_KV_REUSE", "true", "kv_reuse", True),
        ("WARMLOOP_KV_REUSE", "off", "kv_reuse", False),
        ("WARMLOOP_BATCHING", "no", "batching", False),
        ("WARMLOOP_STORE", "memory", "store", "memory"),
        ("WARMLOOP_STORE_TTL", "30", "store_ttl", 30.0),
        ("WARMLOOP_MAX_BODY_BYTES", "1000000", "max_body_bytes", 1000000),
        ("WARMLOOP_DEFAULT_TEMPERATURE", "0", "default_temperature", 0.0),
        ("WARMLOOP_LOG_LEVEL", "debug", "log_level", "debug"),
        ("WARMLOOP_KV_IDLE_SNAPSHOT_S", "2.5", "kv_idle_snapshot_s", 2.5),
        ("WARMLOOP_MAX_CONNECTIONS", "3", "max_connections", 3),
        ("WARMLOOP_WS_RECENT_RESPONSES", "5", "ws_recent_responses", 5),
        ("WARMLOOP_METRICS_KEY", "mk", "metrics_key", "mk"),
    ],
)
def test_each_environment_variable(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str, field: str, expected: object
) -> None:
    monkeypatch.setenv(var, value)
    assert getattr(parse([]), field) == expected


def test_files_from_the_environment_must_exist(
    monkeypatch: pytest.MonkeyPatch, model: Path
) -> None:
    monkeypatch.setenv("WARMLOOP_MODEL", str(model))
    monkeypatch.setenv("WARMLOOP_API_KEYS_FILE", str(model))
    c = parse([])
    assert c.model_path() == model and c.api_keys_file == model
    monkeypatch.setenv("WARMLOOP_API_KEYS_FILE", "/etc/no-such-keys")
    with pytest.raises(SystemExit, match="--api-keys-file: /etc/no-such-keys: no such file"):
        parse([])


def test_flags_override_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WARMLOOP_PORT", "9100")
    monkeypatch.setenv("WARMLOOP_STORE", "memory")
    c = parse(["--port", "9200", "--store", "/tmp/x.db"])
    assert c.port == 9200 and c.store == "/tmp/x.db"


def test_config_rejects_impossible_settings(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as err:
        Config(slots=0, ctx=10, model=tmp_path / "missing.gguf")
    message = str(err.value)
    assert "slots" in message and "ctx" in message and "missing.gguf: no such file" in message
    with pytest.raises(ValueError, match="above 1"):
        Config(prefill_stall_factor=1.0)
    with pytest.raises(ValueError):
        Config(log_level="verbose")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Config(no_such_setting=1)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--slots", "0"], "--slots: Input should be greater than or equal to 1"),
        (["--ctx", "10"], "--ctx: Input should be greater than or equal to 64"),
        (["--store-timeout-s", "0"], "--store-timeout-s: Input should be greater than 0"),
        (["--prefill-stall-factor", "0.5"], "--prefill-stall-factor must be above 1"),
        (["--model", "/no/such.gguf"], "--model: /no/such.gguf: no such file"),
        (["--ws-max-lanes", "0"], "--ws-max-lanes"),
        (["--max-json-depth", "2"], "--max-json-depth"),
    ],
)
def test_bad_flags_exit_naming_the_flag(argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as err:
        parse(argv)
    assert str(err.value).startswith("warmloop: ") and message in str(err.value)


def test_bad_values_from_the_environment_exit_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WARMLOOP_LOG_LEVEL", "verbose")
    with pytest.raises(SystemExit, match="--log-level"):
        parse([])


def test_serve_subcommand_is_required() -> None:
    with pytest.raises(SystemExit):
        Parser().parse([])


def test_list_flags_replace_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WARMLOOP_API_KEY", "env-key")
    monkeypatch.setenv("WARMLOOP_MODEL_ALIAS", "env-alias")
    from_env = parse([])
    assert from_env.api_key == ("env-key",) and from_env.model_alias == ("env-alias",)
    flags = parse(["--api-key", "k1", "--api-key", "k2", "--model-alias", "m"])
    assert flags.api_key == ("k1", "k2") and flags.model_alias == ("m",)


def test_with_revalidates() -> None:
    c = Config(slots=2)
    assert c.with_(port=1234).port == 1234 and c.with_(port=1234).slots == 2
    with pytest.raises(ValueError):
        c.with_(slots=0)


def test_a_chat_template_that_does_not_compile_stops_serve_with_its_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jinja"
    bad.write_text("{% for m in messages %}\n{{ m.content }\n{% endfor %}")
    with pytest.raises(SystemExit) as err:
        serve(Config(chat_template_file=bad, self_test=False))
    message = str(err.value)
    assert message.startswith(f"warmloop: --chat-template-file {bad} (line 2)"), message
