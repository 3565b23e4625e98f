"""The gRPC client for the inference node: deadlines, wait_for_ready, one error map, fallbacks.

    with connect(cfg) as client:                 # starts the SSH tunnel when [tunnel] enabled
        coder = client.model("coder")            # a GrpcModel: agent_node.model.Model
        reply = coder.chat([{"role": "user", "content": "hi"}])
        coder.chosen, coder.fallback_log         # which model did the work, and why
        for event in coder.stream(messages):     # pb.ChatEvent, for the bridge
            ...
        client.describer()                       # GrpcDescriber, or None without a vision model
        client.health(); client.list_models(); client.memory()

Every call carries a deadline and waits for the channel to be ready, so a call made while the
tunnel is rebuilding waits instead of failing. `map_grpc_error` is the only place a
`grpc.RpcError` becomes an `agent_node.exceptions` error.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agent_node.config import AgentConfig
from agent_node.exceptions import (
    BadRequest,
    Cancelled,
    DeadlineExceeded,
    InferenceError,
    InferenceUnavailable,
    ModelLoadFailed,
    ModelNotFound,
    QueueFull,
    TunnelFailed,
    WouldNotFit,
)
from agent_node.model import CallProgress, Description, Reply, ToolCall, Usage
from agent_node.tunnel import FAILED, UP, Tunnel
from inference_node.api import pb, rpc

log = logging.getLogger(__name__)

# Mirrors inference_node/config.py and inference_node/server.py:channel_options (agent_node
# imports only inference_node.api); both sides must agree or pings and big messages are refused.
MAX_MESSAGE_BYTES = 32 * 1024 * 1024
KEEPALIVE_TIME_MS = 20_000
KEEPALIVE_TIMEOUT_MS = 10_000
CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # Reconnect quickly once the tunnel's listener is back (the default backs off to 120 s).
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
]
FALLBACK_ON = (ModelNotFound, ModelLoadFailed, WouldNotFit)

T = TypeVar("T")


# ---------------------------------------------------------------------- the one error map


def map_grpc_error(
    err: grpc.RpcError,
    *,
    target: str = "",
    model: str = "",
    tunnel: Tunnel | None = None,
    during: str = "",
) -> InferenceError:
    """The one place a gRPC error becomes an InferenceError with a message a person can use."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = (err.details() if hasattr(err, "details") else "") or str(err)
    name = code.name if code else "UNKNOWN"
    kw: dict[str, Any] = {"code": name, "model": model}
    tstatus = tunnel.status() if tunnel is not None else None
    where = f"the inference node at {target}" if target else "the inference node"
    if tstatus is not None:
        where = f"the inference node through {tstatus.ssh} (local end {tstatus.target})"
    if tstatus is not None and tstatus.state == FAILED:
        return TunnelFailed(f"{during}: the SSH tunnel has stopped: {tstatus.why}", why=tstatus.why,
                            code=name, model=model)
    tunnel_note = f"; {tstatus.describe()}" if tstatus is not None and tstatus.state != UP else ""

    if code == grpc.StatusCode.UNAVAILABLE:
        if tstatus is not None:
            hint = ("the tunnel rebuilds by itself; retry the call, and if it keeps failing check "
                    "sshd and `inference-node serve` on the host (`agent-node status`)")
        else:
            hint = ("is `inference-node serve` running there, and does [inference] target in "
                    "agent-node.toml point at it? (`agent-node status`)")
        return InferenceUnavailable(f"{during}: lost or could not reach {where} ({details})"
                                    f"{tunnel_note}; {hint}", **kw)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        if tstatus is not None and tstatus.state != UP:
            return InferenceUnavailable(f"{during}: the deadline passed while {where} was "
                                        f"unreachable{tunnel_note}", **kw)
        return DeadlineExceeded(f"{during}: deadline exceeded ({details}); raise "
                                "[inference] timeout_s or call_timeout_s if the work is "
                                "legitimately slow", **kw)
    if code == grpc.StatusCode.NOT_FOUND:
        return ModelNotFound(f"{during}: {details}", **kw)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        if "queue" in details.lower():
            return QueueFull(f"{during}: {details}", **kw)
        return WouldNotFit(f"{during}: {details}", **kw)
    if code == grpc.StatusCode.FAILED_PRECONDITION:  # in the catalog, but it would not load
        return ModelLoadFailed(f"{during}: {details}", **kw)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return BadRequest(f"{during}: {details}", **kw)
    if code == grpc.StatusCode.CANCELLED:
        return Cancelled(f"{during}: cancelled ({details}){tunnel_note}", **kw)
    return InferenceError(f"{during}: {where} answered {name}: {details}", **kw)


# ---------------------------------------------------------------------- request translation


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # chat-completions parts: keep the text ones
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return str(content)


def _tool_call(tc: dict[str, Any]) -> pb.ToolCall:
    fn = tc.get("function") or {}
    name = tc.get("name") or fn.get("name", "")
    args = tc.get("arguments", fn.get("arguments", {}))
    return pb.ToolCall(
        id=tc.get("id", ""),
        name=name,
        arguments_json=args if isinstance(args, str) else json.dumps(args),
    )


def to_pb_message(m: dict[str, Any]) -> pb.Message:
    return pb.Message(
        role=m.get("role", ""),
        text=_text(m.get("content")),
        tool_calls=[_tool_call(tc) for tc in m.get("tool_calls") or []],
        tool_call_id=m.get("tool_call_id", ""),
        name=m.get("name", "") or "",
        images=[pb.Image(data=b) for b in m.get("images") or []],
    )


def to_pb_tool(t: dict[str, Any]) -> pb.Tool:
    fn = t.get("function", t)  # accepts {"type": "function", "function": {...}} too
    return pb.Tool(
        name=fn["name"],
        description=fn.get("description", ""),
        parameters_json=json.dumps(fn.get("parameters") or {"type": "object", "properties": {}}),
    )


def to_pb_tool_choice(choice: Any) -> pb.ToolChoice:
    if isinstance(choice, dict):  # {"type": "function", "function": {"name": ...}}
        return pb.ToolChoice(mode=pb.ToolChoice.NAMED, name=choice.get("function", {})["name"])
    modes = {"auto": pb.ToolChoice.AUTO, "none": pb.ToolChoice.NONE,
             "required": pb.ToolChoice.REQUIRED}
    if not choice or choice in modes:
        return pb.ToolChoice(mode=modes.get(choice or "auto", pb.ToolChoice.AUTO))
    return pb.ToolChoice(mode=pb.ToolChoice.NAMED, name=str(choice))


def to_pb_response_format(rf: dict[str, Any] | None) -> pb.ResponseFormat:
    """A JSON Schema dict (the Model protocol's shape), or the chat-completions shapes."""
    if not rf:
        return pb.ResponseFormat()
    kind = rf.get("type")
    if kind == "text" and "properties" not in rf:
        return pb.ResponseFormat()
    if kind == "json_object":
        return pb.ResponseFormat(type=pb.ResponseFormat.JSON_OBJECT)
    if kind == "json_schema" and isinstance(rf.get("json_schema"), dict):
        js = rf["json_schema"]
        return pb.ResponseFormat(type=pb.ResponseFormat.JSON_SCHEMA, name=js.get("name", ""),
                                 schema_json=json.dumps(js.get("schema", {})))
    return pb.ResponseFormat(type=pb.ResponseFormat.JSON_SCHEMA, schema_json=json.dumps(rf))


def _sampling(opts: dict[str, Any]) -> pb.Sampling:
    known = ("temperature", "top_p", "top_k", "min_p", "seed", "repetition_penalty", "stop")
    unknown = set(opts) - set(known)
    if unknown:
        raise TypeError(f"unknown sampling option(s): {', '.join(sorted(unknown))}")
    fields = {k: v for k, v in opts.items() if v is not None}
    if isinstance(fields.get("stop"), str):
        fields["stop"] = [fields["stop"]]
    return pb.Sampling(**fields)


def collect_reply(events: Iterator[pb.ChatEvent],
                  on_progress: Callable[[CallProgress], None] | None = None) -> Reply:
    """Fold a Chat stream into a Reply: content apart from reasoning, tool calls, usage.

    `on_progress` sees the call in flight: once when admitted, after each streamed piece, and
    at the end (a forced tool call arrives whole, so it shows only elapsed time until then).
    """
    t0 = time.monotonic()
    reply = Reply()
    text: list[str] = []
    reasoning: list[str] = []
    progress = CallProgress()
    for ev in events:
        kind = ev.WhichOneof("event")
        if kind == "admitted":
            reply.model = ev.admitted.model
            progress.model, progress.queue_seconds = ev.admitted.model, ev.admitted.queue_seconds
        elif kind == "delta":
            thinking = ev.delta.kind == pb.Delta.REASONING
            (reasoning if thinking else text).append(ev.delta.text)
            progress.tokens += 1
            progress.reasoning_tokens += 1 if thinking else 0
        elif kind == "tool_call":
            try:
                args = json.loads(ev.tool_call.arguments_json or "{}")
            except json.JSONDecodeError:
                args = {"_unparsed": ev.tool_call.arguments_json}
            reply.tool_calls.append(ToolCall(ev.tool_call.id, ev.tool_call.name, args))
        elif kind == "done":
            d = ev.done
            reply.finish_reason = d.finish_reason or reply.finish_reason
            reply.usage = Usage(d.usage.prompt_tokens, d.usage.completion_tokens,
                                d.usage.reasoning_tokens)
            reply.model = d.model or reply.model
            reply.cut_off_while_reasoning = d.cut_off_while_reasoning
            reply.decode_tps = d.timings.decode_tokens_per_second
            reply.seconds = d.timings.total_seconds
            progress.tokens = d.usage.completion_tokens  # reasoning included
            progress.reasoning_tokens, progress.done = d.usage.reasoning_tokens, True
        if on_progress is not None and kind != "tool_call":
            progress.seconds = time.monotonic() - t0
            on_progress(progress)
    reply.text = "".join(text)
    reply.reasoning = "".join(reasoning)
    reply.seconds = reply.seconds or time.monotonic() - t0
    return reply


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
        self.channel = grpc.insecure_channel(self.target, options=CHANNEL_OPTIONS)
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
            where = self.tunnel.status().describe() if self.tunnel else self.target
            err = InferenceUnavailable(
                f"{during}: nothing answered at {where} before the deadline; is `inference-node "
                "serve` running, and does [inference] target in agent-node.toml point at it? "
                "(`agent-node status`)", code=err.code, model=model)
        return err

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
            raise self._error(_Cancelled(), during) from None
        finally:
            with self._lock:
                self._in_flight.discard(fut)

    def streaming(self, method: Callable[..., Any], request: Any, during: str,
                  model: str = "") -> Iterator[pb.ChatEvent]:
        """Events of a server stream; errors mapped; cancelled when the consumer stops."""
        self._check_tunnel(during)
        call = method(request, timeout=self.cfg.inference.timeout_s, wait_for_ready=True)
        with self._lock:
            self._in_flight.add(call)
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

    def load_model(self, name: str) -> pb.ModelStatus:
        return self.unary(self.stub.LoadModel, pb.LoadModelRequest(name=name),
                          f"LoadModel {name}")

    def unload_model(self, name: str) -> pb.ModelStatus:
        return self.unary(self.stub.UnloadModel, pb.UnloadModelRequest(name=name),
                          f"UnloadModel {name}")

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


class _Cancelled(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.CANCELLED

    def details(self) -> str:
        return "the call was cancelled"


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
                        self._record(name, e.message.split(": ", 1)[-1], e.code)
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
            sampling=_sampling({**self.sampling, **sampling}),
            request_id=request_id,
        )
        if max_tokens is not None:
            req.max_tokens = max_tokens
        return req

    def stream(self, messages: list[dict[str, Any]], **options: Any) -> Iterator[pb.ChatEvent]:
        """The Chat stream's events (admitted, delta, tool_call, done), after any fallback."""
        req = self.request(messages, **options)

        def open_stream(name: str) -> Iterator[pb.ChatEvent]:
            r = pb.ChatRequest()
            r.CopyFrom(req)
            r.model = name
            during = f"Chat with {name or 'the default coder'}"
            return self.client.streaming(self.client.stub.Chat, r, during, name)

        return self.run(open_stream, "Chat")

    def chat(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: str = "auto",
        response_format: dict[str, Any] | None = None,
        max_tokens: int | None = None,
    ) -> Reply:
        reply = collect_reply(self.stream(messages, tools=tools, tool_choice=tool_choice,
                                          response_format=response_format,
                                          max_tokens=max_tokens), self.on_progress)
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

        text: list[str] = []
        note, model = "", self.name
        for ev in self.run(open_stream, "Describe"):
            kind = ev.WhichOneof("event")
            if kind == "admitted":
                note, model = ev.admitted.note, ev.admitted.model or model
            elif kind == "delta" and ev.delta.kind == pb.Delta.CONTENT:
                text.append(ev.delta.text)
            elif kind == "done":
                model = ev.done.model or model
        return Description("".join(text).strip(), model, note, time.monotonic() - t0)


# ---------------------------------------------------------------------- connect


def connect(cfg: AgentConfig) -> Client:
    """A Client for `cfg`; starts the tunnel first when [tunnel] is enabled. Use with `with`."""
    if not cfg.tunnel.enabled:
        return Client(cfg)
    tunnel = Tunnel(cfg.tunnel, source=cfg.source)
    tunnel.start()  # raises TunnelFailed on a refused host key or identity
    return Client(cfg, tunnel)
