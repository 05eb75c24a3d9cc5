"""`create_app(config)`: the ASGI app. Everything mutable hangs off the app it builds."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse

from warmloop.config import Config, default_store_path
from warmloop.engine.backend import LlamaBackend
from warmloop.engine.engine import Engine, EngineConfig
from warmloop.engine.sampling import json_schema_to_gbnf
from warmloop.kvcache.base import KVOps
from warmloop.kvcache.disk_store import DiskStore, identity_of
from warmloop.kvcache.manager import KVCacheManager
from warmloop.kvcache.policy import LRUPolicy
from warmloop.metrics import Metrics
from warmloop.protocol.errors import APIError, InvalidRequest, NotFound, ServerError
from warmloop.serving.chat_template import fallback_template
from warmloop.serving.grammar import Grammars
from warmloop.serving.prepare import Preparer
from warmloop.serving.prompt import PromptRenderer
from warmloop.serving.responses_service import ResponsesService
from warmloop.session.conversation_sql import SQLConversationStore
from warmloop.session.conversations import ConversationStore, InMemoryConversationStore
from warmloop.session.response_store import InMemoryResponseStore, ResponseStore
from warmloop.session.store_sql import (
    PostgresResponseStore,
    SQLiteResponseStore,
    SQLResponseStore,
)
from warmloop.transport import conversations, http, websocket
from warmloop.transport.auth import KeyRing, read_keys_file
from warmloop.transport.connections import Transports
from warmloop.transport.errors import api_error_handler, http_error
from warmloop.transport.runtime import Runtime

log = logging.getLogger("warmloop")


def build_engine(config: Config, metrics: Metrics | None = None) -> Engine:
    """The engine with the KV cache manager placing its jobs (not started)."""

    def manager(ops: KVOps) -> KVCacheManager:
        return KVCacheManager(
            config.slots,
            ops,
            kv_reuse=config.kv_reuse,
            host_budget_bytes=config.kv_host_budget,
            metrics=metrics,
            policy=LRUPolicy(),
            disk=disk_store(config, metrics),
            disk_sync=config.kv_disk_sync,
        )

    return Engine(
        EngineConfig(
            model_path=config.model_path(),
            ctx_per_seq=config.ctx,
            slots=config.slots,
            threads=config.threads,
            batch_tokens=config.batch_tokens,
            prefill_chunk=config.prefill_chunk,
            prefill_stall_factor=config.prefill_stall_factor,
            max_running=0 if config.batching else 1,
            idle_snapshot_s=config.kv_idle_snapshot_s,
            max_draft=config.speculative_draft,
            cpu_variant=config.cpu_variant,
        ),
        manager,
    )


def disk_store(config: Config, metrics: Metrics | None) -> DiskStore | None:
    """The KV disk tier under --kv-disk-dir, or None. A file is used only by a server with
    the same model file, KV layout and engine version (its identity)."""
    if config.kv_disk_dir is None or not config.kv_reuse:
        return None
    directory = config.kv_disk_dir
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    budget = config.kv_disk_budget or shutil.disk_usage(directory).free // 4
    identity = identity_of(
        config.model_path(),
        ctx_per_seq=config.ctx,
        kv_type="f16",
        swa_full=True,
        engine=f"llama-cpp-python {importlib.metadata.version('llama-cpp-python')}",
    )

    def rejected(reason: str) -> None:
        if metrics:
            metrics.disk_rejected.labels(reason).inc()

    def written(ok: bool, _nbytes: int) -> None:
        if metrics and not ok:
            metrics.disk_write_failures.inc()

    log.info("KV disk tier: %s, budget %.1f GiB", directory, budget / 2**30)
    return DiskStore(
        directory,
        budget,
        identity,
        ttl_in_memory_s=config.kv_disk_ttl,
        on_reject=rejected,
        on_write=written,
    )


def keyring(config: Config) -> KeyRing:
    named = read_keys_file(config.api_keys_file) if config.api_keys_file else None
    return KeyRing(config.api_key, named)


def build_store(config: Config) -> ResponseStore:
    ttl = config.store_ttl or None
    cache = InMemoryResponseStore(config.store_max_responses, config.store_max_bytes, ttl)
    if config.store == "memory":
        return cache
    timeout = config.store_timeout_s
    if config.store.startswith(("postgres://", "postgresql://")):
        return PostgresResponseStore(config.store, cache=cache, ttl_s=ttl, timeout_s=timeout)
    path = Path(config.store) if config.store else default_store_path()
    return SQLiteResponseStore(path, cache=cache, ttl_s=ttl, timeout_s=timeout)


def build_conversations(config: Config, store: ResponseStore) -> ConversationStore:
    """Conversations live where responses do: in the same database (its writer thread
    and read connection), or in memory under the cache's bounds."""
    if isinstance(store, SQLResponseStore):
        return SQLConversationStore(store)
    return InMemoryConversationStore(config.store_max_responses, config.store_max_bytes)


def model_id(config: Config) -> str:
    """The model's name on the wire: the file's stem, or the Hugging Face / Ollama name
    that --model gave (an Ollama blob's file name says nothing)."""
    path = config.model_path()
    if config.model is None or Path(config.model).expanduser().is_file():
        return path.stem
    return config.model


def chat_template(config: Config, backend: LlamaBackend) -> str:
    """--chat-template-file when given, else the GGUF's own template, else the turn
    format of the model's architecture (a GGUF may carry no template)."""
    if config.chat_template_file is not None:
        return config.chat_template_file.read_text(encoding="utf-8")
    return backend.chat_template() or fallback_template(backend.architecture())


def build_runtime(config: Config, transports: Transports) -> tuple[Runtime, Engine]:
    metrics = Metrics()
    engine = build_engine(config, metrics)
    backend = engine.backend
    renderer = PromptRenderer(
        chat_template(config, backend),
        bos_token=backend.special_text("bos"),
        eos_token=backend.special_text("eos"),
    )
    store = build_store(config)
    grammars = Grammars(json_schema_to_gbnf, renderer.family, check=engine.check_grammar)
    preparer = Preparer(
        config,
        store,
        renderer,
        backend.tokenize,
        backend.token_piece,
        grammars,
        model_id(config),
        conversations=build_conversations(config, store),
    )
    service = ResponsesService(config, engine, store, preparer, metrics)
    runtime = Runtime(
        config=config,
        service=service,
        keys=keyring(config),
        metrics=metrics,
        transports=transports,
    )
    slots = engine.kv
    metrics.bind_gauge(metrics.slots_in_use, lambda: slots.in_use())
    metrics.bind_gauge(metrics.slots_leased, lambda: slots.leased())
    metrics.bind_gauge(metrics.connections, lambda: runtime.connections)
    metrics.bind_gauge(metrics.tenant_connections, lambda: sum(runtime.tenant_connections.values()))
    metrics.bind_gauge(metrics.lanes, lambda: runtime.lanes)
    metrics.bind_gauge(
        metrics.recent_bytes,
        lambda: sum(c.retained_bytes for c in list(service.retrieval.connections)),
    )
    metrics.bind_gauge(
        metrics.responses_running, lambda: service.leak_counters()["responses_running"]
    )
    metrics.bind_gauge(
        metrics.concurrency_reserved, lambda: service.leak_counters()["concurrency_reserved"]
    )
    metrics.bind_gauge(metrics.store_pending_writes, lambda: store.pending_writes)
    metrics.bind_gauge(metrics.engine_waiting, lambda: len(engine.scheduler.waiting))
    metrics.bind_gauge(metrics.engine_running, lambda: len(engine.scheduler.running))
    metrics.bind_gauge(metrics.engine_alive, lambda: float(engine.alive()))
    metrics.bind_gauge(metrics.host_bytes, lambda: slots.host_bytes())
    metrics.bind_gauge(metrics.host_snapshots, lambda: slots.host_snapshots())
    metrics.bind_gauge(metrics.disk_bytes, lambda: slots.disk_bytes())
    metrics.bind_gauge(metrics.disk_files, lambda: slots.disk_files())
    metrics.bind_gauge(metrics.disk_pending, lambda: slots.disk_pending())
    return runtime, engine


async def purge_expired(store: ResponseStore, ttl_s: float) -> None:
    """Delete expired responses from disk now and then (reads already skip them)."""
    if not ttl_s or not isinstance(store, SQLResponseStore):
        return
    while True:
        await asyncio.sleep(min(ttl_s, 60.0))
        with contextlib.suppress(Exception):
            await asyncio.to_thread(store.purge_expired)


def create_app(config: Config, transports: Transports | None = None) -> FastAPI:
    """The app; `transports` is its server's (launcher.py), through which a route cuts
    off a client that stops reading (without one, e.g. under a test client, it cannot)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime, engine = build_runtime(config, transports or Transports())
        engine.start()
        app.state.runtime = runtime
        log.info(
            "warmloop worker %s serving %s (%s tool calls) on %d slots x %d tokens "
            "(kv reuse %s), CPU variant %s (%s)",
            config.response_worker,
            runtime.service.model_id,
            runtime.service.preparer.renderer.family.name,
            config.slots,
            config.ctx,
            "on" if config.kv_reuse else "off",
            engine.backend.cpu.name,
            engine.backend.cpu.reason,
        )
        lost = runtime.service.store.fail_unfinished(
            "The server stopped while this background response ran.", config.worker_id
        )
        if lost:
            log.warning("%d background responses were cut off by a restart: now failed", lost)
        purge = asyncio.create_task(purge_expired(runtime.service.store, config.store_ttl))
        try:
            yield
        finally:
            purge.cancel()
            await runtime.service.background.close()
            engine.stop()
            runtime.service.store.close()

    app = FastAPI(title="warmloop", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.include_router(http.router)
    app.include_router(conversations.router)
    app.include_router(websocket.router)
    app.add_exception_handler(APIError, api_error_handler)

    async def validation_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        err = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        param = ".".join(str(p) for p in err.get("loc", ())[1:]) or None
        return http_error(InvalidRequest(f"Invalid value for '{param}': {err['msg']}", param=param))

    async def not_found(request: Request, _exc: Exception) -> JSONResponse:
        return http_error(NotFound(f"Unknown route: {request.method} {request.url.path}"))

    app.add_exception_handler(RequestValidationError, validation_error)

    async def not_allowed(request: Request, _exc: Exception) -> JSONResponse:
        err = InvalidRequest(f"Method {request.method} is not allowed on {request.url.path}.")
        err.status, err.code = 405, "method_not_allowed"
        return http_error(err)

    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        # A bug, not the client's fault: still OpenAI's JSON shape, never text/plain.
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return http_error(ServerError("The server had an error while processing the request."))

    app.add_exception_handler(404, not_found)
    app.add_exception_handler(405, not_allowed)
    app.add_exception_handler(Exception, internal_error)
    return app
