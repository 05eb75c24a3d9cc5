"""The one uvicorn launcher (`serve`, the demo and the bench use it). It sits above
`app.py`, so building the app from here makes no import cycle."""

from __future__ import annotations

from uvicorn import Server

from warmloop.app import create_app
from warmloop.config import Config
from warmloop.transport.connections import Transports, uvicorn_config
from warmloop.transport.worker import DrainingServer, WorkerHeader


def server(config: Config, *, log_level: str | None = None) -> Server:
    """A uvicorn server for `create_app(config)` (not started); SIGTERM drains it."""
    transports = Transports()
    app = create_app(config, transports)
    uvicorn = uvicorn_config(
        config, WorkerHeader(app, config.response_worker), transports, log_level=log_level
    )
    return DrainingServer(uvicorn, app, config.drain_timeout)
