"""Compaction: `POST /v1/responses/compact`, in OpenAI's shape.

The model summarizes the conversation (`previous_response_id` and/or `input`, under
`instructions`), and the answer is the compacted item list a client sends as its next
`input`: the messages a compaction keeps (`prompt.compaction_keeps`: the user's, the
system's and the developer's), verbatim, then one `compaction` item holding the summary.

The summary is written as a continuation of the conversation's own chain (its prompt
is the conversation plus one request to summarize), so for a chain whose KV is warm
(the same socket, or a stored chain still in a slot or host RAM) compaction computes
only that request and the summary, not the conversation again.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from warmloop.fleet.keys import response_id
from warmloop.protocol.errors import InvalidRequest
from warmloop.protocol.events import output_text
from warmloop.protocol.items import CompactionItem, Item, item_to_wire, new_id
from warmloop.protocol.requests import IDENTIFIER_MAX_CHARS, parse_create, validation_error
from warmloop.serving.output import collect
from warmloop.serving.prepare import SUMMARY_REQUEST
from warmloop.serving.prepared import CallContext
from warmloop.serving.prompt import compaction_keeps
from warmloop.serving.responses_service import ResponsesService


class CompactBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    input: str | list[Any] | None = None
    instructions: str | None = None
    previous_response_id: str | None = None
    prompt_cache_key: str | None = Field(default=None, max_length=IDENTIFIER_MAX_CHARS)


async def compact(
    service: ResponsesService, raw: Any, ctx: CallContext, summary_tokens: int
) -> dict[str, Any]:
    """Run one compaction and return the `response.compaction` object."""
    if not isinstance(raw, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    try:
        body = CompactBody.model_validate(raw)
    except ValidationError as exc:
        raise validation_error(exc) from None
    items: list[Any] = [body.input] if isinstance(body.input, str) else list(body.input or [])
    items = [{"role": "user", "content": i} if isinstance(i, str) else i for i in items]
    if not items and body.previous_response_id is None:
        raise InvalidRequest("Give 'input' or 'previous_response_id' to compact.", param="input")
    request = parse_create(
        {
            "model": body.model,
            "instructions": body.instructions,
            "previous_response_id": body.previous_response_id,
            "input": [*items, {"role": "user", "content": SUMMARY_REQUEST}],
            "temperature": 0,
            "max_output_tokens": summary_tokens,
            "truncation": "auto",  # a conversation that no longer fits can still be compacted
            "store": False,
        }
    )
    prepared = await service.prepare_off_loop(request, ctx)
    final = await collect(service.start(prepared))
    summary = output_text(final).strip()
    conversation = (prepared.previous.history if prepared.previous else ()) + prepared.new_items
    kept: list[Item] = [i for i in conversation[:-1] if compaction_keeps(i)]
    output = [*kept, CompactionItem(new_id("cmp"), summary)]
    return {
        "id": response_id(service.config.response_worker),
        "object": "response.compaction",
        "created_at": int(time.time()),
        "output": [item_to_wire(i) for i in output],
        "usage": final["usage"],
    }
