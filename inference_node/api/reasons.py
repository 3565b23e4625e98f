"""Why a call failed, for programs: `google.rpc.ErrorInfo` reasons and their metadata keys.

Every error the inference node answers with carries, beside its status code and its message for
people, a `google.rpc.Status` in the `grpc-status-details-bin` trailer holding one `ErrorInfo`:
`reason` (a name below), `domain` (DOMAIN) and `metadata` (string values under the keys below;
numbers are decimal strings, sizes in bytes). Programs branch on the code and the reason, never
on the message text. Imports no mlx: both nodes use it.

    reason                   code                metadata (keys in brackets may be absent)
    INVALID_FIELD            INVALID_ARGUMENT    field, value, expected
    MALFORMED_REQUEST        INVALID_ARGUMENT    message_type, [field], expected
    CONTEXT_LENGTH_EXCEEDED  INVALID_ARGUMENT    model, prompt_tokens, context,
                                                 [max_tokens], max_tokens_allowed, field
    WRONG_MODEL_ROLE         INVALID_ARGUMENT    model, role, needed_role
    IMAGE_INVALID            INVALID_ARGUMENT    field, [image_format], image_bytes
    IMAGE_TOO_LARGE          INVALID_ARGUMENT    field, image_bytes, max_image_bytes,
                                                 [width, height, pixels, max_pixels]
    MODEL_NOT_FOUND          NOT_FOUND           model, [role], served
    MODEL_LOAD_FAILED        FAILED_PRECONDITION model
    MODEL_BUSY               FAILED_PRECONDITION model, in_flight
    MODEL_WOULD_NOT_FIT      RESOURCE_EXHAUSTED  model, needed_bytes, committed_bytes,
                                                 budget_bytes
    REQUEST_WOULD_NOT_FIT    RESOURCE_EXHAUSTED  model, needed_bytes, available_bytes,
                                                 budget_bytes, [prompt_tokens, max_tokens,
                                                 max_tokens_allowed]
    QUEUE_FULL               RESOURCE_EXHAUSTED  queue_depth, queue_limit, committed_bytes,
                                                 budget_bytes
    TOO_MANY_STREAMS         RESOURCE_EXHAUSTED  open_streams, stream_limit
    QUEUE_TIMEOUT            DEADLINE_EXCEEDED   waited_seconds, needed_bytes, committed_bytes,
                                                 budget_bytes
    DRAINING                 UNAVAILABLE         (none)
    MEMORY_FLOOR             UNAVAILABLE         available_bytes, floor_bytes
    CLIENT_CANCELLED         CANCELLED           (none)
    MODEL_UNLOADED           ABORTED             model
    GENERATION_FAILED        INTERNAL            model, request_id
    INTERNAL_ERROR           INTERNAL            error_type (a bug in the node: see its log)

CONTEXT_LENGTH_EXCEEDED covers both overflows: the prompt alone is longer than the context
(`max_tokens` absent or not the cause, `max_tokens_allowed` <= 0), and prompt + max_tokens is
(`max_tokens_allowed` = context - prompt_tokens, > 0). The OpenAI bridge answers it as
`context_length_exceeded`.

    info = reasons.from_error(rpc_error)      # ErrorDetail | None
    if info and info.reason == reasons.CONTEXT_LENGTH_EXCEEDED:
        context = info.number(reasons.CONTEXT)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DOMAIN = "studio-coder.inference.v1"

# ---------------------------------------------------------------- reasons

INVALID_FIELD = "INVALID_FIELD"
MALFORMED_REQUEST = "MALFORMED_REQUEST"
CONTEXT_LENGTH_EXCEEDED = "CONTEXT_LENGTH_EXCEEDED"
WRONG_MODEL_ROLE = "WRONG_MODEL_ROLE"
IMAGE_INVALID = "IMAGE_INVALID"
IMAGE_TOO_LARGE = "IMAGE_TOO_LARGE"
MODEL_NOT_FOUND = "MODEL_NOT_FOUND"
MODEL_LOAD_FAILED = "MODEL_LOAD_FAILED"
MODEL_BUSY = "MODEL_BUSY"
MODEL_WOULD_NOT_FIT = "MODEL_WOULD_NOT_FIT"
REQUEST_WOULD_NOT_FIT = "REQUEST_WOULD_NOT_FIT"
QUEUE_FULL = "QUEUE_FULL"
TOO_MANY_STREAMS = "TOO_MANY_STREAMS"
QUEUE_TIMEOUT = "QUEUE_TIMEOUT"
DRAINING = "DRAINING"
MEMORY_FLOOR = "MEMORY_FLOOR"
CLIENT_CANCELLED = "CLIENT_CANCELLED"
MODEL_UNLOADED = "MODEL_UNLOADED"
GENERATION_FAILED = "GENERATION_FAILED"
INTERNAL_ERROR = "INTERNAL_ERROR"

# The status code each reason is sent with (grpc.StatusCode names).
CODES: dict[str, str] = {
    INVALID_FIELD: "INVALID_ARGUMENT",
    MALFORMED_REQUEST: "INVALID_ARGUMENT",
    CONTEXT_LENGTH_EXCEEDED: "INVALID_ARGUMENT",
    WRONG_MODEL_ROLE: "INVALID_ARGUMENT",
    IMAGE_INVALID: "INVALID_ARGUMENT",
    IMAGE_TOO_LARGE: "INVALID_ARGUMENT",
    MODEL_NOT_FOUND: "NOT_FOUND",
    MODEL_LOAD_FAILED: "FAILED_PRECONDITION",
    MODEL_BUSY: "FAILED_PRECONDITION",
    MODEL_WOULD_NOT_FIT: "RESOURCE_EXHAUSTED",
    REQUEST_WOULD_NOT_FIT: "RESOURCE_EXHAUSTED",
    QUEUE_FULL: "RESOURCE_EXHAUSTED",
    TOO_MANY_STREAMS: "RESOURCE_EXHAUSTED",
    QUEUE_TIMEOUT: "DEADLINE_EXCEEDED",
    DRAINING: "UNAVAILABLE",
    MEMORY_FLOOR: "UNAVAILABLE",
    CLIENT_CANCELLED: "CANCELLED",
    MODEL_UNLOADED: "ABORTED",
    GENERATION_FAILED: "INTERNAL",
    INTERNAL_ERROR: "INTERNAL",
}

# ---------------------------------------------------------------- metadata keys

FIELD = "field"  # the request field at fault, as a path: "sampling.min_p", "tools[2].name"
VALUE = "value"  # the value sent, truncated to MAX_VALUE_CHARS
EXPECTED = "expected"  # the valid range or form, e.g. "0 to 1"
MESSAGE_TYPE = "message_type"  # e.g. "inference.v1.ChatRequest"
MODEL = "model"
ROLE = "role"  # the model's role (coder | vision), or the role asked for
NEEDED_ROLE = "needed_role"
SERVED = "served"  # the catalog's model names, comma-separated (truncated)
PROMPT_TOKENS = "prompt_tokens"
CONTEXT = "context"  # the model's context length in tokens
MAX_TOKENS = "max_tokens"  # as requested
MAX_TOKENS_ALLOWED = "max_tokens_allowed"  # the most that would fit; <= 0: none would
IN_FLIGHT = "in_flight"
NEEDED_BYTES = "needed_bytes"
COMMITTED_BYTES = "committed_bytes"
BUDGET_BYTES = "budget_bytes"
AVAILABLE_BYTES = "available_bytes"  # REQUEST_WOULD_NOT_FIT: budget left beside the weights;
#                                      MEMORY_FLOOR: the system's available memory
FLOOR_BYTES = "floor_bytes"
QUEUE_DEPTH = "queue_depth"
QUEUE_LIMIT = "queue_limit"
WAITED_SECONDS = "waited_seconds"
OPEN_STREAMS = "open_streams"
STREAM_LIMIT = "stream_limit"
IMAGE_FORMAT = "image_format"  # png | jpeg
IMAGE_BYTES = "image_bytes"
MAX_IMAGE_BYTES = "max_image_bytes"
WIDTH = "width"
HEIGHT = "height"
PIXELS = "pixels"
MAX_PIXELS = "max_pixels"
REQUEST_ID = "request_id"
ERROR_TYPE = "error_type"  # INTERNAL_ERROR: the exception's class name

MAX_VALUE_CHARS = 200  # any echoed string is cut to this, so no trailer nears gRPC's limits


def truncate(text: Any, limit: int = MAX_VALUE_CHARS) -> str:
    """`text` as a string of at most `limit` characters, marked when cut."""
    s = text if isinstance(text, str) else repr(text)
    if len(s) <= limit:
        return s
    return f"{s[: limit - 25]}… ({len(s)} chars in all)"


@dataclass(frozen=True)
class ErrorDetail:
    """The reason, domain and metadata an error carried."""

    reason: str
    domain: str = DOMAIN
    metadata: dict[str, str] = field(default_factory=dict)

    def number(self, key: str, default: int | None = None) -> int | None:
        """An integer metadata value, or `default` when absent or not a number."""
        try:
            return int(self.metadata[key])
        except (KeyError, ValueError):
            return default


def to_status(code: Any, message: str, detail: ErrorDetail) -> Any:
    """A `grpc.Status` (`code`: a grpc.StatusCode) carrying `message` and `detail` as ErrorInfo.

    For `context.abort_with_status`.
    """
    from google.rpc import error_details_pb2, status_pb2
    from grpc_status import rpc_status

    info = error_details_pb2.ErrorInfo(
        reason=detail.reason, domain=detail.domain,
        metadata={k: truncate(str(v)) for k, v in detail.metadata.items()},
    )
    status = status_pb2.Status(code=code.value[0], message=message)
    status.details.add().Pack(info)
    return rpc_status.to_status(status)


def from_error(err: Any) -> ErrorDetail | None:
    """The ErrorInfo a failed call carried (a `grpc.RpcError` / `grpc.Call`), or None."""
    from google.rpc import error_details_pb2, status_pb2

    trailers = err.trailing_metadata() if hasattr(err, "trailing_metadata") else None
    for key, value in trailers or ():
        if key != "grpc-status-details-bin":
            continue
        status = status_pb2.Status()
        try:
            status.ParseFromString(value)
        except Exception:  # noqa: BLE001 - a garbled trailer is no reason at all
            return None
        for any_ in status.details:
            info = error_details_pb2.ErrorInfo()
            if any_.Is(info.DESCRIPTOR) and any_.Unpack(info):
                return ErrorDetail(info.reason, info.domain, dict(info.metadata))
    return None
