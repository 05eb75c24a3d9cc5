"""What the routes need from the app: config, the responses service, keys, live counts."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from warmloop.config import Config
from warmloop.kvcache.stats import Metrics
from warmloop.serving.responses_service import ResponsesService
from warmloop.transport.auth import KeyRing


@dataclass
class Runtime:
    config: Config
    service: ResponsesService
    keys: KeyRing
    metrics: Metrics
    started_at: int = field(default_factory=lambda: int(time.time()))
    connections: int = 0
    tenant_connections: Counter[str] = field(default_factory=Counter)
