"""The Inference service's methods: Chat, Describe, and the control plane.

Handlers validate (`validate.py`), resolve the model, admit against the memory budget and hand
a job to the engine thread; they never touch MLX themselves. Errors are InferenceErrors, sent
in one place (`wire.abort`) with a status code, a message a person can act on and a reason.

The control plane stays apart from the streams: the server's thread pool holds
`server.max_streams` Chat/Describe streams plus `server.control_workers` threads that no stream
may take, so health, GetMemory, ListModels and Load/Unload answer whatever the number of open
streams. A stream past `max_streams` is refused at once (RESOURCE_EXHAUSTED, TOO_MANY_STREAMS).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import grpc

from inference_node import chat, mlx_compat, validate
from inference_node.api import pb
from inference_node.api import reasons as R
from inference_node.config import InferenceConfig
from inference_node.engine import Arrival, Engine
from inference_node.errors import BadRequest, ModelBusy, QueueFull, Unavailable
from inference_node.footprint import Footprint
from inference_node.jobs import DONE, Job, LoadedModel
from inference_node.machine import gib
from inference_node.models import Catalog, CatalogModel
from studio_common import json_bounds

if TYPE_CHECKING:
    from inference_node.constrained import Constraint

def default_max_tokens(default: int, constraint: Constraint | None) -> int:
    """max_tokens for a request that sets none: `default` (`[engine] default_max_tokens`), or,
    for a reply a bounded grammar decides from its first token (no reasoning before it), what
    that grammar allows plus a little.

    Admission reserves KV memory for prompt + max_tokens, so a schema'd call that asks for
    nothing would otherwise hold room for 32k tokens to write a few hundred: on a 1.5B
    served in float32 that is 1.8 GiB, which refused the visual judge on an 8 GB budget.
    One token per character is the bound: every token the grammar allows writes at least
    one character, except a byte of a multi-byte character or a piece of an escape, which
    set max_tokens to leave room for. A reasoning model's thinking is bounded only by
    max_tokens (rule 3), so it keeps the full default.
    """
    if constraint is None or constraint.thinking is not None or constraint.answer_chars is None:
        return default
    return min(default, json_bounds.reply_tokens(constraint.answer_chars))


class StreamSlots:
    """Counts open Chat and Describe streams; one past `limit` is refused at once."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0
        self._lock = threading.Lock()

    @contextmanager
    def hold(self) -> Iterator[None]:
        with self._lock:
            if self.open >= self.limit:
                raise QueueFull(
                    f"{self.open} streams are open, the most this node takes "
                    f"(server.max_streams = {self.limit}); retry when one finishes, or raise "
                    "max_streams in inference-node.toml", reason=R.TOO_MANY_STREAMS,
                    open_streams=self.open, stream_limit=self.limit)
            self.open += 1
        try:
            yield
        finally:
            with self._lock:
                self.open -= 1


class InferenceServicer:
    """The Inference service's methods; `wire.add_inference_service` registers them."""

    def __init__(self, cfg: InferenceConfig, catalog: Catalog, admission: Any, engine: Engine):
        self.cfg = cfg
        self.catalog = catalog
        self.admission = admission
        self.engine = engine
        self.draining = False
        self.down_reason = ""  # set when the ranks of a distributed group are lost
        self.streams = StreamSlots(cfg.server.max_streams)
        self._footprints: dict[str, Footprint] = {}

    # ------------------------------------------------------------ Chat

    def Chat(self, request: pb.ChatRequest, context: grpc.ServicerContext
             ) -> Iterator[pb.ChatEvent]:
        with self.streams.hold():
            yield from self._chat(request, context)

    def _chat(self, request: pb.ChatRequest, context: grpc.ServicerContext
              ) -> Iterator[pb.ChatEvent]:
        self._check_open()
        arrival = self.engine.arrival()  # requests sent together are prefilled together
        try:
            entry = self._entry(request.model, "coder")
            tools, schema = validate.check_chat(request, validate.vocab_size(entry.config))
            lm = self.engine.ensure_loaded(entry)
            tok = lm.tokenizer
            constraint, json_tools = self._constraint(request, tok, tools, schema)
            note = constraint.instruction if constraint is not None else ""
            messages = chat.template_messages(request.messages)
            prompt = chat.build_prompt(tok, messages, tools, note,
                                       note_lists_tools=json_tools is not None)
            max_tokens = chat.resolve_max_tokens(
                request.max_tokens if request.HasField("max_tokens") else None,
                len(prompt), entry.context,
                default_max_tokens(self.cfg.engine.default_max_tokens, constraint), entry.name,
            )
            job = self._job(request, entry, lm, prompt, max_tokens, constraint, json_tools,
                            tools)
            job.continues = any(m.get("role") == "assistant" for m in messages)
            if self.engine.prompt_cache.pinned_bytes:
                job.system_prefix = chat.system_prefix(tok, messages, tools, prompt, note,
                                                       note_lists_tools=json_tools is not None)
            yield from self._run(job, entry, context, arrival=arrival)
        finally:
            arrival.done()

    def _entry(self, name: str, role: str) -> CatalogModel:
        """The catalog entry `name` (or the first of `role`), which must have that role."""
        validate.check_model_name(name)
        entry = self.catalog.get(name, role)
        if entry.role != role:
            if entry.is_vision:
                why = (f"{entry.name} is a vision model: it only describes images, through "
                       "Describe; send Chat to a coder model")
            else:
                why = (f"{entry.name} is a {entry.role} model and cannot see images; Describe "
                       'needs a model with role = "vision"')
            raise BadRequest(why, reason=R.WRONG_MODEL_ROLE, model=entry.name,
                             role=entry.role, needed_role=role)
        return entry

    def _constraint(self, request: pb.ChatRequest, tokenizer: Any, tools: list[dict],
                    schema: dict | None) -> tuple[Constraint | None, Constraint | None]:
        """Grammar constraints for response_format and forced tool calls (or none)."""
        rf = request.response_format
        choice = request.tool_choice
        forced = choice.mode in (pb.ToolChoice.REQUIRED, pb.ToolChoice.NAMED)
        if rf.type == pb.ResponseFormat.TEXT and not forced:
            return None, None
        from inference_node import constrained

        if forced:
            mode = "required" if choice.mode == pb.ToolChoice.REQUIRED else "named"
            c = constrained.compile_tool_choice(tokenizer, tools, mode, choice.name,
                                                allowed=list(choice.allowed))
            native = tokenizer.has_tool_calling and getattr(c, "native", False)
            return c, (None if native else c)
        c = constrained.compile_response_format(
            tokenizer, schema, rf.type == pb.ResponseFormat.JSON_OBJECT
        )
        return c, None

    def _job(self, request: pb.ChatRequest, entry: CatalogModel, lm: LoadedModel,
             prompt: list[int], max_tokens: int, constraint: Constraint | None,
             json_tools: Constraint | None,
             tools: list[dict]) -> Job:
        tok = lm.tokenizer
        s = request.sampling  # every field checked by validate.check_sampling
        stop = list(s.stop)
        sampler = mlx_compat.make_sampler(
            temp=s.temperature if s.HasField("temperature") else 0.0,
            top_p=s.top_p if s.HasField("top_p") else 0.0,
            min_p=s.min_p if s.HasField("min_p") else 0.0,
            top_k=s.top_k if s.HasField("top_k") else 0,
        )
        base = mlx_compat.make_logits_processors(
            repetition_penalty=s.repetition_penalty if s.HasField("repetition_penalty") else None
        )
        processors = list(base)
        rebuild = None
        if constraint is not None:
            processors.append(constraint.logits_processor())

            def rebuild() -> list[mlx_compat.LogitsProcessor]:  # resumes after what was emitted
                return [*base, constraint.logits_processor(reply_starts_at=len(prompt))]

        initial = "normal"
        if tok.has_thinking and tok.rfind_think_start(prompt) > tok.rfind_think_end(prompt):
            initial = "reasoning"  # the template opened <think> for the model
        router = chat.TextRouter(
            text_sm=mlx_compat.text_states(tok, stop),
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
            stop_sequences=mlx_compat.stop_sequences(tok, stop),
            seed=s.seed if s.HasField("seed") else None,
            rebuild_processors=rebuild,
        )

    def _run(self, job: Job, entry: CatalogModel, context: grpc.ServicerContext,
             images: list[pb.ImageInfo] | None = None, note: str = "",
             arrival: Arrival | None = None) -> Iterator[pb.ChatEvent]:
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
            # To the engine before the Admitted event goes out: sending that waits on the wire,
            # and a job that reaches the engine after another's prefill step began waits for
            # the whole step. (The events queue up meanwhile; Admitted is still the first.)
            self.engine.submit(job)
            if arrival is not None:
                arrival.done()
            yield pb.ChatEvent(admitted=pb.Admitted(
                request_id=job.request_id, model=entry.name, queue_seconds=job.queue_seconds,
                reserved_bytes=reservation.bytes, prompt_tokens=len(job.prompt),
                max_tokens=job.max_tokens, images=images or [], note=note,
            ))
            while True:
                try:
                    event = job.events.get(timeout=0.5)
                except queue.Empty:
                    if not context.is_active():
                        job.cancelled.set()
                    if self.engine.stopped and not job.events.qsize():
                        raise Unavailable("the inference node stopped during this request; "
                                          "retry when it is back") from None
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
        with self.streams.hold():
            yield from self._describe(request, context)

    def _describe(self, request: pb.DescribeRequest, context: grpc.ServicerContext
                  ) -> Iterator[pb.ChatEvent]:
        from inference_node import describe

        self._check_open()
        entry = self._entry(request.model, "vision")
        cfg = self.cfg.describe
        # Everything before any load, eviction or decode; then the decode, under admission.
        checked = describe.check_request(request, cfg, validate.vocab_size(entry.config))
        decoding = self.admission.reserve_bytes(
            entry.name, checked.decode_bytes,
            f"decoding a {checked.width}x{checked.height} {checked.fmt.upper()}",
            timeout_s=self._queue_timeout(context), cancelled=lambda: not context.is_active())
        try:
            image, info = describe.decode(checked, cfg)
        finally:
            self.admission.release(decoding)
        lm = self.engine.ensure_loaded(entry)
        job, images, note = describe.describe_job(request, checked, image, info, entry, lm, cfg)
        yield from self._run(job, entry, context, images, note)

    # ------------------------------------------------------------ models and memory
    # The control plane: nothing here waits for a generation step unless it must load or
    # unload, so it answers while every stream is busy.

    def ListModels(self, request: pb.ListModelsRequest, context: grpc.ServicerContext
                   ) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=self._infos(list(self.catalog.models.values())))

    def LoadModel(self, request: pb.LoadModelRequest, context: grpc.ServicerContext
                  ) -> pb.ModelStatus:
        validate.check_model_name(request.name)
        entry = self.catalog.get(request.name, "coder")
        lm = self.engine.loaded.get(entry.name)
        evicted: list[str] = []
        if lm is None:
            lm, evicted = self.engine.load(entry)
        return pb.ModelStatus(
            model=self._infos([entry])[0], evicted=evicted,
            message=(f"loaded {entry.name}: weights {gib(lm.measured_bytes)} measured, "
                     f"{gib(lm.estimated_bytes)} estimated with overhead"),
        )

    def UnloadModel(self, request: pb.UnloadModelRequest, context: grpc.ServicerContext
                    ) -> pb.ModelStatus:
        validate.check_model_name(request.name)
        entry = self.catalog.get(request.name, "coder")
        if entry.name not in self.engine.loaded:
            return pb.ModelStatus(model=self._infos([entry])[0],
                                  message=f"{entry.name} was not loaded")
        busy = self.admission.in_flight(entry.name)
        if busy:
            raise ModelBusy(f"{entry.name} has {busy} requests in flight; unload it when they "
                            "finish", model=entry.name, in_flight=busy)
        was = self.engine.unload(entry.name)
        msg = f"unloaded {entry.name}" if was else f"{entry.name} was not loaded"
        return pb.ModelStatus(model=self._infos([entry])[0], message=msg)

    def GetMemory(self, request: pb.GetMemoryRequest, context: grpc.ServicerContext
                  ) -> pb.MemoryStatus:
        snap = self.admission.snapshot()
        rows = [pb.ModelMemory(**{k: v for k, v in row.items() if k in _ROW_FIELDS})
                for row in snap.get("models", [])]
        hosts = [pb.HostMemory(**{k: v for k, v in h.items() if k in _HOST_FIELDS})
                 for h in snap.get("hosts", [])]  # one per rank of a distributed group
        fields = {k: v for k, v in snap.items()
                  if k not in ("models", "hosts") and k in _MEMORY_FIELDS}
        return pb.MemoryStatus(models=rows, hosts=hosts, open_streams=self.streams.open,
                               stream_limit=self.streams.limit, **fields)

    def _footprint(self, entry: CatalogModel) -> Footprint:
        fp = self._footprints.get(entry.name)
        if fp is None:  # the headers are read once, not on every status poll
            fp = self._footprints[entry.name] = self.engine.footprint(entry)
        return fp

    def _infos(self, entries: list[CatalogModel]) -> list[pb.ModelInfo]:
        rows = {r["name"]: r for r in self.admission.snapshot().get("models", [])}
        out = []
        for entry in entries:
            lm = self.engine.loaded.get(entry.name)
            row = rows.get(entry.name, {})
            fp = self._footprint(entry)
            out.append(pb.ModelInfo(
                name=entry.name, role=entry.role,
                state=pb.ModelInfo.LOADED if lm else pb.ModelInfo.UNLOADED,
                # one truth with GetMemory: the row's figure (measured at load) once there is one
                weights_bytes=row.get("weights_bytes") or fp.weights_bytes,
                overhead_bytes=row.get("overhead_bytes") or fp.overhead_bytes,
                resident_bytes=row.get("resident_bytes", 0),
                kv_bytes_per_token=fp.kv_per_token, context_length=entry.context,
                last_used_unix=row.get("last_used_unix", 0.0), pinned=entry.pinned,
                in_flight=row.get("in_flight", 0),
                estimated_bytes=fp.resident_bytes,
                measured_bytes=lm.measured_bytes if lm else 0, source=entry.source,
            ))
        return out


_MEMORY_FIELDS = {f.name for f in pb.MemoryStatus.DESCRIPTOR.fields}
_ROW_FIELDS = {f.name for f in pb.ModelMemory.DESCRIPTOR.fields}
_HOST_FIELDS = {f.name for f in pb.HostMemory.DESCRIPTOR.fields}
