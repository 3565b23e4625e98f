"""The gRPC client for the inference node: deadlines, wait_for_ready, one error map, fallbacks.

    with connect(cfg) as client:                 # starts the SSH tunnel when [tunnel] enabled
        coder = client.model("coder")            # a GrpcModel: agent_node.model.Model
        reply = coder.chat([{"role": "user", "content": "hi"}])
        coder.chosen, coder.fallback_log         # which model did the work, and why
        for event in coder.stream(messages):     # pb.ChatEvent; stream_request(req, cancel)
            ...
        client.describer()                       # GrpcDescriber, or None without a vision model
        client.health(); client.list_models(); client.memory()

Every call carries a deadline and waits for the channel to be ready, so a call made while the
tunnel is rebuilding waits instead of failing. `map_grpc_error` is the only place a
`grpc.RpcError` becomes an `agent_node.exceptions` error.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agent_node.chat_fold import ChatFold, collect_reply
from agent_node.config import AgentConfig
from agent_node.exceptions import (
    DeadlineExceeded,
    InferenceError,
    InferenceUnavailable,
    ModelLoadFailed,
    ModelNotFound,
    TunnelFailed,
    WouldNotFit,
)
from agent_node.grpc_errors import CancelledCall, map_grpc_error
from agent_node.model import CallProgress, Description, Reply
from agent_node.tunnel import FAILED, Tunnel
from agent_node.wire import (
    to_pb_message,
    to_pb_response_format,
    to_pb_sampling,
    to_pb_tool,
    to_pb_tool_choice,
)
from inference_node.api import pb, rpc
from studio_common.channel import client_options

log = logging.getLogger(__name__)

FALLBACK_ON = (ModelNotFound, ModelLoadFailed, WouldNotFit)

T = TypeVar("T")


# ---------------------------------------------------------------------- the client


@dataclass
class FallbackRecord:
    skipped: str  # the model that was not used
    reason: str  # why, in the server's words
    code: str  # NOT_FOUND, RESOURCE_EXHAUSTED, ... or "not in catalog"
    used: str = ""  # the model tried next ("" when none was left)


class Client:
    """One channel to the inference node (through the tunnel when there is one)."""

    def __init__(self, cfg: AgentConfig, tunnel: Tunnel | None = None) -> None:
        self.cfg = cfg
        self.tunnel = tunnel
        self.target = tunnel.target if tunnel is not None else cfg.inference.target
        self.channel = grpc.insecure_channel(self.target, options=client_options())
        self.stub = rpc.InferenceStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)
        self.channel_state = grpc.ChannelConnectivity.IDLE
        self.channel.subscribe(self._on_channel_state, try_to_connect=False)
        self._catalog: list[pb.ModelInfo] | None = None
        self._in_flight: set[Any] = set()
        self._lock = threading.Lock()
        if tunnel is not None:
            tunnel.add_listener(self._on_tunnel_change)

    # lifecycle ----------------------------------------------------------

    def close(self) -> None:
        self.channel.unsubscribe(self._on_channel_state)
        self.channel.close()
        if self.tunnel is not None:
            self.tunnel.stop()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _on_channel_state(self, state: grpc.ChannelConnectivity) -> None:
        self.channel_state = state

    def _on_tunnel_change(self, status: Any) -> None:
        # Calls waiting for a tunnel that has given up would otherwise wait out their deadline.
        if status.state == FAILED:
            with self._lock:
                calls = list(self._in_flight)
            for call in calls:
                call.cancel()

    # plumbing -----------------------------------------------------------

    def _check_tunnel(self, during: str) -> None:
        if self.tunnel is not None:
            st = self.tunnel.status()
            if st.state == FAILED:
                raise TunnelFailed(f"{during}: the SSH tunnel has stopped: {st.why}", why=st.why)

    def _error(self, e: grpc.RpcError, during: str, model: str = "") -> InferenceError:
        err = map_grpc_error(e, target=self.target, model=model, tunnel=self.tunnel,
                             during=during)
        ready = self.channel_state == grpc.ChannelConnectivity.READY
        if isinstance(err, DeadlineExceeded) and not ready:
            # wait_for_ready turns "nothing listens there" into a deadline; say what it was.
            err = self._unreachable(f"{during}: nothing answered at {{where}} before the "
                                    "deadline", code=err.code, model=model)
        return err

    def _unreachable(self, what: str, code: str = "UNAVAILABLE",
                     model: str = "") -> InferenceError:
        """InferenceUnavailable (or TunnelFailed) for `what` ({where} filled in), with the fix."""
        if self.tunnel is None:
            return InferenceUnavailable(
                f"{what.format(where=self.target)}; is `inference-node serve` running, and does "
                f"[inference] target in {self.cfg.source} point at it? (`agent-node status`)",
                code=code, model=model)
        st = self.tunnel.status()
        if st.state == FAILED:
            return TunnelFailed(f"the SSH tunnel has stopped: {st.why}", why=st.why, code=code,
                                model=model)
        return InferenceUnavailable(
            f"{what.format(where=st.describe())}; the tunnel rebuilds by itself: retry shortly, "
            "and if it keeps failing check sshd and `inference-node serve` on the host "
            "(`agent-node status`)", code=code, model=model)

    def wait_ready(self, timeout: float | None = None) -> None:
        """Return once the channel is connected; InferenceUnavailable or TunnelFailed after
        `timeout` (default [inference] connect_timeout_s). For callers that fail fast."""
        if self.channel_state == grpc.ChannelConnectivity.READY:
            return
        wait = self.cfg.inference.connect_timeout_s if timeout is None else timeout
        ready = grpc.channel_ready_future(self.channel)
        try:
            ready.result(wait)
        except grpc.FutureTimeoutError:
            ready.cancel()
            raise self._unreachable(f"the inference node did not answer at {{where}} within "
                                    f"{wait:g} s") from None

    def unary(self, method: Any, request: Any, during: str,
              timeout: float | None = None) -> Any:
        self._check_tunnel(during)
        fut = method.future(request, timeout=timeout or self.cfg.inference.call_timeout_s,
                            wait_for_ready=True)
        with self._lock:
            self._in_flight.add(fut)
        try:
            return fut.result()
        except grpc.RpcError as e:
            raise self._error(e, during) from None
        except grpc.FutureCancelledError:
            raise self._error(CancelledCall(), during) from None
        finally:
            with self._lock:
                self._in_flight.discard(fut)

    def streaming(self, method: Callable[..., Any], request: Any, during: str,
                  model: str = "", cancel: Cancellation | None = None) -> Iterator[pb.ChatEvent]:
        """Events of a server stream; errors mapped; cancelled when the consumer stops or
        `cancel` is cancelled (from any thread)."""
        self._check_tunnel(during)
        call = method(request, timeout=self.cfg.inference.timeout_s, wait_for_ready=True)
        with self._lock:
            self._in_flight.add(call)
        if cancel is not None:
            cancel.add(call)
        try:
            yield from call
        except grpc.RpcError as e:
            raise self._error(e, during, model) from None
        finally:
            call.cancel()
            with self._lock:
                self._in_flight.discard(call)

    # the API ------------------------------------------------------------

    def health(self, timeout: float | None = None) -> str:
        """The node's grpc.health.v1 status name, e.g. "SERVING"."""
        resp = self.unary(self._health.Check, health_pb2.HealthCheckRequest(),
                          "health check", timeout or self.cfg.inference.connect_timeout_s)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))

    def list_models(self, timeout: float | None = None) -> list[pb.ModelInfo]:
        resp = self.unary(self.stub.ListModels, pb.ListModelsRequest(), "ListModels", timeout)
        self._catalog = list(resp.models)
        return self._catalog

    def memory(self, timeout: float | None = None) -> pb.MemoryStatus:
        return self.unary(self.stub.GetMemory, pb.GetMemoryRequest(), "GetMemory", timeout)

    def catalog(self) -> list[pb.ModelInfo]:
        return self._catalog if self._catalog is not None else self.list_models()

    def model(self, role: str = "coder") -> GrpcModel:
        chains = {"coder": self.cfg.inference.coder, "vision": self.cfg.inference.vision}
        if role not in chains:
            raise ValueError(f"role must be one of {sorted(chains)}, not {role!r}")
        return GrpcModel(self, list(chains[role]), role)

    def describer(self) -> GrpcDescriber | None:
        """A describer over the configured vision chain; None when none is configured or served."""
        chain = list(self.cfg.inference.vision)
        if not chain:
            log.info("no [inference] vision model configured: describe is skipped")
            return None
        served = {m.name for m in self.catalog() if m.role == "vision"}
        if not any(name in served for name in chain):
            log.warning("none of the vision models %s is served by %s (it serves %s): describe "
                        "is skipped", chain, self.target, sorted(served) or "none")
            return None
        return GrpcDescriber(self, chain)


class Cancellation:
    """Cancels every call made under it, those in flight and any started later; thread-safe.

        cancel = Cancellation()
        events = client.model().stream_request(req, cancel)   # consumed on another thread
        cancel.cancel()                                        # that call stops within a step
    """

    def __init__(self) -> None:
        self.cancelled = False
        self._calls: list[Any] = []
        self._lock = threading.Lock()

    def add(self, call: Any) -> None:
        with self._lock:
            self._calls.append(call)
            cancelled = self.cancelled
        if cancelled:
            call.cancel()

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            calls = list(self._calls)
        for call in calls:
            call.cancel()


class _FallbackChain:
    """Tries the chain in order until a model serves; remembers the choice and why."""

    def __init__(self, client: Client, chain: list[str], role: str) -> None:
        self.client = client
        self.chain = chain
        self.role = role
        self.chosen: str | None = None
        self.fallback_log: list[FallbackRecord] = []
        self._skip: set[str] = set()
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.chosen or (self.chain[0] if self.chain else "")

    @property
    def why(self) -> str:
        """Which model does the work and why, for the run record."""
        if not self.chain:
            return f"no {self.role} chain configured: the server's default {self.role} model"
        if not self.fallback_log:
            return f"{self.name}: first in the {self.role} chain"
        skipped = "; ".join(f"{r.skipped} skipped ({r.reason})" for r in self.fallback_log)
        return f"{self.name}: {skipped}"

    def _record(self, skipped: str, reason: str, code: str) -> None:
        with self._lock:
            self._skip.add(skipped)
            rest = [m for m in self.chain if m not in self._skip]
            rec = FallbackRecord(skipped, reason, code, rest[0] if rest else "")
            self.fallback_log.append(rec)
        log.warning("%s model %s not used (%s); next: %s", self.role, skipped, reason,
                    rec.used or "none left")

    def _candidates(self) -> list[str]:
        if not self.chain:
            return [""]
        if self.chosen is None:
            try:
                catalog = {m.name for m in self.client.catalog()}
                if not set(self.chain) <= catalog:  # the cached catalog may predate a change
                    catalog = {m.name for m in self.client.list_models()}
            except InferenceError as e:
                log.info("could not read the catalog (%s); trying the chain in order", e)
                catalog = set(self.chain)
            for name in self.chain:
                if name not in catalog and name not in self._skip:
                    self._record(name, f"not in the catalog of {self.client.target}",
                                 "not in catalog")
        return [m for m in self.chain if m not in self._skip]

    def run(self, open_stream: Callable[[str], Iterator[pb.ChatEvent]],
            during: str) -> Iterator[pb.ChatEvent]:
        """Open the stream on the first model that serves; events after that pass through."""
        candidates = self._candidates()
        if not candidates:
            tried = ", ".join(f"{r.skipped} ({r.reason})" for r in self.fallback_log)
            raise ModelNotFound(f"{during}: no {self.role} model in the chain {self.chain} can "
                                f"serve: {tried}; fix [inference] {self.role} in agent-node.toml "
                                "or add the model on the inference node")
        for i, name in enumerate(candidates):
            events = open_stream(name)
            try:
                try:
                    first = next(events)
                except StopIteration:
                    return
                except FALLBACK_ON as e:
                    if i + 1 < len(candidates):
                        self._record(name, e.detail, e.code)
                        continue
                    raise
                self.chosen = name or (first.admitted.model if first.HasField("admitted") else "")
                yield first
                yield from events
                return
            finally:
                events.close()  # type: ignore[attr-defined]  # cancels the call if unfinished


class GrpcModel(_FallbackChain):
    """agent_node.model.Model over gRPC Chat, with the configured fallback chain."""

    def __init__(self, client: Client, chain: list[str], role: str = "coder", *,
                 sampling: dict[str, Any] | None = None) -> None:
        super().__init__(client, chain, role)
        self.sampling = dict(sampling or {})
        # Sees each chat() call in flight (agent_node.activity shows it on stderr).
        self.on_progress: Callable[[CallProgress], None] | None = None

    def request(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: Any = "auto",
        response_format: dict[str, Any] | None = None,
        max_tokens: int | None = None,
        request_id: str = "",
        **sampling: Any,
    ) -> pb.ChatRequest:
        req = pb.ChatRequest(
            messages=[to_pb_message(m) for m in messages],
            tools=[to_pb_tool(t) for t in tools or []],
            tool_choice=to_pb_tool_choice(tool_choice),
            response_format=to_pb_response_format(response_format),
            sampling=to_pb_sampling({**self.sampling, **sampling}),
            request_id=request_id,
        )
        if max_tokens is not None:
            req.max_tokens = max_tokens
        return req

    def stream(self, messages: list[dict[str, Any]], **options: Any) -> Iterator[pb.ChatEvent]:
        """The Chat stream's events (admitted, delta, tool_call, done), after any fallback."""
        return self.stream_request(self.request(messages, **options))

    def stream_request(self, req: pb.ChatRequest, cancel: Cancellation | None = None
                       ) -> Iterator[pb.ChatEvent]:
        """`stream` for a ready ChatRequest (its model is set per attempt along the chain)."""

        def open_stream(name: str) -> Iterator[pb.ChatEvent]:
            r = pb.ChatRequest()
            r.CopyFrom(req)
            r.model = name
            during = f"Chat with {name or 'the default coder'}"
            return self.client.streaming(self.client.stub.Chat, r, during, name, cancel)

        return self.run(open_stream, "Chat")

    def chat(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: str | dict[str, Any] = "auto",
        response_format: dict[str, Any] | None = None,
        max_tokens: int | None = None,
        sampling: dict[str, Any] | None = None,
    ) -> Reply:
        reply = collect_reply(self.stream(messages, tools=tools, tool_choice=tool_choice,
                                          response_format=response_format,
                                          max_tokens=max_tokens, **(sampling or {})),
                              self.on_progress)
        reply.model = reply.model or self.name
        return reply

    def record(self) -> dict[str, Any]:
        """What the run record keeps: the model used and the fallbacks on the way."""
        return {"role": self.role, "chain": self.chain, "chosen": self.chosen, "why": self.why,
                "fallbacks": [asdict(r) for r in self.fallback_log]}


class GrpcDescriber(_FallbackChain):
    """agent_node.model.Describer over gRPC Describe: a description, never a verdict."""

    def __init__(self, client: Client, chain: list[str]) -> None:
        super().__init__(client, chain, "vision")

    def describe(self, image: bytes, instruction: str = "") -> Description:
        t0 = time.monotonic()
        req = pb.DescribeRequest(image=pb.Image(data=image), instruction=instruction)

        def open_stream(name: str) -> Iterator[pb.ChatEvent]:
            r = pb.DescribeRequest()
            r.CopyFrom(req)
            r.model = name
            return self.client.streaming(self.client.stub.Describe, r, f"Describe with {name}",
                                         name)

        fold = ChatFold(model=self.name)
        for ev in self.run(open_stream, "Describe"):
            fold.add(ev)
        return Description(fold.text.strip(), fold.model, fold.note, time.monotonic() - t0)


# ---------------------------------------------------------------------- connect


def connect(cfg: AgentConfig) -> Client:
    """A Client for `cfg`; starts the tunnel first when [tunnel] is enabled. Use with `with`."""
    if not cfg.tunnel.enabled:
        return Client(cfg)
    tunnel = Tunnel(cfg.tunnel, source=cfg.source)
    tunnel.start()  # raises TunnelFailed on a refused host key or identity
    return Client(cfg, tunnel)
