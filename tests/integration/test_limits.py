"""Tenants from an API-keys file, and every per-key limit's error on both transports."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import httpx
import pytest
import websockets

from tests.conftest import LiveServer, start_server

ALICE_1, ALICE_2, BOB = "sk-alice-one", "sk-alice-two", "sk-bob"


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    keys = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys.write_text(f"# team keys\n{ALICE_1} alice\n{ALICE_2} alice  # laptop\n{BOB}\n")
    s = start_server(
        "--api-keys-file",
        str(keys),
        "--max-input-tokens",
        "60",
        "--max-concurrent-per-key",
        "1",
        "--max-connections-per-key",
        "2",
        "--rate-limit-per-minute",
        "8",
        name="limits",
    )
    yield s
    s.stop()


def post(s: LiveServer, key: str, body: dict[str, object]) -> httpx.Response:
    return httpx.post(
        f"{s.base_url}/responses",
        headers=auth(key),
        timeout=60,
        json={"model": "default", "temperature": 0} | body,
    )


def test_keys_file_tenants_share_and_isolate(limited: LiveServer) -> None:
    r = post(limited, ALICE_1, {"input": "Hi", "max_output_tokens": 2}).json()
    assert (
        httpx.get(f"{limited.base_url}/responses/{r['id']}", headers=auth(ALICE_2)).status_code
        == 200
    )
    assert (
        httpx.get(f"{limited.base_url}/responses/{r['id']}", headers=auth(BOB)).status_code == 404
    )
    assert "sk-alice" not in limited.log() and "sk-bob" not in limited.log()  # keys never logged


def test_max_input_tokens(limited: LiveServer) -> None:
    r = post(limited, BOB, {"input": "word " * 80})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "input_too_long" and r.json()["error"]["param"] == "input"


async def test_concurrency_limit_per_key(limited: LiveServer) -> None:
    # The grammar forces a long array, so the first response cannot end early (an EOS
    # after a few dozen tokens on a loaded machine would end it before the second create).
    long_array = {
        "type": "object",
        "properties": {"n": {"type": "array", "items": {"type": "integer"}, "minItems": 150}},
        "required": ["n"],
    }
    body = {
        "model": "default",
        "input": "List numbers.",
        "temperature": 0,
        "max_output_tokens": 300,
        "stream": True,
        "text": {"format": {"type": "json_schema", "name": "nums", "schema": long_array}},
    }
    async with (
        httpx.AsyncClient(timeout=60) as client,
        client.stream(
            "POST", f"{limited.base_url}/responses", json=body, headers=auth(BOB)
        ) as running,
    ):
        # Hold the line iterator: dropped, its finalizer would close the connection
        # (httpcore closes a stream whose iterator is closed) and end the first response.
        lines = running.aiter_lines()
        async for line in lines:
            if "output_text.delta" in line:
                break
        second = await client.post(
            f"{limited.base_url}/responses",
            headers=auth(BOB),
            json={"model": "default", "input": "Hi"},
        )
        assert second.status_code == 429
        assert second.json()["error"]["code"] == "concurrency_limit_exceeded"
        other = await client.post(
            f"{limited.base_url}/responses",
            headers=auth(ALICE_1),
            json={"model": "default", "input": "Hi", "max_output_tokens": 1},
        )
        assert other.status_code == 200  # other tenants are not affected


async def test_connections_per_key_and_ws_errors(limited: LiveServer) -> None:
    async with (
        websockets.connect(limited.ws_url, additional_headers=auth(ALICE_1)) as a,
        websockets.connect(limited.ws_url, additional_headers=auth(ALICE_2)),
    ):
        with pytest.raises(websockets.InvalidStatus) as err:
            await websockets.connect(limited.ws_url, additional_headers=auth(ALICE_1))
        assert err.value.response.status_code == 429
        await a.send(json.dumps({"type": "response.create", "input": "word " * 80}))
        e = json.loads(await asyncio.wait_for(a.recv(), timeout=30))
        assert e["type"] == "error" and e["error"]["code"] == "input_too_long"


def test_rate_limit_with_retry_after(limited: LiveServer) -> None:
    codes = []
    for _ in range(10):
        r = post(limited, BOB, {"input": "Hi", "max_output_tokens": 1})
        codes.append(r.status_code)
        if r.status_code == 429:
            assert r.json()["error"]["code"] == "rate_limit_exceeded"
            assert int(r.headers["Retry-After"]) >= 1
            break
    assert codes[-1] == 429 and codes.count(200) <= 8
