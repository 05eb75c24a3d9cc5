"""`warmloop fleet config | up`: run warmloop as a fleet behind HAProxy (docs/fleet.md).

warmloop fleet config --workers w1=http://10.0.0.5:8000 http://10.0.0.6:8000 -o haproxy.cfg
    HAProxy 2.6 configuration routing each turn to the worker holding its KV
    (previous_response_id, then the session header, then tenant + prompt_cache_key,
    then least connections). A worker's id defaults to the one it derives itself
    from its address; give ID= when workers run with --worker-id.

warmloop fleet up --workers 3 [--port 8000] [-- serve flags...]
    On this machine: a throwaway PostgreSQL, N workers (w1..wN, --threads 1) and
    HAProxy on --port; Ctrl-C or SIGTERM stops them all (workers drain first).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from warmloop.fleet.haproxy import Settings, Worker, haproxy_binary, render, validate


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="fleet_command", required=True)
    d = Settings()

    def proxy_flags(q: argparse.ArgumentParser) -> None:
        q.add_argument(
            "--bufsize", type=int, default=d.bufsize, help="tune.bufsize: body bytes read"
        )
        q.add_argument("--weight", type=int, default=d.weight, help="ring points = 16 x weight")
        q.add_argument(
            "--roundrobin", action="store_true", help="plain round robin, no affinity (a baseline)"
        )

    config = sub.add_parser("config", help="write an HAProxy configuration for some workers")
    config.add_argument(
        "--workers", nargs="+", required=True, metavar="[ID=]URL", help="the workers"
    )
    config.add_argument("--port", type=int, default=8000, help="where HAProxy listens")
    config.add_argument("--bind", default=None, help="HAProxy's bind line (default *:PORT)")
    config.add_argument("-o", "--output", type=Path, default=None, help="file (default: stdout)")
    config.add_argument("--no-check", action="store_true", help="skip `haproxy -c`")
    proxy_flags(config)

    up = sub.add_parser("up", help="PostgreSQL, N workers and HAProxy on this machine")
    up.add_argument("--workers", type=int, default=3, help="how many workers")
    up.add_argument("--port", type=int, default=8000, help="where HAProxy listens")
    up.add_argument("--host", default="127.0.0.1", help="where HAProxy listens")
    up.add_argument("--store", default=None, help="an existing PostgreSQL URL (default: a new one)")
    up.add_argument("--state-dir", type=Path, default=None, help="for logs and the cluster")
    up.add_argument("serve_args", nargs=argparse.REMAINDER, help="-- then flags for each worker")
    proxy_flags(up)


def _settings(args: argparse.Namespace, bind: str) -> Settings:
    return Settings(bind=bind, bufsize=args.bufsize, weight=args.weight, roundrobin=args.roundrobin)


def run(args: argparse.Namespace) -> None:
    if args.fleet_command == "config":
        workers = [Worker.parse(spec) for spec in args.workers]
        text = render(workers, _settings(args, args.bind or f"*:{args.port}"))
        if not args.no_check and haproxy_binary() is not None:
            validate(text)
        if args.output is None:
            sys.stdout.write(text)
        else:
            args.output.write_text(text)
            print(f"wrote {args.output} ({len(workers)} workers)", file=sys.stderr)
        return
    up(args)


def up(args: argparse.Namespace) -> None:
    from warmloop.fleet.local import Fleet

    serve_args = [a for a in args.serve_args if a != "--"]
    fleet = Fleet(
        workers=args.workers,
        port=args.port,
        host=args.host,
        serve_args=serve_args,
        settings=_settings(args, f"{args.host}:{args.port}"),
        store=args.store,
        state_dir=args.state_dir,
    )
    stop = threading.Event()

    def on_signal(sig: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"starting {args.workers} workers, PostgreSQL and HAProxy (logs: {fleet.dir})")
    fleet.start()
    try:
        for w in fleet.local:
            print(f"  worker {w.worker.id}: {w.url} (log {w.log})")
        print(f"  store: {fleet.store}")
        print(f"fleet ready: {fleet.base_url} (Ctrl-C stops it)", flush=True)
        while not stop.wait(1.0):
            dead = [w.worker.id for w in fleet.local if w.process.poll() is not None]
            if dead:  # the proxy routes around it; say so once
                print(f"worker(s) stopped: {', '.join(dead)}", file=sys.stderr)
                fleet.local = [w for w in fleet.local if w.process.poll() is None]
    finally:
        print("stopping: workers drain, then HAProxy and PostgreSQL", flush=True)
        fleet.stop()
