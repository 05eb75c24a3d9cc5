"""Per-WebSocket-connection state: identity, age, and the connection-local response chain.

With `store: false` the most recent responses of a connection live only here; a
`previous_response_id` naming one of them continues it. The connection id doubles as
the engine lease key, so the connection's slot stays pinned across tool pauses.

Owned by the event loop: the socket's tasks, the service (remembering a finished
response) and DELETE (forgetting one) all run there; a create reads its cached parent
there before the rest of its preparation goes to a worker thread.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from warmloop.config import Config
from warmloop.protocol.items import new_id
from warmloop.session.response_store import StoredResponse

RECENT_RESPONSES: int = Config.model_fields["ws_recent_responses"].default
RECENT_BYTES: int = Config.model_fields["ws_recent_bytes"].default


@dataclass(eq=False)  # identity: the service keeps open connections in a WeakSet
class Connection:
    tenant: str
    # How many latest responses it keeps: enough for the latest one of every lane.
    max_recent: int = RECENT_RESPONSES
    max_bytes: int = RECENT_BYTES  # ... and at most this many bytes of them
    id: str = field(default_factory=lambda: new_id("conn"))
    recent: OrderedDict[str, StoredResponse] = field(default_factory=OrderedDict)
    leases: set[str] = field(default_factory=set)  # engine leases its lanes have used
    # Per lane (engine lease): was its latest response store:true? Its KV may then
    # outlive the socket; a store:false lane's KV dies with it.
    stored_lanes: dict[str, bool] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)  # bytes of each kept response
    retained_bytes: int = 0

    def lane_is_stored(self, lease: str) -> bool:
        return self.stored_lanes.get(lease, False)

    def remember(self, record: StoredResponse, lease: str | None = None) -> int:
        """Keep `record` continuable on this socket; the oldest kept responses go once
        more than `max_recent` or `max_bytes` are held (never the one just kept).
        Returns how many went: a store:false one can no longer be continued."""
        if lease is not None:
            self.stored_lanes[lease] = record.stored
        self.forget(record.id)
        self.recent[record.id] = record
        self.sizes[record.id] = size = record.size()
        self.retained_bytes += size
        dropped = 0
        while len(self.recent) > 1 and (
            len(self.recent) > self.max_recent or self.retained_bytes > self.max_bytes
        ):
            self.forget(next(iter(self.recent)))
            dropped += 1
        return dropped

    def lookup(self, response_id: str) -> StoredResponse | None:
        return self.recent.get(response_id)

    def forget(self, response_id: str) -> None:
        if self.recent.pop(response_id, None) is not None:
            self.retained_bytes -= self.sizes.pop(response_id)
