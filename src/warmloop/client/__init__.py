"""warmloop's client: an agent loop over WebSocket mode with reconnect and HTTP fallback.

    async with AgentSession(base_url="http://127.0.0.1:8000/v1", tools=[read_file]) as s:
        result = await s.run("What is in README.md?")

Uses only the public wire protocol (through the official `openai` SDK), so it works
against any Responses server; warmloop makes each turn compute only its delta.
"""

from warmloop.client.accumulator import ResponseAccumulator, ResponseFailed
from warmloop.client.agent import AgentResult, AgentSession, RetryPolicy, SyncAgentSession, ToolRun
from warmloop.client.tools import Tool, function_tool
from warmloop.client.transports import (
    ConnectionLost,
    HTTPTransport,
    ResponseError,
    Transport,
    UpgradeRefused,
    WebSocketTransport,
)

__all__ = [
    "AgentResult",
    "AgentSession",
    "ConnectionLost",
    "HTTPTransport",
    "ResponseAccumulator",
    "ResponseError",
    "ResponseFailed",
    "RetryPolicy",
    "SyncAgentSession",
    "Tool",
    "ToolRun",
    "Transport",
    "UpgradeRefused",
    "WebSocketTransport",
    "function_tool",
]
