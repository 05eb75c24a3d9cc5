"""warmloop: a Responses API server whose KV cache lives as long as the agent's connection."""

__version__ = "0.1.0"
