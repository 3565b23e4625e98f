"""The one place a `grpc.RpcError` becomes an `agent_node.exceptions` error.

The class comes from the status code and the reason the server sent as `google.rpc.ErrorInfo`
(`inference_node.api.reasons`), never from the message text; the message adds where the node
was and what to check. As httpx maps its transport's errors in one function.
"""

from __future__ import annotations

from typing import Any

import grpc

from agent_node.exceptions import (
    BadRequest,
    Cancelled,
    ContextLengthExceeded,
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
from agent_node.tunnel import FAILED, UP, Tunnel
from inference_node.api import reasons


def map_grpc_error(
    err: grpc.RpcError,
    *,
    target: str = "",
    model: str = "",
    tunnel: Tunnel | None = None,
    during: str = "",
) -> InferenceError:
    """The one place a gRPC error becomes an InferenceError with a message a person can use.

    The class comes from the status code and the server's reason (`inference_node.api.reasons`),
    never from the message text.
    """
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = (err.details() if hasattr(err, "details") else "") or str(err)
    name = code.name if code else "UNKNOWN"
    info = reasons.from_error(err)
    reason = info.reason if info is not None and info.domain == reasons.DOMAIN else ""
    kw: dict[str, Any] = {"code": name, "model": model, "reason": reason, "detail": details,
                          "metadata": info.metadata if reason and info is not None else {}}
    tstatus = tunnel.status() if tunnel is not None else None
    where = f"the inference node at {target}" if target else "the inference node"
    if tstatus is not None:
        where = f"the inference node through {tstatus.ssh} (local end {tstatus.target})"
    if tstatus is not None and tstatus.state == FAILED:
        return TunnelFailed(f"{during}: the SSH tunnel has stopped: {tstatus.why}", why=tstatus.why,
                            code=name, model=model)
    tunnel_note = f"; {tstatus.describe()}" if tstatus is not None and tstatus.state != UP else ""

    if code == grpc.StatusCode.UNAVAILABLE:
        if reason in (reasons.DRAINING, reasons.MEMORY_FLOOR):  # it answered: it said no
            return InferenceUnavailable(f"{during}: {where} refused: {details}", **kw)
        if tstatus is not None:
            hint = ("the tunnel rebuilds by itself; retry the call, and if it keeps failing check "
                    "sshd and `inference-node serve` on the host (`agent-node status`)")
        else:
            hint = ("is `inference-node serve` running there, and does [inference] target in "
                    "agent-node.toml point at it? (`agent-node status`)")
        return InferenceUnavailable(f"{during}: lost or could not reach {where} ({details})"
                                    f"{tunnel_note}; {hint}", **kw)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        if reason == reasons.QUEUE_TIMEOUT:
            return DeadlineExceeded(f"{during}: {details}", **kw)
        if tstatus is not None and tstatus.state != UP:
            return InferenceUnavailable(f"{during}: the deadline passed while {where} was "
                                        f"unreachable{tunnel_note}", **kw)
        return DeadlineExceeded(f"{during}: deadline exceeded ({details}); raise "
                                "[inference] timeout_s or call_timeout_s if the work is "
                                "legitimately slow", **kw)
    if code == grpc.StatusCode.NOT_FOUND:
        return ModelNotFound(f"{during}: {details}", **kw)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        if reason in (reasons.QUEUE_FULL, reasons.TOO_MANY_STREAMS):
            return QueueFull(f"{during}: {details}", **kw)
        if reason in (reasons.MODEL_WOULD_NOT_FIT, reasons.REQUEST_WOULD_NOT_FIT):
            return WouldNotFit(f"{during}: {details}", **kw)
        # no reason: gRPC's own limits (a message over max_message_mb)
        return InferenceError(f"{during}: {where} answered {name}: {details}", **kw)
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        if reason == reasons.MODEL_BUSY:
            return ModelBusy(f"{during}: {details}", **kw)
        return ModelLoadFailed(f"{during}: {details}", **kw)  # in the catalog, would not load
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        if reason == reasons.CONTEXT_LENGTH_EXCEEDED:
            return ContextLengthExceeded(f"{during}: {details}", **kw)
        return BadRequest(f"{during}: {details}", **kw)
    if code == grpc.StatusCode.CANCELLED:
        return Cancelled(f"{during}: cancelled ({details}){tunnel_note}", **kw)
    return InferenceError(f"{during}: {where} answered {name}: {details}", **kw)


class CancelledCall(grpc.RpcError):
    """Stands for a call our side cancelled (a future's FutureCancelledError)."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.CANCELLED

    def details(self) -> str:
        return "the call was cancelled"
