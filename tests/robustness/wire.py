"""Hand-rolled HTTP/SSE and WebSocket clients over plain sockets.

The robustness tests need what a library client hides: reset a connection (RST, no FIN
and no close frame) at an exact point of a response, never read from a socket whose
receive buffer is tiny, send binary or oversized frames, and tell "the server closed
the socket" apart from "the server answered with an error".
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})


class Closed(Exception):
    """The server closed (or reset) the connection."""


def tcp(port: int, *, rcvbuf: int | None = None, mss: int | None = None) -> socket.socket:
    """A connected socket. `rcvbuf` and `mss` (set before connecting, so the window and the
    server's segment size stay small) make a client that does not read fill up fast: on
    loopback the server's send buffer otherwise grows to megabytes."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    if mss is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, mss)
    sock.settimeout(30)
    sock.connect(("127.0.0.1", port))
    return sock


def reset(sock: socket.socket) -> None:
    """Abort: the kernel sends RST and drops whatever is unread."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def drain(sock: socket.socket, timeout_s: float) -> tuple[bytes, bool]:
    """Read until the server closes; (bytes read, whether it closed within `timeout_s`)."""
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            data = sock.recv(65536)
        except TimeoutError:
            break
        except (ConnectionResetError, BrokenPipeError):
            return b"".join(chunks), True
        if not data:
            return b"".join(chunks), True
        chunks.append(data)
    return b"".join(chunks), False


def sse_events(raw: bytes) -> list[dict[str, Any]]:
    """The `data:` events in raw response bytes (chunked framing lines are skipped)."""
    out = []
    for line in raw.split(b"\n"):
        if line.startswith(b"data: "):
            try:
                out.append(json.loads(line[6:]))
            except ValueError:
                break  # the last line may be cut off
    return out


class RawSSE:
    """`POST /v1/responses` written by hand; reads the SSE stream as raw bytes."""

    def __init__(
        self,
        port: int,
        body: dict[str, Any] | bytes,
        headers: dict[str, str],
        *,
        rcvbuf: int | None = None,
        mss: int | None = None,
        send_body: bool = True,
    ) -> None:
        self.sock = tcp(port, rcvbuf=rcvbuf, mss=mss)
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        lines = [
            "POST /v1/responses HTTP/1.1",
            f"Host: 127.0.0.1:{port}",
            "Content-Type: application/json",
            f"Content-Length: {len(payload)}",
            *(f"{k}: {v}" for k, v in headers.items()),
        ]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode()
        # send_body=False: only half the body, the request never completes
        self.sock.sendall(head + (payload if send_body else payload[: len(payload) // 2]))
        self.raw = b""

    def events(self) -> list[dict[str, Any]]:
        return sse_events(self.raw)

    def status(self) -> int:
        return int(self.raw.split(b" ", 2)[1]) if self.raw.startswith(b"HTTP/") else 0

    def read_until(
        self, done: Callable[[list[dict[str, Any]]], bool], timeout_s: float = 60
    ) -> list[dict[str, Any]]:
        """Read until `done(events)`; fails on timeout or if the stream ends first."""
        deadline = time.monotonic() + timeout_s
        while True:
            events = self.events()
            if done(events):
                return events
            if any(e.get("type") in TERMINAL or e.get("type") == "error" for e in events):
                raise AssertionError(f"stream ended before the point: {events[-1]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; read so far: {self.raw[-2000:]!r}")
            self.sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            if not data:
                raise Closed(f"server closed the stream; read: {self.raw[-2000:]!r}")
            self.raw += data

    def reset(self) -> None:
        reset(self.sock)


def count(kind: str, n: int = 1) -> Callable[[list[dict[str, Any]]], bool]:
    """A `done` predicate: at least `n` events of type `kind`."""
    return lambda events: sum(e.get("type") == kind for e in events) >= n


def _mask(payload: bytes, key: bytes) -> bytes:
    n = len(payload)
    if n == 0:
        return payload
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")


class RawWebSocket:
    """A minimal RFC 6455 client: masked frames out, events in, pings answered."""

    TEXT, BINARY, CLOSE, PING, PONG = 0x1, 0x2, 0x8, 0x9, 0xA

    def __init__(
        self,
        port: int,
        headers: dict[str, str],
        *,
        rcvbuf: int | None = None,
        mss: int | None = None,
    ) -> None:
        self.sock = tcp(port, rcvbuf=rcvbuf, mss=mss)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            "GET /v1/responses HTTP/1.1",
            f"Host: 127.0.0.1:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
            *(f"{k}: {v}" for k, v in headers.items()),
        ]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            data = self.sock.recv(65536)
            if not data:
                raise Closed(f"upgrade refused: {buf!r}")
            buf += data
        head, _, self._buf = buf.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            self.sock.close()
            raise Closed(f"upgrade refused: {head.decode(errors='replace')}")
        self.closed = False

    # ----- sending -----------------------------------------------------------------------
    def send_frame(self, opcode: int, payload: bytes) -> None:
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 1 << 16:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        key = os.urandom(4)
        self.sock.sendall(head + key + _mask(payload, key))

    def send_text(self, text: str) -> None:
        self.send_frame(self.TEXT, text.encode())

    def send_json(self, event: Any) -> None:
        self.send_text(json.dumps(event))  # ensure_ascii: lone surrogates go out as \\ud800

    # ----- receiving ---------------------------------------------------------------------
    def _read(self, n: int, deadline: float) -> bytes:
        while len(self._buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no frame from the server in time")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except (ConnectionResetError, BrokenPipeError) as exc:
                self.closed = True
                raise Closed(f"connection reset: {exc}") from exc
            if not data:
                self.closed = True
                raise Closed("the server closed the TCP connection")
            self._buf += data
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def recv_frame(self, timeout_s: float = 60) -> tuple[int, bytes]:
        deadline = time.monotonic() + timeout_s
        message = b""
        first_opcode = 0
        while True:
            b0, b1 = self._read(2, deadline)
            opcode, n = b0 & 0x0F, b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", self._read(2, deadline))[0]
            elif n == 127:
                n = struct.unpack("!Q", self._read(8, deadline))[0]
            if b1 & 0x80:  # servers must not mask, but read it if one does
                key = self._read(4, deadline)
                payload = _mask(self._read(n, deadline), key)
            else:
                payload = self._read(n, deadline)
            if opcode == self.PING:
                self.send_frame(self.PONG, payload)
                continue
            if opcode == self.PONG:
                continue
            if opcode == self.CLOSE:
                self.closed = True
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                raise Closed(f"close frame {code} {payload[2:].decode(errors='replace')!r}")
            if opcode != 0:
                first_opcode = opcode
            message += payload
            if b0 & 0x80:
                return first_opcode, message

    def recv_event(self, timeout_s: float = 60) -> dict[str, Any]:
        opcode, payload = self.recv_frame(timeout_s)
        assert opcode == self.TEXT, f"the server sent a non-text frame ({opcode}): {payload!r}"
        event: dict[str, Any] = json.loads(payload)
        return event

    def read_until(
        self, done: Callable[[list[dict[str, Any]]], bool], timeout_s: float = 60
    ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        events: list[dict[str, Any]] = []
        while not done(events):
            events.append(self.recv_event(max(0.05, deadline - time.monotonic())))
        return events

    def reset(self) -> None:
        self.closed = True
        reset(self.sock)

    def close(self) -> None:
        if not self.closed:
            with contextlib.suppress(OSError):
                self.send_frame(self.CLOSE, struct.pack("!H", 1000))
        self.closed = True
        self.sock.close()
