"""Typed API errors: every client-visible failure is one; transports map them to the wire."""

from __future__ import annotations

from typing import Any


class APIError(Exception):
    """An error the client caused or must know about, in OpenAI's error vocabulary."""

    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """The `error` object: {"message","type","param","code"}."""
        return {"message": self.message, "type": self.type, "param": self.param, "code": self.code}


class InvalidRequest(APIError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"


class PreviousResponseNotFound(InvalidRequest):
    code = "previous_response_not_found"

    def __init__(self, response_id: str) -> None:
        super().__init__(
            f"Previous response with id '{response_id}' not found.",
            param="previous_response_id",
        )


class NotFound(APIError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class ConversationNotFound(NotFound):
    """No conversation with this id for this key: never made, deleted, or another's."""

    code = "conversation_not_found"

    def __init__(self, conversation_id: str, param: str = "conversation_id") -> None:
        super().__init__(f"Conversation with id '{conversation_id}' not found.", param=param)


class ConversationLocked(InvalidRequest):
    """A response is already running on the conversation: its turns run one at a time."""

    code = "conversation_locked"


class Unauthorized(APIError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class PayloadTooLarge(APIError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class TooManyRequests(APIError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class QueueFull(TooManyRequests):
    code = "queue_full"


class MessageTooLarge(InvalidRequest):
    code = "message_too_large"


class ConnectionLimitReached(InvalidRequest):
    """A WebSocket connection reached its age limit (OpenAI closes them after 60 min)."""

    code = "websocket_connection_limit_reached"


class StreamLimitReached(InvalidRequest):
    code = "websocket_stream_limit_reached"


class UpgradeRefused(APIError):
    """A WebSocket upgrade this server will not take (disabled, or at capacity)."""

    status = 426
    type = "invalid_request_error"
    code = "websocket_capacity"


class ServerDraining(APIError):
    """The worker is shutting down (SIGTERM): retry on another one (a proxy does)."""

    status = 503
    type = "server_error"
    code = "server_draining"


class StoreUnavailable(APIError):
    """The response store (SQLite file, PostgreSQL) cannot be read or written right now."""

    status = 503
    type = "server_error"
    code = "store_unavailable"


class ServerError(APIError):
    """The server failed on a valid request (a decode error, a bug): a 500 in OpenAI's shape."""

    status = 500
    type = "server_error"
    code = "server_error"
