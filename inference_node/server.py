"""The gRPC service: `create_server(addr) -> (server, port)` and `serve()`.

Handlers validate, resolve the model, admit against the memory budget and hand a job to the
engine thread; they never touch MLX themselves. Every error becomes a status code with a
message a person can act on, mapped in one place (`_abort`).
"""

from __future__ import annotations

import ipaddress
import logging
import logging.handlers
import queue
import signal
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from inference_node import chat
from inference_node.api import pb, rpc
from inference_node.api.tomlconf import ConfigError
from inference_node.config import (
    KEEPALIVE_TIME_MS,
    KEEPALIVE_TIMEOUT_MS,
    InferenceConfig,
    load_config,
)
from inference_node.engine import DONE, Engine, Job
from inference_node.errors import BadRequest, InferenceError, Unavailable
from inference_node.models import Catalog, CatalogModel

log = logging.getLogger("inference_node.server")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Inference"].full_name


def channel_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    """Message limits and keepalive, the same on both sides (agent_node/client.py mirrors)."""
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", KEEPALIVE_TIME_MS // 2),
        ("grpc.http2.max_pings_without_data", 0),
    ]


def check_host(host: str, allow_remote: bool) -> None:
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and not allow_remote:
        raise ValueError(
            f"refusing to listen on {host}: the inference node binds loopback only. Reach it "
            "from the workstation through the SSH tunnel (agent-node.toml [tunnel]); pass "
            "--allow-remote only if you really mean to expose it"
        )


class InferenceServicer(rpc.InferenceServicer):
    def __init__(self, cfg: InferenceConfig, catalog: Catalog, admission: Any, engine: Engine):
        self.cfg = cfg
        self.catalog = catalog
        self.admission = admission
        self.engine = engine
        self.draining = False
        self.down_reason = ""  # set when the ranks of a distributed group are lost

    # ------------------------------------------------------------ Chat

    def Chat(self, request: pb.ChatRequest, context: grpc.ServicerContext
             ) -> Iterator[pb.ChatEvent]:
        try:
            yield from self._chat(request, context)
        except InferenceError as e:
            _abort(context, e)

    def _chat(self, request: pb.ChatRequest, context: grpc.ServicerContext
              ) -> Iterator[pb.ChatEvent]:
        self._check_open()
        chat.validate_messages(request.messages, allow_images=False)
        tools = chat.parse_tools(request.tools)
        entry = self.catalog.get(request.model, "coder")
        if entry.is_vision:
            raise BadRequest(
                f"{entry.name} is a vision model: it only describes images, through Describe; "
                "send Chat to a coder model"
            )
        lm = self.engine.ensure_loaded(entry)
        tok = lm.tokenizer
        constraint, json_tools = self._constraint(request, tok, tools)
        note = constraint.instruction if constraint is not None else ""
        prompt = chat.build_prompt(tok, chat.template_messages(request.messages), tools, note,
                                   note_lists_tools=json_tools is not None)
        max_tokens = chat.resolve_max_tokens(
            request.max_tokens if request.HasField("max_tokens") else None,
            len(prompt), entry.context, self.cfg.engine.default_max_tokens, entry.name,
        )
        job = self._job(request, entry, lm, prompt, max_tokens, constraint, json_tools, tools)
        yield from self._run(job, entry, context)

    def _constraint(self, request: pb.ChatRequest, tokenizer: Any, tools: list[dict]
                    ) -> tuple[Any, Any]:
        """Grammar constraints for response_format and forced tool calls (or none)."""
        rf = request.response_format
        choice = request.tool_choice
        forced = tools and choice.mode in (pb.ToolChoice.REQUIRED, pb.ToolChoice.NAMED)
        if rf.type == pb.ResponseFormat.TEXT and not forced:
            return None, None
        from inference_node import constrained

        if forced:
            mode = "required" if choice.mode == pb.ToolChoice.REQUIRED else "named"
            c = constrained.compile_tool_choice(tokenizer, tools, mode, choice.name)
            native = tokenizer.has_tool_calling and getattr(c, "native", False)
            return c, (None if native else c)
        schema = None
        if rf.type == pb.ResponseFormat.JSON_SCHEMA:
            schema = chat._json_object(rf.schema_json, "response_format.schema_json")
        c = constrained.compile_response_format(
            tokenizer, schema, rf.type == pb.ResponseFormat.JSON_OBJECT
        )
        return c, None

    def _job(self, request: pb.ChatRequest, entry: CatalogModel, lm: Any, prompt: list[int],
             max_tokens: int, constraint: Any, json_tools: Any, tools: list[dict]) -> Job:
        from mlx_lm.generate import make_stop_sequences, make_text_state_machine
        from mlx_lm.sample_utils import make_logits_processors, make_sampler

        tok = lm.tokenizer
        s = request.sampling
        stop = list(s.stop)
        sampler = make_sampler(
            temp=s.temperature if s.HasField("temperature") else 0.0,
            top_p=s.top_p if s.HasField("top_p") else 0.0,
            min_p=s.min_p if s.HasField("min_p") else 0.0,
            top_k=s.top_k if s.HasField("top_k") else 0,
        )
        if s.HasField("seed"):
            import mlx.core as mx

            mx.random.seed(s.seed)
        processors = make_logits_processors(
            repetition_penalty=s.repetition_penalty if s.HasField("repetition_penalty") else None
        )
        if constraint is not None:
            processors.append(constraint.logits_processor())
        initial = "normal"
        if tok.has_thinking and tok.rfind_think_start(prompt) > tok.rfind_think_end(prompt):
            initial = "reasoning"  # the template opened <think> for the model
        router = chat.TextRouter(
            text_sm=make_text_state_machine(tok, stop),
            initial_state=initial,
            tool_parser=tok.tool_parser,
            tools=tools,
            json_tools=json_tools,
        )
        return Job(
            request_id=chat.new_request_id(request.request_id),
            model=entry.name,
            prompt=prompt,
            max_tokens=max_tokens,
            router=router,
            sampler=sampler,
            logits_processors=processors,
            stop_sequences=make_stop_sequences(tok, stop),
        )

    def _run(self, job: Job, entry: CatalogModel, context: grpc.ServicerContext,
             images: list[pb.ImageInfo] | None = None, note: str = ""
             ) -> Iterator[pb.ChatEvent]:
        """Reserve memory, hand the job to the engine and stream its events back."""
        lm = self.engine.loaded.get(entry.name)
        if lm is None:  # evicted between load and reserve: load it again
            lm = self.engine.ensure_loaded(entry)
        t0 = time.monotonic()
        reservation = self.admission.reserve(
            entry.name, len(job.prompt), job.max_tokens, lm.kv_per_token,
            fixed_bytes=lm.kv_fixed_bytes,
            timeout_s=self._queue_timeout(context),
            cancelled=lambda: not context.is_active(),
        )
        try:
            job.queue_seconds = time.monotonic() - t0
            job.reservation = reservation
            context.add_callback(job.cancelled.set)
            yield pb.ChatEvent(admitted=pb.Admitted(
                request_id=job.request_id, model=entry.name, queue_seconds=job.queue_seconds,
                reserved_bytes=reservation.bytes, prompt_tokens=len(job.prompt),
                max_tokens=job.max_tokens, images=images or [], note=note,
            ))
            self.engine.submit(job)
            while True:
                try:
                    event = job.events.get(timeout=0.5)
                except queue.Empty:
                    if not context.is_active():
                        job.cancelled.set()
                    continue
                if event is DONE:
                    break
                if isinstance(event, Exception):
                    raise event
                yield event
        finally:
            job.cancelled.set()
            self.admission.release(reservation)
            self.admission.touch(entry.name)

    def _queue_timeout(self, context: grpc.ServicerContext) -> float:
        limit = self.cfg.memory.queue_timeout_s
        remaining = context.time_remaining()
        return min(limit, remaining) if remaining is not None else limit

    def _check_open(self) -> None:
        if self.down_reason:
            raise Unavailable(self.down_reason)
        if self.draining:
            raise Unavailable("the inference node is draining for shutdown; retry shortly")

    # ------------------------------------------------------------ Describe

    def Describe(self, request: pb.DescribeRequest, context: grpc.ServicerContext
                 ) -> Iterator[pb.ChatEvent]:
        try:
            from inference_node.describe import check_request, describe_job

            self._check_open()
            entry = self.catalog.get(request.model, "vision")
            if not entry.is_vision:
                raise BadRequest(
                    f"{entry.name} is a {entry.role} model and cannot see images; Describe "
                    "needs a model with role = \"vision\""
                )
            checked = check_request(request, self.cfg.describe)  # before any load or eviction
            lm = self.engine.ensure_loaded(entry)
            job, images, note = describe_job(request, checked, entry, lm, self.cfg.describe)
            yield from self._run(job, entry, context, images, note)
        except InferenceError as e:
            _abort(context, e)

    # ------------------------------------------------------------ models and memory

    def ListModels(self, request: pb.ListModelsRequest, context: grpc.ServicerContext
                   ) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=[self._info(m) for m in self.catalog.models.values()])

    def LoadModel(self, request: pb.LoadModelRequest, context: grpc.ServicerContext
                  ) -> pb.ModelStatus:
        try:
            entry = self.catalog.get(request.name, "coder")
            lm, evicted = self.engine.load(entry)
            return pb.ModelStatus(
                model=self._info(entry),
                evicted=evicted,
                message=(f"loaded {entry.name}: estimated {lm.estimated_bytes / 1e9:.2f} GB, "
                         f"measured {lm.measured_bytes / 1e9:.2f} GB"),
            )
        except InferenceError as e:
            _abort(context, e)
            raise  # unreachable: abort raises

    def UnloadModel(self, request: pb.UnloadModelRequest, context: grpc.ServicerContext
                    ) -> pb.ModelStatus:
        try:
            entry = self.catalog.get(request.name, "coder")
            was = self.engine.unload(entry.name)
            msg = f"unloaded {entry.name}" if was else f"{entry.name} was not loaded"
            return pb.ModelStatus(model=self._info(entry), message=msg)
        except InferenceError as e:
            _abort(context, e)
            raise

    def GetMemory(self, request: pb.GetMemoryRequest, context: grpc.ServicerContext
                  ) -> pb.MemoryStatus:
        snap = self.admission.snapshot()
        rows = [pb.ModelMemory(**{k: v for k, v in row.items() if k in _ROW_FIELDS})
                for row in snap.get("models", [])]
        hosts = [pb.HostMemory(**{k: v for k, v in h.items() if k in _HOST_FIELDS})
                 for h in snap.get("hosts", [])]  # one per rank of a distributed group
        fields = {k: v for k, v in snap.items()
                  if k not in ("models", "hosts") and k in _MEMORY_FIELDS}
        return pb.MemoryStatus(models=rows, hosts=hosts, **fields)

    def _info(self, entry: CatalogModel) -> pb.ModelInfo:
        lm = self.engine.loaded.get(entry.name)
        rows = {r["name"]: r for r in self.admission.snapshot().get("models", [])}
        row = rows.get(entry.name, {})
        state = pb.ModelInfo.LOADED if lm else pb.ModelInfo.UNLOADED
        fp = self.engine.footprint(entry)
        return pb.ModelInfo(
            name=entry.name, role=entry.role, state=state,
            weights_bytes=(lm.measured_bytes if lm and lm.measured_bytes else fp.weights_bytes),
            kv_bytes_per_token=fp.kv_per_token, context_length=entry.context,
            last_used_unix=row.get("last_used_unix", 0.0), pinned=entry.pinned,
            in_flight=row.get("in_flight", 0),
            estimated_bytes=fp.resident_bytes,
            measured_bytes=lm.measured_bytes if lm else 0, source=entry.source,
        )


_MEMORY_FIELDS = {f.name for f in pb.MemoryStatus.DESCRIPTOR.fields}
_ROW_FIELDS = {f.name for f in pb.ModelMemory.DESCRIPTOR.fields}
_HOST_FIELDS = {f.name for f in pb.HostMemory.DESCRIPTOR.fields}


def _abort(context: grpc.ServicerContext, error: InferenceError) -> None:
    log.info("%s: %s", error.code.name, error)
    context.abort(error.code, str(error))


class InferenceServer:
    """The running gRPC server with the engine and admission it owns."""

    def __init__(self, grpc_server: grpc.Server, servicer: InferenceServicer,
                 health_servicer: health.HealthServicer) -> None:
        self.grpc = grpc_server
        self.servicer = servicer
        self.health = health_servicer
        self.engine = servicer.engine
        self.admission = servicer.admission

    def start(self) -> None:
        from inference_node.admission import apply_mlx_limits

        mem = self.servicer.cfg.memory
        cache = int(mem.cache_limit_gb * 2**30) if mem.cache_limit_gb else None
        prompt_cache = self.engine.prompt_cache_bytes  # set aside from admission's budget
        apply_mlx_limits(self.admission.budget_bytes + prompt_cache, cache, mem.wired_limit_mb)
        self.admission.start()  # the memory-floor watchdog
        self.engine.start()
        self.grpc.start()

    def stop(self, grace: float | None = None) -> threading.Event:
        """Drain: refuse new work, let streams finish within `grace`, then stop the engine."""
        self.servicer.draining = True
        self.health.enter_graceful_shutdown()
        done = self.grpc.stop(grace)
        done.wait()
        self.engine.stop()
        self.admission.stop()
        return done

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return self.grpc.wait_for_termination(timeout)


def create_server(addr: str = "127.0.0.1:0", cfg: InferenceConfig | None = None, *,
                  catalog: Catalog | None = None, admission: Any = None,
                  engine: Engine | None = None) -> tuple[InferenceServer, int]:
    """Build (not start) the server bound to `addr`; port 0 picks a free port. `engine`:
    one built by the caller (rank 0 of a distributed group passes its own)."""
    from inference_node.admission import Admission

    cfg = cfg or InferenceConfig()
    host, _, port_text = addr.rpartition(":")
    host = host.strip("[]")
    check_host(host, cfg.server.allow_remote)
    catalog = catalog or Catalog.from_config(cfg)
    if admission is None:
        admission = Admission(cfg.memory, cfg.source)
        cache = int(cfg.engine.prompt_cache_mb * 1024 * 1024)
        if cache:  # the prompt cache's cap is memory admission must not promise to anyone
            admission.budget_bytes -= cache
            admission.budget_source += f" − prompt cache {cfg.engine.prompt_cache_mb:.0f} MB"
    engine = engine or Engine(cfg, admission)
    servicer = InferenceServicer(cfg, catalog, admission, engine)

    max_bytes = cfg.server.max_message_mb * 1024 * 1024
    options = [*channel_options(max_bytes), ("grpc.so_reuseport", 0)]
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=cfg.server.max_workers, thread_name_prefix="rpc"),
        options=options,
    )
    rpc.add_InferenceServicer_to_server(servicer, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    try:
        bound = server.add_insecure_port(addr)
    except RuntimeError:  # newer grpcio raises instead of returning 0
        bound = 0
    if bound == 0:
        raise OSError(
            f"could not listen on {addr}: the port is taken (another inference-node?) or the "
            "address is not this machine's; pick another with --port"
        )
    log.info("memory budget %.1f GB (%s)", admission.budget_bytes / 1e9, admission.budget_source)
    return InferenceServer(server, servicer, health_servicer), bound


def serve(cfg: InferenceConfig, host: str, port: int) -> int:
    """Run until SIGTERM/SIGINT, then drain for `server.grace_seconds`."""
    server, bound = create_server(f"{host}:{port}", cfg)
    server.start()
    print(
        f"inference-node listening on {host}:{bound}; budget "
        f"{server.admission.budget_bytes / 1e9:.1f} GB ({server.admission.budget_source}); "
        f"models: {', '.join(server.servicer.catalog.models)}",
        flush=True,
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    print(f"draining (up to {cfg.server.grace_seconds:.0f}s)", flush=True)
    server.stop(cfg.server.grace_seconds)
    return 0


def log_to_file(path: Path) -> None:
    """Send the root logger to `path` alone, reopening it whenever it is moved or removed.

    launchd opens StandardErrorPath once, so a rotated stderr log keeps being written after
    newsyslog moves it; a file the server opens itself can follow the rotation.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.WatchedFileHandler(path)
    except OSError as e:
        raise ConfigError(f"cannot write the log file {path}: {e.strerror or e}; create its "
                          f"folder writable by this user, or drop --log-file") from None
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="inference-node serve")
    p.add_argument("--config", type=Path)
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--allow-remote", action="store_true")
    p.add_argument("--log-file", type=Path,
                   help="log here instead of stderr; reopened when newsyslog rotates it")
    ranks = p.add_mutually_exclusive_group()
    ranks.add_argument("--ranks", type=int, help="one model across N local mlx.distributed "
                       "ranks (ring backend on loopback); for one machine and tests")
    ranks.add_argument("--hostfile", type=Path, help="one model across the hosts of an mlx "
                       "hostfile (ring or JACCL); rank 0 is this machine")
    args = p.parse_args(argv)
    if args.log_file:
        log_to_file(args.log_file)
    cfg = load_config(args.config)
    if args.allow_remote:
        cfg.server.allow_remote = True
    if args.ranks is not None or args.hostfile is not None:
        cfg.distributed.ranks = args.ranks or 0
        cfg.distributed.hostfile = str(args.hostfile.resolve()) if args.hostfile else ""
    host, port = args.host or cfg.server.host, args.port or cfg.server.port
    if cfg.distributed.enabled or args.ranks is not None:
        from inference_node.distributed.supervisor import supervise

        return supervise(cfg, args.config, host, port, args.log_file)
    return serve(cfg, host, port)
