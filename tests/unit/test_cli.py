"""Flags and WARMLOOP_* environment variables become one frozen Config."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from warmloop.cli import build_parser, config_from_args, validate
from warmloop.config import Config


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The defaults under test must not depend on the shell that runs pytest."""
    for name in list(os.environ):
        if name.startswith("WARMLOOP_"):
            monkeypatch.delenv(name)


def parse(argv: list[str]) -> object:
    return config_from_args(build_parser().parse_args(["serve", *argv]))


def test_defaults() -> None:
    c = parse([])
    assert c.port == 8000 and c.slots == 4 and c.kv_reuse and c.websocket  # type: ignore[attr-defined]
    assert c.api_keys == () and c.model is None  # type: ignore[attr-defined]


def test_flags() -> None:
    c = parse(
        [
            "--port",
            "9",
            "--api-key",
            "k1",
            "--api-key",
            "k2",
            "--model-alias",
            "gpt-x",
            "--no-kv-reuse",
            "--no-websocket",
            "--no-batching",
            "--model",
            "/m.gguf",
        ]
    )
    assert c.port == 9  # type: ignore[attr-defined]
    assert c.api_keys == ("k1", "k2")  # type: ignore[attr-defined]
    assert c.model_aliases == ("gpt-x",)  # type: ignore[attr-defined]
    assert not c.kv_reuse and not c.websocket and not c.batching  # type: ignore[attr-defined]
    assert c.model == Path("/m.gguf")  # type: ignore[attr-defined]


def test_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WARMLOOP_SLOTS", "7")
    monkeypatch.setenv("WARMLOOP_API_KEY", "a, b")
    monkeypatch.setenv("WARMLOOP_NO_KV_REUSE", "true")
    monkeypatch.setenv("WARMLOOP_WS_MAX_AGE", "12.5")
    c = parse([])
    assert c.slots == 7 and c.api_keys == ("a", "b")  # type: ignore[attr-defined]
    assert not c.kv_reuse and c.ws_max_age_s == 12.5  # type: ignore[attr-defined]
    assert parse(["--slots", "3"]).slots == 3  # type: ignore[attr-defined]  # flags win


def test_all_defaults_come_from_config() -> None:
    c = parse([])
    d = Config()
    for name in (
        "host",
        "port",
        "ctx",
        "slots",
        "batch_tokens",
        "prefill_chunk",
        "batching",
        "log_level",
        "kv_reuse",
        "max_body_bytes",
        "max_output_tokens",
        "max_input_tokens",
        "max_concurrent_per_key",
        "max_connections_per_key",
        "rate_limit_per_minute",
        "default_temperature",
        "store",
        "store_ttl_s",
        "store_max_responses",
        "store_max_bytes",
        "websocket",
        "ws_max_frame_bytes",
        "ws_max_age_s",
        "ws_queue_size",
        "ws_ping_interval_s",
        "max_connections",
        "kv_idle_snapshot_s",
        "model_aliases",
        "api_keys",
        "api_keys_file",
    ):
        assert getattr(c, name) == getattr(d, name), name
    assert isinstance(c, Config)


def test_repeatable_flags_keep_order() -> None:
    c = parse(
        [
            "--api-key",
            "k1",
            "--api-key",
            "k2",
            "--api-key",
            "k3",
            "--model-alias",
            "a",
            "--model-alias",
            "b",
        ]
    )
    assert c.api_keys == ("k1", "k2", "k3")  # type: ignore[attr-defined]
    assert c.model_aliases == ("a", "b")  # type: ignore[attr-defined]


def test_no_kv_reuse_and_no_websocket_are_independent() -> None:
    only_kv = parse(["--no-kv-reuse"])
    assert not only_kv.kv_reuse and only_kv.websocket  # type: ignore[attr-defined]
    only_ws = parse(["--no-websocket"])
    assert only_ws.kv_reuse and not only_ws.websocket  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("var", "value", "field", "expected"),
    [
        ("WARMLOOP_PORT", "9100", "port", 9100),
        ("WARMLOOP_HOST", "0.0.0.0", "host", "0.0.0.0"),
        ("WARMLOOP_CTX", "4096", "ctx", 4096),
        ("WARMLOOP_MODEL", "/models/x.gguf", "model", Path("/models/x.gguf")),
        ("WARMLOOP_MODEL_ALIAS", "gpt-a,gpt-b", "model_aliases", ("gpt-a", "gpt-b")),
        ("WARMLOOP_API_KEYS_FILE", "/etc/keys", "api_keys_file", Path("/etc/keys")),
        ("WARMLOOP_NO_WEBSOCKET", "1", "websocket", False),
        ("WARMLOOP_NO_WEBSOCKET", "no", "websocket", True),
        ("WARMLOOP_NO_KV_REUSE", "false", "kv_reuse", True),
        ("WARMLOOP_NO_KV_REUSE", "ON", "kv_reuse", False),
        ("WARMLOOP_NO_BATCHING", "yes", "batching", False),
        ("WARMLOOP_STORE", "memory", "store", "memory"),
        ("WARMLOOP_STORE_TTL", "30", "store_ttl_s", 30.0),
        ("WARMLOOP_MAX_BODY_BYTES", "1000", "max_body_bytes", 1000),
        ("WARMLOOP_DEFAULT_TEMPERATURE", "0", "default_temperature", 0.0),
        ("WARMLOOP_LOG_LEVEL", "debug", "log_level", "debug"),
        ("WARMLOOP_KV_IDLE_SNAPSHOT_S", "2.5", "kv_idle_snapshot_s", 2.5),
        ("WARMLOOP_MAX_CONNECTIONS", "3", "max_connections", 3),
    ],
)
def test_each_environment_variable(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str, field: str, expected: object
) -> None:
    monkeypatch.setenv(var, value)
    assert getattr(parse([]), field) == expected


def test_flags_override_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WARMLOOP_PORT", "9100")
    monkeypatch.setenv("WARMLOOP_STORE", "memory")
    c = parse(["--port", "9200", "--store", "/tmp/x.db"])
    assert c.port == 9200 and c.store == "/tmp/x.db"  # type: ignore[attr-defined]


def test_environment_is_read_when_the_parser_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = build_parser()
    monkeypatch.setenv("WARMLOOP_SLOTS", "9")
    assert config_from_args(parser.parse_args(["serve"])).slots == Config().slots
    assert parse([]).slots == 9


def test_validate_rejects_impossible_settings(tmp_path: Path) -> None:
    validate(Config())  # the defaults are fine
    with pytest.raises(SystemExit) as err:
        validate(Config(slots=0, ctx=10, model=tmp_path / "missing.gguf"))
    message = str(err.value)
    assert "--slots must be at least 1" in message and "--ctx must be at least 64" in message
    assert "missing.gguf: no such file" in message


def test_serve_subcommand_is_required() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args([])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--log-level", "verbose"])


def test_invalid_log_level_from_environment_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WARMLOOP_LOG_LEVEL", "verbose")
    with pytest.raises(SystemExit):
        validate(parse([]))  # type: ignore[arg-type]


def test_list_flags_replace_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WARMLOOP_API_KEY", "env-key")
    monkeypatch.setenv("WARMLOOP_MODEL_ALIAS", "env-alias")
    from_env = parse([])
    assert from_env.api_keys == ("env-key",) and from_env.model_aliases == ("env-alias",)  # type: ignore[attr-defined]
    flags = parse(["--api-key", "k1", "--api-key", "k2", "--model-alias", "m"])
    assert flags.api_keys == ("k1", "k2") and flags.model_aliases == ("m",)  # type: ignore[attr-defined]
