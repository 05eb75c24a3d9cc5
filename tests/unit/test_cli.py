"""Flags and WARMLOOP_* environment variables become one frozen Config."""

from __future__ import annotations

from pathlib import Path

import pytest

from warmloop.cli import build_parser, config_from_args


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
