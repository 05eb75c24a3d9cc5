"""A create once it is checked and tokenized (`Prepared`, immutable), and who asked for
it (`CallContext`: the tenant, and the socket and lane it came on)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from warmloop.engine.request import Job, SamplingParams
from warmloop.protocol.items import CompactionItem, Item
from warmloop.protocol.requests import CreateRequest, Retention
from warmloop.protocol.tools import FunctionTool
from warmloop.serving.families import CallParser
from warmloop.session.connection import Connection
from warmloop.session.conversations import ConversationLock
from warmloop.session.response_store import ChainState, StoredResponse


@dataclass
class CallContext:
    tenant: str = ""
    connection: Connection | None = None
    lane: str | None = None  # WebSocket stream_id: each lane has its own chain and slot

    @property
    def lease(self) -> str | None:
        """Engine lease key: one per connection lane, so a lane's slot stays pinned."""
        if self.connection is None:
            return None
        return self.connection.id if self.lane is None else f"{self.connection.id}#{self.lane}"


@dataclass(frozen=True)
class ConversationTurn:
    """The conversation a response belongs to (`conversation` on the create)."""

    id: str
    items: tuple[Item, ...]  # the conversation before this response's input
    # its latest response's chain, if this worker still holds it (ConversationChains)
    chain: ChainState | None
    # held from the preparation to the end of the response (one at a time per conversation)
    lock: ConversationLock | None = None


@dataclass(frozen=True)
class Prepared:
    """A create, checked and tokenized (worker thread), ready to start; immutable: a
    response that compacts first gets a new one for its second phase
    (`Preparer.after_compaction`)."""

    id: str
    request: CreateRequest
    ctx: CallContext
    previous: StoredResponse | None
    new_items: tuple[Item, ...]
    history_in: tuple[Item, ...]
    prompt_text: str
    tokens: list[int]
    delta_only: bool  # the prompt reused the chain's tokens and tokenized only new text
    params: SamplingParams
    # include reasoning.encrypted_content: seals a reasoning text for this tenant
    seal: Callable[[str], str] | None
    # the tools the model may call (none under tool_choice "none") and the parser that
    # reads its output in the model family's syntax
    tools: tuple[FunctionTool, ...]
    parser: Callable[[], CallParser]
    shared_prefix: int  # tokens of the rendered instructions/tools message
    truncated_items: int = 0  # truncation "auto" dropped this many of the oldest items
    drop: tuple[int, int] | None = None  # ... and these tokens of the chain (see Job.drop)
    # context_management: the prompt passed this threshold, so `compaction` (the summary's
    # job) runs first and `Preparer.after_compaction` builds the prompt that runs
    compaction_threshold: int | None = None
    compaction: Prepared | None = None
    compacted_by: CompactionItem | None = None  # this prompt continues from that summary
    # prompt_cache_retention, normalised ("in-memory" is "in_memory"), else the server's
    # --prompt-cache-retention: how long the engine side should keep this prompt's cache
    retention: Retention = "in_memory"
    conversation: ConversationTurn | None = None  # the one it belongs to; its history
    created_at: float = field(default_factory=time.time)

    def job(self, response_id: str) -> Job:
        """The engine job that computes this prompt for the response `response_id`."""
        return Job(
            id=response_id,
            tokens=self.tokens,
            params=self.params,
            tenant=self.ctx.tenant,
            lease=self.ctx.lease,
            prefill_only=not self.request.generate,
            shared_prefix=self.shared_prefix,
            drop=self.drop,
            # What may outlive the process on disk: a stored chain, a conversation, or a
            # prompt whose client asked for its cache to be kept for 24 hours.
            durable=self.request.store or self.conversation is not None or self.retention == "24h",
            retention=self.retention,
        )
