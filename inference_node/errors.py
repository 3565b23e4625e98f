"""The inference node's errors, each carrying the gRPC status and the reason it is answered with.

    InferenceError          INTERNAL            GENERATION_FAILED (a request's step failed)
    ├── BadRequest          INVALID_ARGUMENT    INVALID_FIELD and the other request reasons
    │   └── ContextTooLong  INVALID_ARGUMENT    CONTEXT_LENGTH_EXCEEDED
    ├── UnknownModel        NOT_FOUND           MODEL_NOT_FOUND
    ├── LoadFailed          FAILED_PRECONDITION MODEL_LOAD_FAILED: in the catalog, would not load
    ├── ModelBusy           FAILED_PRECONDITION MODEL_BUSY: unload with requests in flight
    ├── WouldNotFit         RESOURCE_EXHAUSTED  MODEL_WOULD_NOT_FIT / REQUEST_WOULD_NOT_FIT
    ├── QueueFull           RESOURCE_EXHAUSTED  QUEUE_FULL / TOO_MANY_STREAMS
    ├── QueueTimeout        DEADLINE_EXCEEDED   QUEUE_TIMEOUT: waited past the deadline
    ├── Unavailable         UNAVAILABLE         DRAINING / MEMORY_FLOOR
    ├── ModelUnloaded       ABORTED             MODEL_UNLOADED: unloaded before it ran; retry
    └── Cancelled           CANCELLED           CLIENT_CANCELLED

The reason and its metadata (`inference_node.api.reasons`) travel as `google.rpc.ErrorInfo`;
`inference_node.wire.abort` sends them. Messages are for people: they name the thing, the
number and what to do. Metadata is for programs: numbers as they are, names truncated.
"""

from __future__ import annotations

from typing import Any

import grpc

from inference_node.api import reasons
from inference_node.api.reasons import truncate


class InferenceError(Exception):
    code = grpc.StatusCode.INTERNAL
    reason = reasons.GENERATION_FAILED

    def __init__(self, message: str, *, reason: str = "", **metadata: Any) -> None:
        super().__init__(message)
        if reason:
            self.reason = reason
        self.metadata = {k: str(v) for k, v in metadata.items() if v is not None}

    @property
    def detail(self) -> reasons.ErrorDetail:
        return reasons.ErrorDetail(self.reason, reasons.DOMAIN, self.metadata)


class BadRequest(InferenceError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = reasons.INVALID_FIELD


def invalid(field: str, value: Any, expected: str, todo: str = "") -> BadRequest:
    """The house message for a field out of range: what it is, what it may be, what to do."""
    shown = truncate(value if isinstance(value, str) else repr(value), 80)
    if isinstance(value, str):
        shown = repr(shown)
    message = f"{field} is {shown}; it must be {expected}"
    return BadRequest(f"{message}; {todo}" if todo else message,
                      field=field, value=truncate(str(value)), expected=expected)


class ContextTooLong(BadRequest):
    reason = reasons.CONTEXT_LENGTH_EXCEEDED


class UnknownModel(InferenceError):
    code = grpc.StatusCode.NOT_FOUND
    reason = reasons.MODEL_NOT_FOUND


class LoadFailed(InferenceError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = reasons.MODEL_LOAD_FAILED


class ModelBusy(InferenceError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = reasons.MODEL_BUSY


class WouldNotFit(InferenceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = reasons.MODEL_WOULD_NOT_FIT


class QueueFull(InferenceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = reasons.QUEUE_FULL


class QueueTimeout(InferenceError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    reason = reasons.QUEUE_TIMEOUT


class Unavailable(InferenceError):
    code = grpc.StatusCode.UNAVAILABLE
    reason = reasons.DRAINING


class ModelUnloaded(InferenceError):
    code = grpc.StatusCode.ABORTED
    reason = reasons.MODEL_UNLOADED


class Cancelled(InferenceError):
    code = grpc.StatusCode.CANCELLED
    reason = reasons.CLIENT_CANCELLED
