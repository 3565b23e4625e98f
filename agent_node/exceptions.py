"""The agent node's errors when talking to the inference node, mapped from gRPC in one place.

    InferenceError                 anything the inference node or the path to it said no to
    ├── InferenceUnavailable       UNAVAILABLE: the node is down, draining, or the link broke
    │   └── TunnelFailed           the SSH tunnel gave up; `why` says what to fix
    │       ├── HostKeyRefused     unknown or changed host key (fatal, never retried)
    │       └── AuthenticationFailed  the identity file was refused (fatal, never retried)
    ├── ModelNotFound              NOT_FOUND: the catalog does not have that model
    ├── ModelLoadFailed            the model is in the catalog but could not be loaded
    ├── WouldNotFit                RESOURCE_EXHAUSTED: not enough memory budget (numbers inside)
    ├── QueueFull                  RESOURCE_EXHAUSTED: the admission queue is at its limit
    ├── DeadlineExceeded           DEADLINE_EXCEEDED: our deadline or the server's queue deadline
    ├── BadRequest                 INVALID_ARGUMENT: the request itself is wrong
    └── Cancelled                  CANCELLED: the call was cancelled

`agent_node.client.map_grpc_error()` is the only place a `grpc.RpcError` becomes one of these.
Every message is for a person: it names the thing, the number and what to do.
"""

from __future__ import annotations

from inference_node.api.reasons import ErrorDetail


class InferenceError(Exception):
    """Base of every error from the inference node or the way to it."""

    def __init__(self, message: str, *, code: str = "", model: str = "",
                 detail: ErrorDetail | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code  # the gRPC status code name, when one was involved
        self.model = model  # the model the call was for, when known
        self.detail = detail  # the node's ErrorInfo (reason + metadata), when it sent one


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


class WouldNotFit(InferenceError):
    """The model or request does not fit in the memory budget."""


class QueueFull(InferenceError):
    """The admission queue is full; the request was refused at once."""


class DeadlineExceeded(InferenceError):
    """The call ran past its deadline (ours) or waited too long in the server's queue."""


class BadRequest(InferenceError):
    """The request was malformed: a bug on our side or bad input passed through."""


class Cancelled(InferenceError):
    """The call was cancelled before it finished."""
