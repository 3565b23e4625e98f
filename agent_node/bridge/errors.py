"""Every error the bridge meets, as an HTTP status and OpenAI's `{"error": {...}}`, in one place.

    status, body, headers = http_error(err)     # ApiError, InferenceError or anything else

Errors from the node are mapped by their reason (`inference_node.api.reasons`, sent as
google.rpc.ErrorInfo), and errors without one by their class; never by message text. A context
overflow gets OpenAI's code and wording ("This model's maximum context length is N tokens...",
`context_length_exceeded`), which litellm and pi key on, followed by the node's own advice.
"""

from __future__ import annotations

import logging
from typing import Any

from agent_node.exceptions import (
    BadRequest,
    Cancelled,
    DeadlineExceeded,
    InferenceError,
    InferenceUnavailable,
    ModelBusy,
    ModelLoadFailed,
    ModelNotFound,
    QueueFull,
    TunnelFailed,
    WouldNotFit,
)
from inference_node.api import reasons

log = logging.getLogger(__name__)

# Seconds a client is told to wait: a full queue drains fast; memory frees when a reply ends.
RETRY_AFTER_QUEUE_S = 1
RETRY_AFTER_MEMORY_S = 5
RETRY_AFTER_UNAVAILABLE_S = 2


class ApiError(Exception):
    """A request refused before it reaches the node, with the HTTP status and OpenAI fields."""

    def __init__(self, message: str, status: int = 400, param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message, self.status, self.param, self.code = message, status, param, code
        self.headers = headers or {}


def error_body(message: str, type_: str, param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


# (error class, HTTP status, OpenAI error type, Retry-After seconds) for errors without a
# reason (from an older node, or raised on this side); first match wins.
BY_CLASS: list[tuple[type[InferenceError], int, str, int | None]] = [
    (BadRequest, 400, "invalid_request_error", None),
    (ModelNotFound, 404, "invalid_request_error", None),
    (QueueFull, 429, "rate_limit_error", RETRY_AFTER_QUEUE_S),
    (WouldNotFit, 503, "server_error", RETRY_AFTER_MEMORY_S),
    (DeadlineExceeded, 504, "timeout_error", None),
    (TunnelFailed, 503, "server_error", None),  # needs a person, not a retry
    (InferenceUnavailable, 503, "server_error", RETRY_AFTER_UNAVAILABLE_S),
    (ModelLoadFailed, 500, "server_error", None),
    (ModelBusy, 503, "server_error", RETRY_AFTER_UNAVAILABLE_S),
    (Cancelled, 499, "server_error", None),
]

# reason -> (HTTP status, OpenAI error type, Retry-After seconds)
BY_REASON: dict[str, tuple[int, str, int | None]] = {
    reasons.INVALID_FIELD: (400, "invalid_request_error", None),
    reasons.MALFORMED_REQUEST: (400, "invalid_request_error", None),
    reasons.CONTEXT_LENGTH_EXCEEDED: (400, "invalid_request_error", None),
    reasons.WRONG_MODEL_ROLE: (400, "invalid_request_error", None),
    reasons.IMAGE_INVALID: (400, "invalid_request_error", None),
    reasons.IMAGE_TOO_LARGE: (400, "invalid_request_error", None),
    reasons.MODEL_NOT_FOUND: (404, "invalid_request_error", None),
    reasons.MODEL_LOAD_FAILED: (500, "server_error", None),
    reasons.MODEL_BUSY: (503, "server_error", RETRY_AFTER_UNAVAILABLE_S),
    reasons.MODEL_WOULD_NOT_FIT: (503, "server_error", RETRY_AFTER_MEMORY_S),
    reasons.REQUEST_WOULD_NOT_FIT: (503, "server_error", RETRY_AFTER_MEMORY_S),
    reasons.QUEUE_FULL: (429, "rate_limit_error", RETRY_AFTER_QUEUE_S),
    reasons.TOO_MANY_STREAMS: (429, "rate_limit_error", RETRY_AFTER_QUEUE_S),
    reasons.QUEUE_TIMEOUT: (504, "timeout_error", None),
    reasons.DRAINING: (503, "server_error", RETRY_AFTER_UNAVAILABLE_S),
    reasons.MEMORY_FLOOR: (503, "server_error", RETRY_AFTER_MEMORY_S),
    reasons.CLIENT_CANCELLED: (499, "server_error", None),
    reasons.MODEL_UNLOADED: (503, "server_error", RETRY_AFTER_UNAVAILABLE_S),
    reasons.GENERATION_FAILED: (500, "server_error", None),
}

# Parts of the node's field paths (ChatRequest) and their chat-completions names.
_FIELD_PARTS = {".parameters_json": ".function.parameters",
                ".arguments_json": ".function.arguments", ".images": ".content",
                ".text": ".content"}


def openai_param(field: str) -> str | None:
    """`sampling.top_k` -> `top_k`, `tools[2].parameters_json` -> `tools[2].function.parameters`."""
    if not field:
        return None
    if field.startswith("sampling.stop"):
        return "stop"
    if field.startswith("sampling."):
        return field.removeprefix("sampling.")
    for whole in ("tool_choice", "response_format"):
        if field.startswith(whole):
            return whole
    for part, to in _FIELD_PARTS.items():
        if part in field:
            return field.split(part)[0] + to
    if field.startswith("tools[") and "." in field:  # tools[2].name
        head, _, rest = field.partition(".")
        return f"{head}.function.{rest}"
    return field


def _number(err: InferenceError, key: str) -> int | None:
    try:
        return int(err.metadata[key])
    except (KeyError, ValueError):
        return None


def context_message(err: InferenceError) -> str:
    """OpenAI's wording for a context overflow, which clients (litellm, pi) recognise, then the
    node's own advice."""
    context = _number(err, reasons.CONTEXT) or 0
    prompt = _number(err, reasons.PROMPT_TOKENS) or 0
    asked = _number(err, reasons.MAX_TOKENS)
    if err.metadata.get(reasons.FIELD) == "max_tokens" and asked is not None:
        head = (f"This model's maximum context length is {context} tokens. However, you "
                f"requested {prompt + asked} tokens ({prompt} in the messages, {asked} in the "
                "completion). Please reduce the length of the messages or completion.")
    else:
        head = (f"This model's maximum context length is {context} tokens. However, your "
                f"messages resulted in {prompt} tokens. Please reduce the length of the "
                "messages.")
    return f"{head} ({err.detail})"


def http_error(err: Exception) -> tuple[int, dict[str, Any], dict[str, str]]:
    """(status, OpenAI error body, headers) for any error the bridge meets."""
    if isinstance(err, ApiError):
        kind = {401: "authentication_error", 403: "permission_error"}.get(
            err.status, "invalid_request_error" if err.status < 500 else "server_error")
        headers = dict(err.headers)
        if err.status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        return err.status, error_body(err.message, kind, err.param, err.code), headers
    if isinstance(err, InferenceError):
        return _inference_error(err)
    log.exception("bridge: unexpected error", exc_info=err)
    return 500, error_body(f"the bridge failed: {type(err).__name__}: {err}; see the bridge's "
                           "log", "server_error"), {}


def _inference_error(err: InferenceError) -> tuple[int, dict[str, Any], dict[str, str]]:
    message = err.message
    param: str | None = None
    code: str | None = None
    if err.reason in BY_REASON and not isinstance(err, TunnelFailed):
        status, kind, retry = BY_REASON[err.reason]
        code = err.reason.lower()  # model_not_found and context_length_exceeded match OpenAI's
        if err.reason == reasons.CONTEXT_LENGTH_EXCEEDED:
            message = context_message(err)
            param = openai_param(err.metadata.get(reasons.FIELD, "")) or "messages"
        elif err.reason in (reasons.MODEL_NOT_FOUND, reasons.WRONG_MODEL_ROLE):
            param = "model"
        else:
            param = openai_param(err.metadata.get(reasons.FIELD, ""))
    else:
        status, kind, retry = 502, "server_error", None
        for cls, s, k, r in BY_CLASS:
            if isinstance(err, cls):
                status, kind, retry = s, k, r
                break
        code = "model_not_found" if isinstance(err, ModelNotFound) else err.code.lower() or None
        param = "model" if isinstance(err, ModelNotFound) else None
    headers = {"Retry-After": str(retry)} if retry is not None else {}
    return status, error_body(message, kind, param, code), headers
