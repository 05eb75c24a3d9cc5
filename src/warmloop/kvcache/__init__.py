"""kvcache layer (see docs/architecture.md)."""
