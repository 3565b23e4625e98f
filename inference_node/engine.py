"""The one thread that owns MLX: loads, unloads and generation, requests in and events out.

Shaped like mlx-lm's server: request handlers (gRPC threads) validate, tokenize and reserve
memory, then put a `Job` on the engine's inbox and read `pb.ChatEvent`s from the job's queue.
Coder models generate through mlx-lm's `BatchGenerator` (continuous batching: requests join and
leave a running batch between steps); vision models through mlx-vlm, stepped one token per loop
turn so they interleave with the batch. A cancelled job leaves its batch before the next step;
a step that fails fails its own request, and the batch is rebuilt for the rest (isolation.py).
"""

from __future__ import annotations

import gc
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx

from inference_node import vision
from inference_node.admission import kv_tokens
from inference_node.chat import TextRouter, done_event
from inference_node.config import InferenceConfig
from inference_node.errors import Cancelled, InferenceError, LoadFailed, ModelBusy, ModelUnloaded
from inference_node.isolation import StepFailed, generation_failed, guarded, reset_random_state
from inference_node.models import CatalogModel

log = logging.getLogger("inference_node.engine")


@dataclass
class LoadedModel:
    entry: CatalogModel
    model: Any
    tokenizer: Any  # mlx-lm TokenizerWrapper (coder) or the processor's tokenizer (vision)
    processor: Any = None  # vision models: the mlx-vlm processor
    batch: Any = None  # coder models: mlx-lm BatchGenerator
    estimated_bytes: int = 0
    measured_bytes: int = 0
    kv_per_token: int = 0
    kv_fixed_bytes: int = 0  # per request: sliding windows, linear-attention state
    active: dict[int, Job] = field(default_factory=dict)  # batch uid -> job
    # Jobs whose padding into the running batch does not fit yet, in arrival order.
    waiting: deque[Job] = field(default_factory=deque)

    @property
    def name(self) -> str:
        return self.entry.name


@dataclass
class Job:
    """One request in flight: what to generate, and where its events go."""

    request_id: str
    model: str
    prompt: list[int]
    max_tokens: int
    router: TextRouter
    sampler: Any = None
    logits_processors: list[Any] = field(default_factory=list)
    stop_sequences: Any = None
    vision_inputs: dict[str, Any] | None = None  # vision jobs: prompt text, image, processor
    events: queue.Queue = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    queue_seconds: float = 0.0
    t_start: float = 0.0
    t_first: float = 0.0
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens whose KV came from the prompt cache
    detokenizer: Any = None
    stream: Any = None  # vision jobs: the mlx-vlm generator
    reservation: Any = None  # the admission Reservation this job holds (grown for padding)
    padding_bytes: int = 0  # what joining the running batch adds beyond the reservations
    seed: int | None = None  # seeds MLX's random state when the job joins the batch
    generated: list[int] = field(default_factory=list)  # tokens emitted so far
    # Fresh logits processors resuming after `generated` (a grammar's matcher has state), for
    # when the batch is rebuilt after another request's step failed; None: reuse them.
    rebuild_processors: Callable[[], list[Any]] | None = None


DONE = object()  # sentinel closing a job's event queue


def batch_peak_tokens(seqs: list[tuple[int, int]]) -> int:
    """The most KV token-slots a batch holds at once; `seqs`: (length now, tokens to come).

    Every live sequence is stored at the longest live one's length, in whole cache steps, and
    a finished one leaves (BatchKVCache.filter trims the padding it no longer needs). So the
    peak falls just before one of them finishes, or now.
    """
    peak = 0
    for t in sorted({0, *(r for _, r in seqs)}):
        alive = [length for length, r in seqs if r >= t]
        if alive:
            peak = max(peak, len(alive) * kv_tokens(max(alive) + t))
    return peak


class Engine:
    def __init__(self, cfg: InferenceConfig, admission: Any) -> None:
        self.cfg = cfg
        self.admission = admission
        self.loaded: dict[str, LoadedModel] = {}
        self._inbox: queue.Queue[Callable[[], None]] = queue.Queue()
        self._vision_jobs: list[Job] = []
        # KV of finished requests, reused by the next request sharing their prefix (an agent's
        # next turn repeats the whole conversation). Its cap is set aside from the budget.
        self.prompt_cache: Any = None
        self.prompt_cache_bytes = int(cfg.engine.prompt_cache_mb * 1024 * 1024)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mlx-engine", daemon=True)
        self.dequantize = cfg.engine.dequantize_on_cpu and not mx.metal.is_available()

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    # ------------------------------------------------------------ called from other threads

    def call(self, fn: Callable[[], Any], timeout: float | None = None) -> Any:
        """Run `fn` on the engine thread and return its result (or raise its error)."""
        future: Future = Future()

        def task() -> None:
            try:
                future.set_result(fn())
            except BaseException as e:  # noqa: BLE001 - handed back to the caller
                future.set_exception(e)

        self._inbox.put(task)
        return future.result(timeout=timeout)

    def ensure_loaded(self, entry: CatalogModel) -> LoadedModel:
        lm = self.loaded.get(entry.name)
        if lm is not None:
            return lm
        return self.call(lambda: self._load(entry))

    def load(self, entry: CatalogModel) -> tuple[LoadedModel, list[str]]:
        return self.call(lambda: self._load_reporting(entry))

    def unload(self, name: str) -> bool:
        return self.call(lambda: self._unload(name))

    def submit(self, job: Job) -> None:
        self._inbox.put(lambda: self._start_job(job))

    # ------------------------------------------------------------ the engine thread

    def _new_prompt_cache(self) -> Any:  # a seam: distributed/ mirrors it to every rank
        from mlx_lm.models.cache import LRUPromptCache
        return LRUPromptCache(max_size=64, max_bytes=self.prompt_cache_bytes)

    def _run(self) -> None:
        self.prompt_cache = self._new_prompt_cache()
        while not self._stop.is_set():
            busy = self._vision_jobs or any(lm.active or lm.waiting
                                            for lm in self.loaded.values())
            try:
                task = self._inbox.get(timeout=0.05) if not busy else self._inbox.get_nowait()
            except queue.Empty:
                task = None
            while task is not None:
                task()
                try:
                    task = self._inbox.get_nowait()
                except queue.Empty:
                    task = None
            for lm in list(self.loaded.values()):
                try:
                    if lm.waiting:
                        self._start_waiting(lm)
                    if lm.active:
                        self._step_batch(lm)
                except Exception as e:  # a failed step fails its own request, or its batch
                    self._recover(lm, e)
            try:
                if self._vision_jobs:
                    self._step_vision()
            except Exception as e:  # a failed step must not wedge the server
                log.exception("describe step failed")
                reset_random_state()
                self._fail_all(InferenceError(f"describing failed: {e}"))

    def _load_reporting(self, entry: CatalogModel) -> tuple[LoadedModel, list[str]]:
        """Admit, evict what admission names, load, then correct the estimate by measurement."""
        if entry.name in self.loaded:
            return self.loaded[entry.name], []
        fp = self.footprint(entry)
        estimated = fp.resident_bytes
        victims = list(self.admission.admit_load(entry.name, estimated, pinned=entry.pinned))
        for v in victims:
            log.info("evicting %s to make room for %s", v, entry.name)
            self._unload(v)
        mx.synchronize()
        before = mx.get_active_memory()
        t0 = time.perf_counter()
        try:
            lm = self._load_vision(entry) if entry.is_vision else self._load_coder(entry)
        except InferenceError:
            self.admission.load_failed(entry.name)
            raise
        except Exception as e:
            self.admission.load_failed(entry.name)
            raise LoadFailed(f"could not load {entry.name} from {entry.path}: {e}",
                             model=entry.name) from e
        mx.synchronize()
        lm.measured_bytes = max(0, mx.get_active_memory() - before)
        lm.estimated_bytes = estimated
        lm.kv_per_token = fp.kv_per_token
        lm.kv_fixed_bytes = fp.kv_fixed_bytes
        self.admission.loaded(entry.name, estimated, lm.measured_bytes)
        self.loaded[entry.name] = lm
        log.info(
            "loaded %s in %.1fs: estimated %.1f MiB (weights + overhead), measured %.1f MiB",
            entry.name, time.perf_counter() - t0, estimated / 2**20, lm.measured_bytes / 2**20,
        )
        return lm, victims

    def footprint(self, entry: CatalogModel) -> Any:
        from inference_node.footprint import estimate

        return estimate(entry.path, int(self.cfg.memory.overhead_mb * 1024 * 1024),
                        prefill_step=self.cfg.engine.prefill_step_size,
                        dequantize=self.dequantize and not entry.is_vision)

    def _load(self, entry: CatalogModel) -> LoadedModel:
        return self._load_reporting(entry)[0]

    def _load_coder(self, entry: CatalogModel) -> LoadedModel:
        from mlx_lm import load

        loaded = load(str(entry.path))
        model, tokenizer = loaded[0], loaded[1]
        if self.dequantize and entry.config.get("quantization"):
            from mlx_lm.utils import dequantize_model

            model = dequantize_model(model)
        mx.eval(model.parameters())
        return LoadedModel(entry=entry, model=model, tokenizer=tokenizer,
                           batch=self._new_batch(model))

    def _new_batch(self, model: Any) -> Any:
        from mlx_lm.generate import BatchGenerator

        batch = BatchGenerator(
            model,
            completion_batch_size=self.cfg.engine.max_concurrent,
            prefill_batch_size=self.cfg.engine.max_concurrent,
            prefill_step_size=self.cfg.engine.prefill_step_size,
        )
        # BatchGenerator raises the wired limit to the recommended working set on Metal;
        # ours is an explicit option (memory.wired_limit_mb), so put the old one back.
        batch.close()
        return batch

    def _load_vision(self, entry: CatalogModel) -> LoadedModel:
        model, processor, tokenizer = vision.load(str(entry.path))
        return LoadedModel(entry=entry, model=model, tokenizer=tokenizer, processor=processor)

    def _unload(self, name: str) -> bool:
        lm = self.loaded.get(name)
        if lm is None:
            return False
        busy = len(lm.active) + len(lm.waiting)
        busy += sum(1 for j in self._vision_jobs if j.model == name)
        if busy:
            raise ModelBusy(f"{name} has {busy} requests in flight; unload it when they finish",
                            model=name, in_flight=busy)
        del self.loaded[name]
        if self.prompt_cache is not None:
            self.prompt_cache.trim_to(n_sequences=0)  # entries are per model; start clean
        del lm
        gc.collect()
        mx.clear_cache()  # memory freed is memory returned
        self.admission.unloaded(name)
        log.info("unloaded %s", name)
        return True

    def _start_job(self, job: Job) -> None:
        lm = self.loaded.get(job.model)
        if lm is None:
            self._finish(job, ModelUnloaded(f"{job.model} was unloaded before the request "
                                            "ran; retry it", model=job.model))
            return
        if job.cancelled.is_set():
            self._finish(job, Cancelled("the client went away"))
            return
        job.t_start = time.perf_counter()
        job.detokenizer = lm.tokenizer.detokenizer if lm.batch is not None else None
        if job.vision_inputs is not None:
            vision.start(lm, job)
            self._vision_jobs.append(job)
            return
        if lm.waiting:
            log.info("%s: request %s waits behind %d others to join the batch", lm.name,
                     job.request_id, len(lm.waiting))
            lm.waiting.append(job)
            return
        if not self._fits_in_batch(lm, job):
            log.info("%s: request %s waits to join the batch of %d: padded to the longest "
                     "sequence it needs %.1f MiB more than it reserved", lm.name,
                     job.request_id, len(lm.active), job.padding_bytes / 2**20)
            lm.waiting.append(job)
            return
        self._insert(lm, job)

    def _fits_in_batch(self, lm: LoadedModel, job: Job) -> bool:
        """Grow `job`'s reservation by what joining the running batch adds; False: not now.

        mlx-lm stores every sequence of a batch at the longest one's length, left-padded (see
        BatchKVCache), so a short request beside a long one holds as much KV as the long one
        while both run. Reservations count each request alone; the difference is asked for
        here, before the join. A request that does not fit waits for the batch to shrink; an
        empty batch always takes it, as its own reservation covers it.
        """
        if not lm.active or job.reservation is None:
            return True
        jobs = [*lm.active.values(), job]
        seqs = [(len(j.prompt) + j.completion_tokens, j.max_tokens - j.completion_tokens)
                for j in jobs]
        peak = batch_peak_tokens(seqs) * lm.kv_per_token + len(jobs) * lm.kv_fixed_bytes
        held = sum(j.reservation.bytes for j in jobs if j.reservation is not None)
        job.padding_bytes = peak - held
        return bool(self.admission.try_grow(job.reservation, peak - held))

    def _start_waiting(self, lm: LoadedModel) -> None:
        """Start waiting jobs, oldest first, while they fit; drop those whose client left."""
        while lm.waiting:
            job = lm.waiting[0]
            if job.cancelled.is_set():
                lm.waiting.popleft()
                self._finish(job, Cancelled("the client went away"))
                continue
            if not self._fits_in_batch(lm, job):
                return
            lm.waiting.popleft()
            self._insert(lm, job)

    def _insert(self, lm: LoadedModel, job: Job) -> None:
        """Add `job` to the batch: its prompt, or after a rebuild its prompt + what it emitted.

        Its sampler and processors go in wrapped (`guarded`), so a step they fail names it.
        """
        from mlx_lm.sample_utils import greedy_sampler

        resumed = bool(job.generated)
        tokens = job.prompt + job.generated
        cache, rest = self._cached_prefix(job.model, tokens)
        if not resumed:
            job.cached_tokens = len(tokens) - len(rest)
            if job.seed is not None:
                mx.random.seed(job.seed)
        processors = job.logits_processors
        if resumed and job.rebuild_processors is not None:
            processors = job.logits_processors = job.rebuild_processors()
        sampler = job.sampler
        if sampler is not None and sampler is not greedy_sampler:  # argmax cannot fail
            sampler = guarded(job, sampler)
        try:
            (uid,) = lm.batch.insert(
                [rest],
                max_tokens=[job.max_tokens - job.completion_tokens],
                caches=[cache] if cache is not None else None,
                all_tokens=[tokens[: len(tokens) - len(rest)]],
                samplers=[sampler],
                logits_processors=[[guarded(job, p) for p in processors]],
                stop_sequences=[job.stop_sequences],
            )
        except Exception as e:  # refused before it touched the batch: this job alone
            log.exception("could not add request %s to %s's batch", job.request_id, lm.name)
            self._finish(job, generation_failed(job, e, alone=True))
            return
        lm.active[uid] = job

    def _cached_prefix(self, model: str, tokens: list[int]) -> tuple[Any, list[int]]:
        """A copy of the longest cached KV prefix of `tokens`, and the tokens still to run."""
        from mlx_lm.models.cache import can_trim_prompt_cache, trim_prompt_cache

        if self.prompt_cache_bytes <= 0:
            return None, tokens
        cache, rest = self.prompt_cache.fetch_nearest_cache(model, tokens)
        if cache is not None and not rest:  # the whole prompt is cached: rerun its last token
            if not can_trim_prompt_cache(cache):
                return None, tokens
            trim_prompt_cache(cache, 1)
            rest = tokens[-1:]
        return cache, rest if cache is not None else tokens

    def _recover(self, lm: LoadedModel, error: Exception) -> None:
        """After a failed step: fail the request that caused it (every request of the batch
        when no single one did), rebuild MLX's random state and the batch, and put the other
        requests back in it, each resuming from the tokens it already emitted."""
        culprit = error.job if isinstance(error, StepFailed) else None
        cause = error.error if isinstance(error, StepFailed) else error
        log.error("%s: a generation step failed (%s: %s); %s", lm.name, type(cause).__name__,
                  cause, f"failing request {culprit.request_id}" if culprit is not None
                  else f"failing the {len(lm.active)} requests of the batch",
                  exc_info=culprit is None)
        jobs = list(lm.active.values())
        lm.active.clear()
        reset_random_state()
        lm.batch = self._new_batch(lm.model)
        for job in jobs:
            if culprit is None or job is culprit:
                self._finish(job, generation_failed(job, cause, alone=culprit is not None))
            elif job.cancelled.is_set():
                self._finish(job, Cancelled("the client went away"))
            else:
                self._insert(lm, job)

    def _step_batch(self, lm: LoadedModel) -> None:
        gone = [uid for uid, job in lm.active.items() if job.cancelled.is_set()]
        if gone:
            lm.batch.remove(gone)
            for uid in gone:
                self._finish(lm.active.pop(uid), Cancelled("the client went away"))
            if not lm.active:
                return
        _, responses = lm.batch.next()
        now = time.perf_counter()
        for r in responses:
            job = lm.active.get(r.uid)
            if job is None:
                continue
            if not job.t_first:
                job.t_first = now
            job.completion_tokens += 1
            job.generated.append(r.token)
            detok = job.detokenizer
            if r.finish_reason != "stop":
                detok.add_token(r.token)
            if r.finish_reason is not None:
                detok.finalize()
            for event in job.router.feed(detok.last_segment, r.finish_reason):
                job.events.put(event)
            if r.finish_reason is not None:
                del lm.active[r.uid]
                if self.prompt_cache_bytes > 0 and r.prompt_cache is not None:
                    self.prompt_cache.insert_cache(job.model, list(r.all_tokens), r.prompt_cache)
                self._finish(job, None, r.finish_reason)

    def _step_vision(self) -> None:
        for job in list(self._vision_jobs):
            if job.cancelled.is_set():
                self._vision_jobs.remove(job)
                job.stream.close()
                self._finish(job, Cancelled("the client went away"))
                continue
            try:
                finish = vision.step(job)
            except Exception as e:  # one bad image must not fail the other requests
                log.exception("describing failed for %s", job.request_id)
                self._vision_jobs.remove(job)
                reset_random_state()  # mlx-vlm's samplers are compiled with it too
                self._finish(job, generation_failed(job, e, alone=True))
                continue
            if finish is not None:
                self._vision_jobs.remove(job)
                self._finish(job, None, finish)

    def _finish(self, job: Job, error: Exception | None, finish_reason: str = "stop") -> None:
        if error is not None:
            job.events.put(error)
            job.events.put(DONE)
            return
        done = done_event(job, finish_reason)
        job.events.put(done)
        job.events.put(DONE)

    def _fail_all(self, error: Exception) -> None:
        for lm in self.loaded.values():
            if lm.active:
                lm.batch.remove(list(lm.active))
                for job in lm.active.values():
                    self._finish(job, error)
                lm.active.clear()
            while lm.waiting:
                self._finish(lm.waiting.popleft(), error)
        for job in self._vision_jobs:
            self._finish(job, error)
        self._vision_jobs.clear()
