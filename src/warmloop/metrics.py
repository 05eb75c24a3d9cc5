"""Prometheus metrics of one app: KV reuse by tier, snapshots, slots, latency.

Each app builds its own `Metrics` on its own registry (no process globals), so tests can
run several apps in one process. prometheus-client objects are thread-safe: the engine
thread observes, the event loop serves `/metrics`.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

TIERS = ("slot", "host", "prefix", "none")
# Gauges of work in flight: each must read 0 once every client is gone (leak checks in
# tests/robustness and benchmarks/soak.py).
LEAK_GAUGES = (
    "warmloop_responses_running",
    "warmloop_concurrency_reserved",
    "warmloop_slots_in_use",
    "warmloop_slots_leased",
    "warmloop_websocket_connections",
    "warmloop_websocket_tenant_connections",
    "warmloop_websocket_lanes",
    "warmloop_store_pending_writes",
    "warmloop_engine_waiting",
    "warmloop_websocket_recent_bytes",
)
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_BYTES_BUCKETS = tuple(float(2**k) for k in range(16, 31, 2))


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.prompt_tokens_computed = Counter(
            "warmloop_prompt_tokens_computed", "Prompt tokens computed by the engine", registry=r
        )
        self.prompt_tokens_reused = Counter(
            "warmloop_prompt_tokens_reused",
            "Prompt tokens whose KV was reused, by where it came from",
            ["tier"],
            registry=r,
        )
        self.lookups = Counter(
            "warmloop_kv_lookups",
            "Placements by the tier that supplied the reused prefix (none = miss)",
            ["tier"],
            registry=r,
        )
        self.snapshots = Counter("warmloop_kv_snapshots", "Sequences saved to host RAM", registry=r)
        self.restores = Counter(
            "warmloop_kv_restores", "Snapshots restored into a slot", registry=r
        )
        self.disk_writes = Counter(
            "warmloop_kv_disk_writes", "Chains queued to be written to disk", registry=r
        )
        self.disk_write_failures = Counter(
            "warmloop_kv_disk_write_failures",
            "Chain files that could not be written (a full disk: recomputed later)",
            registry=r,
        )
        self.disk_restores = Counter(
            "warmloop_kv_disk_restores", "Chains restored from disk into a slot", registry=r
        )
        self.disk_rejected = Counter(
            "warmloop_kv_disk_rejected",
            "Chain files not used (truncated, corrupt, foreign, tenant, gone, unreadable): "
            "recomputed instead",
            ["reason"],
            registry=r,
        )
        self.disk_read_seconds = Histogram(
            "warmloop_kv_disk_read_seconds",
            "Time to read and check one chain file (its restore is warmloop_kv_restore_seconds)",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.prefix_copies = Counter(
            "warmloop_kv_prefix_copies", "Prefixes copied between slots", registry=r
        )
        self.host_evictions = Counter(
            "warmloop_kv_host_evictions",
            "Snapshots dropped to stay within the host budget",
            registry=r,
        )
        self.slot_evictions = Counter(
            "warmloop_kv_slot_evictions",
            "Idle chains moved out of a slot for another job",
            registry=r,
        )
        self.snapshot_bytes = Histogram(
            "warmloop_kv_snapshot_bytes", "Size of one snapshot", buckets=_BYTES_BUCKETS, registry=r
        )
        self.snapshot_seconds = Histogram(
            "warmloop_kv_snapshot_seconds",
            "Time to save one sequence",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.restore_seconds = Histogram(
            "warmloop_kv_restore_seconds",
            "Time to restore one sequence",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft_seconds = Histogram(
            "warmloop_ttft_seconds",
            "Time to first token, request to first sampled token",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.token_seconds = Histogram(
            "warmloop_time_per_output_token_seconds",
            "Time between output tokens",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.output_tokens = Counter("warmloop_output_tokens", "Tokens generated", registry=r)
        self.draft_tokens = Counter(
            "warmloop_speculative_draft_tokens",
            "Tokens drafted from the context (prompt lookup) and verified",
            registry=r,
        )
        self.accepted_tokens = Counter(
            "warmloop_speculative_accepted_tokens",
            "Drafted tokens that verification accepted (acceptance rate: this / drafted)",
            registry=r,
        )
        self.responses = Counter(
            "warmloop_responses",
            "Responses ended, by how: completed, incomplete, cancelled, failed, or client_left "
            "(the client went away first; its job was cancelled)",
            ["status"],
            registry=r,
        )
        self.recent_dropped = Counter(
            "warmloop_websocket_recent_dropped",
            "Responses a socket stopped keeping continuable (--ws-recent-responses/-bytes)",
            registry=r,
        )
        self.recent_bytes = Gauge(
            "warmloop_websocket_recent_bytes",
            "Bytes of responses open sockets keep continuable in memory",
            registry=r,
        )
        self.slots_in_use = Gauge("warmloop_slots_in_use", "Slots running a job", registry=r)
        self.slots_leased = Gauge(
            "warmloop_slots_leased", "Slots pinned to a connection", registry=r
        )
        self.host_bytes = Gauge(
            "warmloop_kv_host_bytes", "Bytes of snapshots in host RAM", registry=r
        )
        self.disk_bytes = Gauge(
            "warmloop_kv_disk_bytes", "Bytes of chain files in the KV disk directory", registry=r
        )
        self.disk_pending = Gauge(
            "warmloop_kv_disk_pending",
            "Chain file writes, deletes and touches queued for the disk writer",
            registry=r,
        )
        self.disk_files = Gauge(
            "warmloop_kv_disk_files", "Chain files in the KV disk directory", registry=r
        )
        self.host_snapshots = Gauge(
            "warmloop_kv_host_snapshots", "Snapshots in host RAM", registry=r
        )
        self.connections = Gauge(
            "warmloop_websocket_connections", "Open WebSocket connections", registry=r
        )
        # Resources that must all return to 0 once every client is gone (leak checks).
        self.responses_running = Gauge(
            "warmloop_responses_running", "Responses admitted and not yet ended", registry=r
        )
        self.concurrency_reserved = Gauge(
            "warmloop_concurrency_reserved",
            "Per-key concurrency reservations held (sum over keys)",
            registry=r,
        )
        self.tenant_connections = Gauge(
            "warmloop_websocket_tenant_connections",
            "WebSocket connections counted against per-key limits (sum over keys)",
            registry=r,
        )
        self.lanes = Gauge(
            "warmloop_websocket_lanes",
            "Named streams open across WebSocket connections",
            registry=r,
        )
        self.store_pending_writes = Gauge(
            "warmloop_store_pending_writes", "Store writes submitted and not finished", registry=r
        )
        self.engine_waiting = Gauge(
            "warmloop_engine_waiting", "Jobs waiting for an engine slot", registry=r
        )
        self.engine_running = Gauge(
            "warmloop_engine_running", "Sequences prefilling or decoding", registry=r
        )
        self.engine_alive = Gauge(
            "warmloop_engine_thread_alive", "1 while the engine thread runs", registry=r
        )
        for tier in TIERS:  # make every series visible from the start
            self.lookups.labels(tier)
            self.prompt_tokens_reused.labels(tier)

    def bind_gauge(self, gauge: Gauge, fn: Callable[[], float]) -> None:
        gauge.set_function(fn)

    def render(self) -> bytes:
        return generate_latest(self.registry)
