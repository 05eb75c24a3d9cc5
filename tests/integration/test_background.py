"""Background responses with the official SDK: poll, resume the event stream from any
sequence number, cancel, survive the client and a server restart."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from openai.types.responses import Response

from tests.conftest import LiveServer, start_server

BODY = {"model": "default", "input": "Write a long story about a lighthouse.", "temperature": 0}


@pytest.fixture(scope="module")
def bg_server() -> Iterator[LiveServer]:
    s = start_server(name="background")
    yield s
    s.stop()


def client(server: LiveServer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.base_url, api_key="none", max_retries=0)


async def until_ended(http: openai.AsyncOpenAI, response_id: str) -> Response:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        r = await http.responses.retrieve(response_id)
        if r.status not in ("queued", "in_progress"):
            return r
        await asyncio.sleep(0.2)
    raise AssertionError(f"{response_id} did not end")


async def test_a_background_response_answers_at_once_and_polls_to_its_end(
    bg_server: LiveServer,
) -> None:
    async with client(bg_server) as http:
        r = await http.responses.create(**BODY, background=True, max_output_tokens=24)
        assert r.status == "queued" and r.background is True and not r.output
        done = await until_ended(http, r.id)
        assert done.status == "incomplete" and done.output_text and done.background
        assert done.usage is not None and done.usage.output_tokens == 24
        # It is a stored response like any other: a chain can go on from it.
        nxt = await http.responses.create(
            **BODY | {"input": "Go on."}, previous_response_id=r.id, max_output_tokens=4
        )
        assert nxt.usage is not None and nxt.usage.input_tokens > done.usage.input_tokens


async def test_the_stream_resumes_after_any_sequence_number(bg_server: LiveServer) -> None:
    """The client reads a few events and leaves; the response runs on; GET with
    stream=true and starting_after=N replays from N + 1 and follows it to the end."""
    async with client(bg_server) as http:
        stream = await http.responses.create(
            **BODY, background=True, stream=True, max_output_tokens=32
        )
        seen = []
        async for event in stream:
            seen.append(event)
            if len(seen) == 5:
                break
        await stream.close()
        response_id = seen[0].response.id  # type: ignore[union-attr]
        last = seen[-1].sequence_number
        rest = [
            e
            async for e in await http.responses.retrieve(
                response_id, stream=True, starting_after=last
            )
        ]
        numbers = [e.sequence_number for e in seen + rest]
        assert numbers == list(range(len(numbers)))  # nothing lost, nothing twice
        assert rest[-1].type == "response.incomplete"
        # The whole stream again, from the start, for as long as it is kept.
        again = [e async for e in await http.responses.retrieve(response_id, stream=True)]
        assert [e.sequence_number for e in again] == numbers
        # A response that did not run in the background has no stream to resume.
        plain = await http.responses.create(**BODY, max_output_tokens=2)
        with pytest.raises(openai.BadRequestError) as err:
            await http.responses.retrieve(plain.id, stream=True)
        assert err.value.param == "stream"


async def test_cancel_stops_a_background_response(bg_server: LiveServer) -> None:
    async with client(bg_server) as http:
        r = await http.responses.create(**BODY, background=True, max_output_tokens=2000)
        await asyncio.sleep(0.5)
        await http.responses.cancel(r.id)
        done = await until_ended(http, r.id)
        assert done.status == "cancelled"
        assert done.usage is None or done.usage.output_tokens < 2000
        with pytest.raises(openai.BadRequestError) as err:  # needs store:true
            await http.responses.create(**BODY, background=True, store=False)
        assert err.value.param == "store"


async def test_cancel_of_a_response_still_waiting_for_a_slot_ends_it(
    bg_server: LiveServer,
) -> None:
    """Two long responses hold both slots; a third waits. Cancelling the waiting one
    ends it at once (it used to stay in_progress until the server stopped)."""
    async with client(bg_server) as http:
        busy = [
            await http.responses.create(**BODY, background=True, max_output_tokens=2000)
            for _ in range(2)
        ]
        waiting = await http.responses.create(**BODY, background=True, max_output_tokens=8)
        await asyncio.sleep(0.5)
        await http.responses.cancel(waiting.id)
        done = await until_ended(http, waiting.id)
        assert done.status == "cancelled"
        assert (await http.responses.retrieve(busy[0].id)).status == "in_progress"
        for r in busy:
            await http.responses.cancel(r.id)
            assert (await until_ended(http, r.id)).status == "cancelled"


async def test_a_continuation_of_a_running_background_response_is_refused(
    bg_server: LiveServer,
) -> None:
    async with client(bg_server) as http:
        r = await http.responses.create(**BODY, background=True, max_output_tokens=400)
        with pytest.raises(openai.BadRequestError) as err:
            await http.responses.create(**BODY, previous_response_id=r.id, max_output_tokens=2)
        assert err.value.param == "previous_response_id"
        await http.responses.cancel(r.id)
        await until_ended(http, r.id)


async def test_a_restart_mid_run_leaves_it_failed_never_lost(tmp_path: Path) -> None:
    store = str(tmp_path / "responses.db")
    first = start_server("--store", store, name="bg-restart")
    try:
        async with client(first) as http:
            r = await http.responses.create(**BODY, background=True, max_output_tokens=2000)
            await asyncio.sleep(1.0)
            assert (await http.responses.retrieve(r.id)).status == "in_progress"
    finally:
        first.process.kill()  # no shutdown at all
        first.process.wait()
        first.stop()
    second = start_server("--store", store, name="bg-restart")
    try:
        async with client(second) as http:
            after = await http.responses.retrieve(r.id)
        assert after.status == "failed" and after.error is not None
        assert "stopped" in after.error.message
    finally:
        second.stop()
