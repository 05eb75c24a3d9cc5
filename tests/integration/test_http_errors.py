"""Every client mistake over HTTP gets OpenAI's error shape and the right status, never a 500."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import KEY_A, LiveServer

AUTH = {"Authorization": f"Bearer {KEY_A}"}


def post(server: LiveServer, body: object, **kw: object) -> httpx.Response:
    return httpx.post(f"{server.base_url}/responses", json=body, headers=AUTH, timeout=60, **kw)  # type: ignore[arg-type]


def assert_error(r: httpx.Response, status: int, code: str | None, param: str | None) -> None:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"]
    if code is not None:
        assert err["code"] == code
    assert err["param"] == param


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "default", "input": "Hi", "temperature": 5}, "temperature"),
        ({"model": "default", "input": "Hi", "top_p": 0}, "top_p"),
        ({"model": "default", "input": "Hi", "max_output_tokens": 0}, "max_output_tokens"),
        ({"model": "default"}, "input"),
        ({"model": "default", "input": 42}, "input"),
        ({"model": "default", "input": [{"role": "wizard", "content": "x"}]}, "input[0].role"),
        (
            {"model": "default", "input": [{"role": "user", "content": [{"type": "input_image"}]}]},
            "input[0].content[0].type",
        ),
        (
            {"model": "default", "input": [{"type": "function_call", "name": "f"}]},
            "input[0].call_id",
        ),
        ({"model": "default", "input": "Hi", "tools": [{"type": "nonsense"}]}, "tools[0].type"),
        ({"model": "default", "input": "Hi", "tool_choice": "sometimes"}, "tool_choice"),
        (
            {
                "model": "default",
                "input": "Hi",
                "text": {"format": {"type": "json_schema", "name": "x"}},
            },
            "text.format.schema",
        ),
        ({"model": "default", "input": "Hi", "background": True, "store": False}, "store"),
        (
            {"model": "default", "input": [{"type": "item_reference", "id": "msg_nope"}]},
            "input[0].id",
        ),
    ],
)
def test_invalid_request_names_param(server: LiveServer, body: object, param: str) -> None:
    assert_error(post(server, body), 400, None, param)


def test_unknown_field_is_rejected(server: LiveServer) -> None:
    assert_error(
        post(server, {"model": "default", "input": "Hi", "frobnicate": 1}),
        400,
        "unknown_parameter",
        "frobnicate",
    )


def test_invalid_json(server: LiveServer) -> None:
    r = httpx.post(
        f"{server.base_url}/responses",
        content=b"{not json",
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert_error(r, 400, "invalid_json", None)


def test_unknown_model(server: LiveServer) -> None:
    assert_error(post(server, {"model": "gpt-9", "input": "Hi"}), 404, "model_not_found", "model")


def test_body_too_large(server: LiveServer) -> None:
    # the test server's --max-body-bytes is 200000
    assert_error(
        post(server, {"model": "default", "input": "x" * 300_000}), 413, "request_too_large", None
    )


def test_context_length_exceeded(server: LiveServer) -> None:
    # the test server's --ctx is 2048 tokens per sequence
    r = post(server, {"model": "default", "input": "Hi", "max_output_tokens": 3000})
    assert_error(r, 400, "context_length_exceeded", "input")
    r = post(server, {"model": "default", "input": "word " * 3000})
    assert_error(r, 400, "context_length_exceeded", "input")


def test_unknown_ids_are_404(server: LiveServer) -> None:
    for method, path in [
        ("GET", "/responses/resp_missing"),
        ("DELETE", "/responses/resp_missing"),
        ("POST", "/responses/resp_missing/cancel"),
        ("GET", "/responses/resp_missing/input_items"),
    ]:
        r = httpx.request(method, f"{server.base_url}{path}", headers=AUTH)
        assert_error(r, 404, "not_found", "response_id")


def test_unknown_route_is_404_in_error_shape(server: LiveServer) -> None:
    r = httpx.get(f"{server.base_url}/nothing-here", headers=AUTH)
    assert r.status_code == 404
    assert r.json()["error"]["message"]


def test_wrong_method_is_405_in_error_shape(server: LiveServer) -> None:
    r = httpx.put(f"{server.base_url}/responses", headers=AUTH)
    assert r.status_code == 405
    assert r.json()["error"]["code"] == "method_not_allowed"


def test_server_still_serves_after_errors(server: LiveServer) -> None:
    r = post(server, {"model": "default", "input": "Hi", "temperature": 0, "max_output_tokens": 2})
    assert r.status_code == 200
    assert server.health()["slots_busy"] == 0


def test_max_output_tokens_over_the_server_cap(server: LiveServer) -> None:
    """--max-output-tokens (default 4096) is a clear 400, not a silent clamp."""
    r = post(server, {"model": "default", "input": "Hi", "max_output_tokens": 5000})
    assert_error(r, 400, "integer_above_max_value", "max_output_tokens")
    assert "4096" in r.json()["error"]["message"]
