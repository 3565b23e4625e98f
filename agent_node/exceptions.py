"""The agent node's errors when talking to the inference node, mapped from gRPC in one place.

    InferenceError                 anything the inference node or the path to it said no to
    ├── InferenceUnavailable       UNAVAILABLE: the node is down, draining, or the link broke
    │   └── TunnelFailed           the SSH tunnel gave up; `why` says what to fix
    │       ├── HostKeyRefused     unknown or changed host key (fatal, never retried)
    │       └── AuthenticationFailed  the identity file was refused (fatal, never retried)
    ├── ModelNotFound              NOT_FOUND: the catalog does not have that model
    ├── ModelLoadFailed            FAILED_PRECONDITION: in the catalog, but it would not load
    ├── ModelBusy                  FAILED_PRECONDITION, MODEL_BUSY: requests in flight (unload)
    ├── WouldNotFit                RESOURCE_EXHAUSTED: not enough memory budget (numbers inside)
    ├── QueueFull                  RESOURCE_EXHAUSTED: the admission queue or the streams are full
    ├── DeadlineExceeded           DEADLINE_EXCEEDED: our deadline or the server's queue deadline
    ├── BadRequest                 INVALID_ARGUMENT: the request itself is wrong
    │   └── ContextLengthExceeded  CONTEXT_LENGTH_EXCEEDED: prompt (+ max_tokens) over the context
    └── Cancelled                  CANCELLED: the call was cancelled

`agent_node.client.map_grpc_error()` is the only place a `grpc.RpcError` becomes one of these,
from its status code and the reason the server sent (`inference_node.api.reasons`), never from
its message text. Every message is for a person: it names the thing, the number and what to
do. Programs read `reason` and `metadata` (numbers as strings), and `detail`, the server's own
message.
"""

from __future__ import annotations


class InferenceError(Exception):
    """Base of every error from the inference node or the way to it."""

    def __init__(self, message: str, *, code: str = "", model: str = "", reason: str = "",
                 metadata: dict[str, str] | None = None, detail: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.code = code  # the gRPC status code name, when one was involved
        self.model = model  # the model the call was for, when known
        self.reason = reason  # the server's ErrorInfo reason (inference_node.api.reasons), or ""
        self.metadata = dict(metadata or {})  # its numbers and names, as strings
        self.detail = detail or message  # the server's message alone, without our context


class InferenceUnavailable(InferenceError):
    """The inference node cannot be reached now; retrying later may work."""


class TunnelFailed(InferenceUnavailable):
    """The SSH tunnel stopped for good; `why` says what to fix before it can work again."""

    def __init__(self, message: str, *, why: str = "", code: str = "", model: str = "") -> None:
        super().__init__(message, code=code, model=model)
        self.why = why or message


class HostKeyRefused(TunnelFailed):
    """The SSH server's host key is not in known_hosts, or differs from the one there."""

    def __init__(self, message: str, *, fingerprint: str = "", line: str = "") -> None:
        super().__init__(message)
        self.fingerprint = fingerprint  # SHA256:... of the key the server offered
        self.line = line  # the known_hosts line that would trust it


class AuthenticationFailed(TunnelFailed):
    """The SSH server refused the configured identity."""


class ModelNotFound(InferenceError):
    """The model is not in the inference node's catalog."""


class ModelLoadFailed(InferenceError):
    """The model is in the catalog but could not be loaded."""


class ModelBusy(InferenceError):
    """The model has requests in flight, so it cannot be unloaded now."""


class WouldNotFit(InferenceError):
    """The model or request does not fit in the memory budget."""


class QueueFull(InferenceError):
    """The admission queue, or the node's open streams, are full; refused at once: retry."""


class DeadlineExceeded(InferenceError):
    """The call ran past its deadline (ours) or waited too long in the server's queue."""

    partial = ""  # a Chat stream's text before the deadline cut it (collect_reply sets it)


class BadRequest(InferenceError):
    """The request was malformed: a bug on our side or bad input passed through.

    `metadata["field"]` names the field at fault when the server could tell.
    """


class ContextLengthExceeded(BadRequest):
    """The prompt, or the prompt + max_tokens, is longer than the model's context.

    `metadata` holds `context`, `prompt_tokens`, `max_tokens_allowed` (and `max_tokens`).
    """


class Cancelled(InferenceError):
    """The call was cancelled before it finished."""
