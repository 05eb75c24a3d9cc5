"""`warmloop serve | bench | demo`. Every `serve` flag is also read from a WARMLOOP_*
environment variable."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from pathlib import Path
from typing import Any

from warmloop.config import Config, default_host_budget, default_threads

ENV_PREFIX = "WARMLOOP_"
LOG_LEVELS = ("debug", "info", "warning", "error")


def _env(name: str, default: Any) -> Any:
    return os.environ.get(ENV_PREFIX + name.upper().replace("-", "_"), default)


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(ENV_PREFIX + name.upper().replace("-", "_"))
    if raw is None:
        return default
    return raw.strip().lower() in ("1", "true", "yes", "on")


def _env_list(name: str) -> list[str]:
    raw = os.environ.get(ENV_PREFIX + name.upper().replace("-", "_"), "")
    return [x.strip() for x in raw.split(",") if x.strip()]


def _flag_or_env_list(given: list[str] | None, name: str) -> list[str]:
    return given if given is not None else _env_list(name)


# `warmloop bench|demo`: their modules define add_arguments(parser) and run(args)
TOOLS = (
    ("bench", "run an agent workload in several modes; table, JSON and plots",
     "warmloop.bench.cli"),
    ("demo", "run a small agent over WebSocket and HTTP on the embedded model", "warmloop.demo"),
    ("doctor", "check the CPU, the engine build and the model; run a short decode",
     "warmloop.doctor"),
)  # fmt: skip


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The CLI's parser; `command` is the subcommand about to run (its flags get added)."""
    parser = argparse.ArgumentParser(prog="warmloop", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="serve the Responses API (HTTP + WebSocket mode)")
    d = Config()
    s.add_argument("--host", default=_env("host", d.host))
    s.add_argument("--port", type=int, default=int(_env("port", d.port)))
    s.add_argument(
        "--model",
        type=Path,
        default=_env("model", None),
        help="GGUF file (default: the embedded SmolLM2-135M-Instruct)",
    )
    s.add_argument(
        "--model-alias",
        action="append",
        default=None,
        help="another name clients may use for the model (repeatable)",
    )
    s.add_argument(
        "--ctx", type=int, default=int(_env("ctx", d.ctx)), help="context tokens per sequence"
    )
    s.add_argument(
        "--slots", type=int, default=int(_env("slots", d.slots)), help="engine sequences (KV slots)"
    )
    s.add_argument("--threads", type=int, default=int(_env("threads", default_threads())))
    s.add_argument(
        "--batch-tokens",
        type=int,
        default=int(_env("batch_tokens", d.batch_tokens)),
        help="tokens per engine step (prefill chunk + decode tokens)",
    )
    s.add_argument(
        "--api-key",
        action="append",
        default=None,
        help="accepted API key (repeatable); none = open server",
    )
    s.add_argument(
        "--api-keys-file",
        type=Path,
        default=_env("api_keys_file", None),
        help="file of 'KEY [TENANT]' lines; keys of one tenant share its responses",
    )
    s.add_argument(
        "--max-input-tokens",
        type=int,
        default=int(_env("max_input_tokens", d.max_input_tokens)),
        help="prompt tokens per response (0 = up to --ctx)",
    )
    s.add_argument(
        "--max-concurrent-per-key",
        type=int,
        default=int(_env("max_concurrent_per_key", d.max_concurrent_per_key)),
        help="responses running at once per API key (more get 429)",
    )
    s.add_argument(
        "--max-connections-per-key",
        type=int,
        default=int(_env("max_connections_per_key", d.max_connections_per_key)),
        help="WebSocket connections per API key (more get 429 on the upgrade)",
    )
    s.add_argument(
        "--rate-limit-per-minute",
        type=int,
        default=int(_env("rate_limit_per_minute", d.rate_limit_per_minute)),
        help="responses created per minute per API key, 0 = unlimited (more get 429)",
    )
    s.add_argument(
        "--log-level",
        default=_env("log_level", d.log_level),
        choices=LOG_LEVELS,
    )
    s.add_argument(
        "--no-kv-reuse",
        action="store_true",
        default=_env_bool("no_kv_reuse", False),
        help="compute every prompt in full (the stateless baseline)",
    )
    s.add_argument(
        "--prefill-chunk",
        type=int,
        default=int(_env("prefill_chunk", d.prefill_chunk)),
        help="prefill tokens per step while other sequences decode (bounds their stall)",
    )
    s.add_argument(
        "--prefill-stall-factor",
        type=float,
        default=float(_env("prefill_stall_factor", d.prefill_stall_factor)),
        help="a step that prefills while others decode takes at most this many times a "
        "decode-only step (0 = fixed --prefill-chunk)",
    )
    s.add_argument(
        "--no-batching",
        action="store_true",
        default=_env_bool("no_batching", False),
        help="run one sequence at a time (baseline for the batching benchmark)",
    )
    s.add_argument(
        "--kv-host-budget",
        type=int,
        default=int(_env("kv_host_budget", default_host_budget())),
        help="bytes of host RAM for snapshots of idle chains (default: 1/4 of free RAM)",
    )
    s.add_argument(
        "--kv-idle-snapshot-s",
        type=float,
        default=float(_env("kv_idle_snapshot_s", 0.0)),
        help="move chains idle this long to host RAM (0 = only when slots run out)",
    )
    s.add_argument(
        "--max-body-bytes", type=int, default=int(_env("max_body_bytes", d.max_body_bytes))
    )
    s.add_argument(
        "--max-output-tokens",
        type=int,
        default=int(_env("max_output_tokens", d.max_output_tokens)),
        help="cap on output tokens per response",
    )
    s.add_argument(
        "--default-temperature",
        type=float,
        default=float(_env("default_temperature", d.default_temperature)),
        help="temperature for requests that do not set one (0 = greedy)",
    )
    s.add_argument(
        "--store",
        default=_env("store", d.store),
        help="where store:true responses persist: a SQLite file (default: "
        "$XDG_DATA_HOME/warmloop/responses.db) or 'memory'",
    )
    s.add_argument(
        "--store-ttl",
        type=float,
        default=float(_env("store_ttl", d.store_ttl_s)),
        help="seconds a stored response is kept (0 = forever)",
    )
    s.add_argument(
        "--store-max-responses",
        type=int,
        default=int(_env("store_max_responses", d.store_max_responses)),
    )
    s.add_argument(
        "--store-max-bytes", type=int, default=int(_env("store_max_bytes", d.store_max_bytes))
    )
    s.add_argument(
        "--store-timeout-s",
        type=float,
        default=float(_env("store_timeout_s", d.store_timeout_s)),
        help="a store read or write slower than this fails with 503 store_unavailable",
    )
    s.add_argument(
        "--no-websocket",
        action="store_true",
        default=_env_bool("no_websocket", False),
        help="refuse WebSocket upgrades with HTTP 426",
    )
    s.add_argument(
        "--ws-max-frame-bytes",
        type=int,
        default=int(_env("ws_max_frame_bytes", d.ws_max_frame_bytes)),
    )
    s.add_argument(
        "--ws-max-age",
        type=float,
        default=float(_env("ws_max_age", d.ws_max_age_s)),
        help="seconds a WebSocket connection may live",
    )
    s.add_argument(
        "--ws-queue-size",
        type=int,
        default=int(_env("ws_queue_size", d.ws_queue_size)),
        help="response.create events that may wait on a connection (beyond one running per lane)",
    )
    s.add_argument(
        "--ws-ping-interval",
        type=float,
        default=float(_env("ws_ping_interval", d.ws_ping_interval_s)),
    )
    s.add_argument(
        "--max-connections",
        type=int,
        default=int(_env("max_connections", d.max_connections)),
        help="WebSocket connections; more get HTTP 426",
    )
    s.add_argument(
        "--ws-max-lanes",
        type=int,
        default=int(_env("ws_max_lanes", d.ws_max_lanes)),
        help="named streams (stream_id) per WebSocket connection",
    )
    s.add_argument(
        "--max-json-depth",
        type=int,
        default=int(_env("max_json_depth", d.max_json_depth)),
        help="nesting levels a request body or frame may have (deeper gets 400)",
    )
    s.add_argument(
        "--write-timeout-s",
        type=float,
        default=float(_env("write_timeout_s", d.write_timeout_s)),
        help="drop an SSE or WebSocket client that reads nothing for this many seconds",
    )
    s.add_argument(
        "--metrics-key",
        default=_env("metrics_key", None),
        help="key /metrics requires (default: any API key when keys are set, else open)",
    )
    s.add_argument(
        "--no-self-test",
        action="store_true",
        default=_env_bool("no_self_test", False),
        help="skip the engine self-test (a short decode in a child process) before serving",
    )
    for name, help_text, module_name in TOOLS:
        tool = sub.add_parser(
            name, help=help_text, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        if name == command:  # import a tool (openai, rich, ...) only when it runs
            module = importlib.import_module(module_name)
            tool.description = module.__doc__
            module.add_arguments(tool)
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    return Config(
        host=args.host,
        port=args.port,
        model=Path(args.model) if args.model else None,
        # flags replace the environment's list rather than adding to it
        model_aliases=tuple(_flag_or_env_list(args.model_alias, "model_alias")),
        ctx=args.ctx,
        slots=args.slots,
        threads=args.threads,
        batch_tokens=args.batch_tokens,
        prefill_chunk=args.prefill_chunk,
        prefill_stall_factor=args.prefill_stall_factor,
        batching=not args.no_batching,
        api_keys=tuple(_flag_or_env_list(args.api_key, "api_key")),
        api_keys_file=Path(args.api_keys_file) if args.api_keys_file else None,
        max_input_tokens=args.max_input_tokens,
        max_concurrent_per_key=args.max_concurrent_per_key,
        max_connections_per_key=args.max_connections_per_key,
        rate_limit_per_minute=args.rate_limit_per_minute,
        log_level=args.log_level,
        kv_reuse=not args.no_kv_reuse,
        kv_host_budget=args.kv_host_budget,
        kv_idle_snapshot_s=args.kv_idle_snapshot_s,
        max_body_bytes=args.max_body_bytes,
        max_output_tokens=args.max_output_tokens,
        default_temperature=args.default_temperature,
        store=args.store,
        store_ttl_s=args.store_ttl,
        store_max_responses=args.store_max_responses,
        store_max_bytes=args.store_max_bytes,
        store_timeout_s=args.store_timeout_s,
        websocket=not args.no_websocket,
        ws_max_frame_bytes=args.ws_max_frame_bytes,
        ws_max_age_s=args.ws_max_age,
        ws_queue_size=args.ws_queue_size,
        ws_ping_interval_s=args.ws_ping_interval,
        max_connections=args.max_connections,
        ws_max_lanes=args.ws_max_lanes,
        max_json_depth=args.max_json_depth,
        write_timeout_s=args.write_timeout_s,
        metrics_key=args.metrics_key or None,
        self_test=not args.no_self_test,
    )


def validate(config: Config) -> None:
    problems = []
    if config.slots < 1:
        problems.append("--slots must be at least 1")
    if config.ctx < 64:
        problems.append("--ctx must be at least 64")
    if config.log_level not in LOG_LEVELS:  # argparse does not check env defaults
        problems.append(f"--log-level must be one of {', '.join(LOG_LEVELS)}")
    if config.prefill_stall_factor != 0 and config.prefill_stall_factor <= 1:
        problems.append("--prefill-stall-factor must be above 1 (or 0 for fixed chunks)")
    if config.batch_tokens < 16:
        problems.append("--batch-tokens must be at least 16")
    if config.api_keys_file is not None and not config.api_keys_file.is_file():
        problems.append(f"--api-keys-file {config.api_keys_file}: no such file")
    if config.model is not None and not config.model.is_file():
        problems.append(f"--model {config.model}: no such file")
    if config.max_json_depth < 8:
        problems.append("--max-json-depth must be at least 8")
    if config.store_timeout_s <= 0:
        problems.append("--store-timeout-s must be above 0")
    if config.write_timeout_s <= 0:
        problems.append("--write-timeout-s must be above 0")
    if config.ws_max_lanes < 1:
        problems.append("--ws-max-lanes must be at least 1")
    if problems:
        raise SystemExit("warmloop: " + "; ".join(problems))


def serve(config: Config) -> None:
    from warmloop.doctor import SelfTestFailed, self_test
    from warmloop.transport.server import server

    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not config.api_keys and config.api_keys_file is None:
        print(
            "warmloop: WARNING: no --api-key given; the server is open to anyone who can reach it",
            file=sys.stderr,
        )
    if config.self_test:
        # Before listening: an engine build this CPU cannot run dies here, in a child,
        # with one clear message, instead of killing the server on the first request.
        try:
            self_test(config.model_path(), threads=config.threads)
        except SelfTestFailed as exc:
            raise SystemExit(f"warmloop: {exc}") from None
    server(config).run()


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv[0] if argv else None).parse_args(argv)
    if args.command == "serve":
        config = config_from_args(args)
        validate(config)
        serve(config)
        return
    module = importlib.import_module(dict((n, m) for n, _, m in TOOLS)[args.command])
    try:
        module.run(args)
    except (ValueError, OSError) as exc:
        raise SystemExit(f"warmloop {args.command}: {exc}") from exc


if __name__ == "__main__":
    main()
