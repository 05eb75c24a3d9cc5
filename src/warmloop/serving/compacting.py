"""`context_management` compaction: the first phase of a response's run.

When a prompt passes the compaction threshold, the response first writes a summary of
the conversation (output item 0, `response.compaction.compacting` every
COMPACTING_EVERY summary tokens) as a continuation of the chain's KV, and then runs on
the compacted prompt (`Preparer.after_compaction`), whose head's KV is still in the
slot. The phase runs inside the response's own stream and changes nothing of the
response itself: it says what comes next (`after`) or why it failed (`error`), and the
stream moves its run and its live entry on.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

from warmloop.engine.request import EngineHandle, Failed, Finished, Job, Placed, TokenOut
from warmloop.protocol.errors import APIError
from warmloop.protocol.items import CompactionItem, new_id
from warmloop.serving import event_builder as ev
from warmloop.serving.prepare import Preparer
from warmloop.serving.prepared import Prepared
from warmloop.serving.run import ResponseRun

COMPACTING_EVERY = 32  # summary tokens per `response.compaction.compacting` event


class CompactionPhase:
    def __init__(self, engine: EngineHandle, preparer: Preparer) -> None:
        self.engine = engine
        self.preparer = preparer
        self.after: Prepared | None = None  # the prompt the response continues with
        self.error: dict[str, Any] | None = None  # or why it cannot

    async def events(self, run: ResponseRun, job: Job) -> AsyncGenerator[ev.Event]:
        """Write the summary with `job` (the summary's), streaming its events."""
        p = run.p
        assert p.compaction is not None
        item_id = new_id("cmp")
        yield run.seq(ev.compaction_added(0, item_id))
        text: list[str] = []  # one piece per sampled token
        cached = 0
        async for e in self.engine.run(job):
            if isinstance(e, Placed):
                cached = e.cached_tokens
            elif isinstance(e, TokenOut):
                text.append(e.text)
                if len(text) % COMPACTING_EVERY == 1:
                    yield run.seq(ev.compaction_compacting(0, item_id))
            elif isinstance(e, Finished):
                run.compacted(p.compaction, cached, e)
            elif isinstance(e, Failed):
                self.error = {"code": "server_error", "message": e.message}
                return
        summary = CompactionItem(item_id, "".join(text).strip())
        yield run.out.add(summary)
        try:
            self.after = await asyncio.to_thread(self.preparer.after_compaction, p, summary)
        except APIError as exc:  # e.g. the compacted prompt still does not fit
            self.error = {"code": exc.code, "message": exc.message}
