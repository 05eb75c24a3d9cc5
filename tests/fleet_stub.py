"""A stand-in worker for testing a proxy configuration without a model: it answers every
request with `x-warmloop-worker: <id>` and a JSON echo of what it got (method, path,
headers, body size), `/healthz` like a worker (503 once `draining` is set), `503
server_draining` on creates while draining, and `GET /stream?n=N&gap=S` as a slow SSE
stream (to see that the proxy does not buffer it). `refusing` answers creates 503 with
a healthy /healthz: a drain that the proxy's checks have not seen yet."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from warmloop.fleet.keys import WORKER_HEADER


class StubWorker:
    def __init__(self, worker_id: str, host: str = "127.0.0.1", port: int = 0) -> None:
        self.worker_id = worker_id
        self.draining = False  # /healthz 503 and creates 503
        self.refusing = False  # creates 503 only (a drain the proxy has not noticed yet)
        self.requests: list[dict[str, Any]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                # headers and body go out in two writes: without this, Nagle's algorithm
                # and the peer's delayed ACK add 40 ms to every answer
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.send_header(WORKER_HEADER, stub.worker_id)
                self.end_headers()
                self.wfile.write(data)

            def _echo(self, body: bytes) -> dict[str, Any]:
                seen = {
                    "worker": stub.worker_id,
                    "method": self.command,
                    "path": self.path,
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                    "body_bytes": len(body),
                }
                stub.requests.append(seen)
                return seen

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                if url.path == "/healthz":
                    ok = not stub.draining
                    self._answer(200 if ok else 503, {"status": "ok" if ok else "draining"})
                    return
                if url.path == "/stream":
                    self._stream(parse_qs(url.query))
                    return
                self._answer(200, self._echo(b""))

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                seen = self._echo(body)
                if stub.draining or stub.refusing:
                    self._answer(503, {"error": {"code": "server_draining"}, **seen})
                    return
                self._answer(200, seen)

            def _stream(self, query: dict[str, list[str]]) -> None:
                n = int(query.get("n", ["5"])[0])
                gap = float(query.get("gap", ["0.2"])[0])
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("transfer-encoding", "chunked")
                self.send_header(WORKER_HEADER, stub.worker_id)
                self.end_headers()
                for k in range(n):
                    event = f"data: {json.dumps({'n': k, 't': time.time()})}\n\n".encode()
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
                    self.wfile.flush()
                    time.sleep(gap)
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
