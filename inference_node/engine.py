"""The one thread that owns MLX: loads, unloads and generation, requests in and events out.

Shaped like mlx-lm's server: request handlers (gRPC threads) validate, tokenize and reserve
memory, then put a `Job` on the engine's inbox and read `pb.ChatEvent`s from the job's queue.
Coder models generate through mlx-lm's `BatchGenerator` (continuous batching: requests join and
leave a running batch between steps; batching.py); vision models through mlx-vlm, stepped one
token per loop turn so they interleave with the batch. A coder model configured with a draft
model decodes a request speculatively while it is the only one running, and batches again as
soon as another joins (speculative.py). A cancelled job leaves before the next step; a step
that fails fails its own request, and the batch is rebuilt for the rest (isolation.py).
Loads and unloads run on this thread too (loading.py).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import mlx.core as mx

from inference_node import batching, cpu_attention, fused, loading, mlx_compat, speculative, vision
from inference_node.config import InferenceConfig
from inference_node.errors import Cancelled, InferenceError, ModelUnloaded
from inference_node.footprint import Footprint
from inference_node.isolation import StepFailed, generation_failed, reset_random_state
from inference_node.jobs import DONE, Job, Ledger, LoadedModel
from inference_node.models import CatalogModel
from inference_node.prompt_cache import PromptCache

__all__ = ["DONE", "Engine", "Job", "LoadedModel", "batch_peak_tokens"]
batch_peak_tokens = batching.batch_peak_tokens
log = logging.getLogger("inference_node.engine")


GATHER_POLL_S = 0.005
# A request that starts an idle batch holds its prefill for up to this share of the time the
# prefill is expected to take, for requests sent with it that are not read yet: the first of
# a burst would otherwise prefill alone while the rest queue behind that step.
HOLD_SHARE = 0.025
# Before any prefill was measured, it holds this long: a burst that reaches an idle node first
# thing (two agents starting at once) would otherwise prefill its first request alone.
UNMEASURED_HOLD_S = 0.01
MIN_MEASURED = 16  # prompt tokens computed, below which a prefill's time says little of its rate


class Arrival:
    """A request counted as arriving (Engine.arrival) until `done()`, which may come twice."""

    def __init__(self, engine: Engine) -> None:
        self._engine: Engine | None = engine

    def done(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            engine._arrived()


class Engine:
    # Pinned prefixes live outside the LRU; ranks that mirror rank 0's LRU have no such store
    # (distributed/sharded_engine.py turns this off).
    pins_prefixes = True

    def __init__(self, cfg: InferenceConfig, admission: Ledger,
                 drafts: Callable[[str], CatalogModel | None] | None = None) -> None:
        self.cfg = cfg
        self.admission = admission
        self.drafts = drafts or (lambda name: None)  # a model's draft, from the catalog
        self.loaded: dict[str, LoadedModel] = {}
        self._inbox: queue.Queue[Callable[[], None]] = queue.Queue()
        self._vision_jobs: list[Job] = []
        # KV of finished requests, reused by the next request sharing their prefix (an agent's
        # next turn repeats the whole conversation). Its cap is set aside from the budget.
        self.prompt_cache_bytes = int(cfg.engine.prompt_cache_mb * 1024 * 1024)
        self.prompt_cache: PromptCache = self._prompt_cache()
        self._stop = threading.Event()
        self._arriving = 0  # requests read but not yet submitted (arrival())
        self._hold_until = 0.0  # a step waits until then for more requests (hold_for)
        # Seconds per computed prompt token of the last request that prefilled alone
        self.prefill_s_per_token: float | None = None
        self._arriving_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="mlx-engine", daemon=True)
        self.dequantize = cfg.engine.dequantize_on_cpu and not mx.metal.is_available()
        if cfg.engine.numpy_attention_on_cpu:
            cpu_attention.install()

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    @property
    def stopped(self) -> bool:
        """Its thread has ended: a request still in it gets no more events."""
        return self._stop.is_set() and not self._thread.is_alive()

    # ------------------------------------------------------------ called from other threads

    def call(self, fn: Callable[[], Any], timeout: float | None = None) -> Any:
        """Run `fn` on the engine thread and return its result (or raise its error)."""
        return self._post(fn).result(timeout=timeout)

    def _post(self, fn: Callable[[], Any]) -> Future:
        """Queue `fn` for the engine thread; its result or error arrives in the future."""
        future: Future = Future()

        def task() -> None:
            try:
                future.set_result(fn())
            except BaseException as e:  # noqa: BLE001 - handed back to the caller
                future.set_exception(e)

        self._inbox.put(task)
        return future

    def ensure_loaded(self, entry: CatalogModel) -> LoadedModel:
        lm = self.loaded.get(entry.name)
        if lm is not None:
            return lm
        return self.call(lambda: self._load(entry))  # type: ignore[no-any-return]

    def load(self, entry: CatalogModel) -> tuple[LoadedModel, list[str]]:
        return self.call(lambda: loading.load(self, entry))  # type: ignore[no-any-return]

    def unload(self, name: str) -> bool:
        return bool(self.call(lambda: self._unload(name)))

    def submit(self, job: Job) -> None:
        self._inbox.put(lambda: self._start_job(job))

    def arrival(self) -> Arrival:
        """Count a request from the moment it is read until it is submitted (`Arrival.done`):
        while any is counted, a step about to start a new request's prefill waits for it."""
        with self._arriving_lock:
            self._arriving += 1
        return Arrival(self)

    def arriving(self) -> bool:
        """Whether a request is being read that has not been submitted yet."""
        return self._arriving > 0

    def _arrived(self) -> None:
        with self._arriving_lock:
            self._arriving -= 1

    # ------------------------------------------------------------ the engine thread

    def _new_prompt_cache(self) -> Any:  # a seam: distributed/ mirrors it to every rank
        pinned = self._pinned_bytes()
        return mlx_compat.lru_prompt_cache(64, max(0, self.prompt_cache_bytes - pinned))

    def _pinned_bytes(self) -> int:
        if not self.pins_prefixes or self.prompt_cache_bytes <= 0:
            return 0
        return min(self.prompt_cache_bytes // 2, int(self.cfg.engine.pinned_prefix_mb * 2**20))

    def _prompt_cache(self) -> PromptCache:
        def decode(model: str, tokens: list[int]) -> str:
            lm = self.loaded.get(model)
            return str(lm.tokenizer.decode(tokens)) if lm is not None else ""

        def think(model: str) -> tuple[int, int] | None:
            lm = self.loaded.get(model)
            tok = lm.tokenizer if lm is not None else None
            if tok is None or not getattr(tok, "has_thinking", False):
                return None
            starts, ends = list(tok.think_start_tokens or ()), list(tok.think_end_tokens or ())
            return (starts[0], ends[0]) if len(starts) == 1 and len(ends) == 1 else None

        return PromptCache(self._new_prompt_cache(), self.prompt_cache_bytes,
                           self._pinned_bytes(), decode, think)

    def _run(self) -> None:
        while not self._stop.is_set():
            busy = self._vision_jobs or any(lm.busy for lm in self.loaded.values())
            try:
                task = self._inbox.get(timeout=0.05) if not busy else self._inbox.get_nowait()
            except queue.Empty:
                task = None
            if task is not None:
                self._drain(task)
                self._gather()
            for lm in list(self.loaded.values()):
                try:
                    if lm.waiting:
                        self._start_waiting(lm)
                    if lm.spec is not None:
                        speculative.step_alone(self, lm)
                    if lm.active:
                        self._step_batch(lm)
                        speculative.from_batch(self, lm)  # left alone: the lookup again
                except Exception as e:  # a failed step fails its own request, or its batch
                    self._recover(lm, e)
            try:
                if self._vision_jobs:
                    self._step_vision()
            except Exception as e:  # a failed step must not wedge the server
                log.exception("describe step failed")
                reset_random_state()
                self._fail_all(InferenceError(f"describing failed: {e}"))

    def _drain(self, task: Callable[[], None] | None) -> None:
        while task is not None:
            task()
            try:
                task = self._inbox.get_nowait()
            except queue.Empty:
                task = None

    def _gather(self) -> None:
        """After starting requests: while others are still arriving (read, not yet submitted),
        take them too, up to engine.gather_ms, so one prefill step serves them all; and while
        a request that started an idle batch holds it (`hold_for`), take those that come."""
        deadline = time.monotonic() + self.cfg.engine.gather_ms / 1000
        while True:
            now = time.monotonic()
            until = max(self._hold_until, deadline if self._arriving > 0 else 0.0)
            if now >= until:
                return
            try:  # short waits: an arrival refused before it is submitted posts nothing
                self._drain(self._inbox.get(timeout=min(until - now, GATHER_POLL_S)))
            except queue.Empty:
                pass

    def hold_for(self, job: Job) -> float:
        """How long `job`, starting an idle batch, waits for requests sent with it: HOLD_SHARE
        of its expected prefill (the last lone prefill's rate), UNMEASURED_HOLD_S before any
        prefill was measured; at most engine.gather_ms."""
        rate = self.prefill_s_per_token
        hold = UNMEASURED_HOLD_S if rate is None else HOLD_SHARE * rate * job.computed_tokens
        return min(self.cfg.engine.gather_ms / 1000, hold)

    # ------------------------------------------------------------ loading: seams (loading.py)

    def footprint(self, entry: CatalogModel) -> Footprint:
        from inference_node.footprint import estimate

        return estimate(entry.path, int(self.cfg.memory.overhead_mb * 1024 * 1024),
                        prefill_step=self.cfg.engine.prefill_step_size,
                        dequantize=self.dequantize and not entry.is_vision)

    def _load(self, entry: CatalogModel) -> LoadedModel:
        return loading.load(self, entry)[0]

    def _load_coder(self, entry: CatalogModel) -> LoadedModel:
        dequantize = self.dequantize and bool(entry.config.get("quantization"))
        model, tokenizer = mlx_compat.load(entry.path, dequantize=dequantize)
        if self.cfg.engine.fuse_projections:
            fused.fuse_projections(model)
        return LoadedModel(entry=entry, model=model, tokenizer=tokenizer,
                           batch=self._new_batch(model))

    def _new_batch(self, model: Any) -> mlx_compat.Batch:
        e = self.cfg.engine
        return mlx_compat.Batch.new(model, completion_batch_size=e.max_concurrent,
                                    prefill_batch_size=e.max_concurrent,
                                    prefill_step_size=e.prefill_step_size)

    def _unload(self, name: str) -> bool:  # a seam: distributed/ unloads every rank's part
        return loading.unload(self, name)

    # ------------------------------------------------------------ jobs

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
        if lm.spec is not None:  # a second stream: both decode in the batch from now on
            speculative.hand_to_batch(self, lm)
        if lm.waiting:
            log.info("%s: request %s waits behind %d others to join the batch", lm.name,
                     job.request_id, len(lm.waiting))
            lm.waiting.append(job)
            return
        if not lm.active and speculative.begin(self, lm, job):
            self._starts_idle(job)
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
        An empty batch always takes it, as its own reservation covers it."""
        if not lm.active or job.reservation is None:
            return True
        job.padding_bytes = batching.padding_needed(lm, job)
        return bool(self.admission.try_grow(job.reservation, job.padding_bytes))

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
        if not job.generated and job.seed is not None:
            mx.random.seed(job.seed)
        try:
            uid = batching.insert(lm, self.prompt_cache, job)
        except Exception as e:  # refused before it touched the batch: this job alone
            log.exception("could not add request %s to %s's batch", job.request_id, lm.name)
            self._finish(job, generation_failed(job, e, alone=True))
            return
        idle = not lm.active
        for other in lm.active.values():
            other.alone = False  # its first token now waits for this one's prefill too
        lm.active[uid] = job
        if idle and not job.generated:
            self._starts_idle(job)

    def _starts_idle(self, job: Job) -> None:
        """`job` starts an idle model, in its batch or speculatively: it holds for requests
        sent with it (`hold_for`), and its first token, if it is still alone, measures the
        prefill rate."""
        job.alone = True
        self._hold_until = time.monotonic() + self.hold_for(job)

    def measure_prefill(self, job: Job, now: float) -> None:
        """A lone request's first token: the prefill rate that `hold_for` expects."""
        if job.alone and job.computed_tokens >= MIN_MEASURED:
            self.prefill_s_per_token = (now - job.t_start) / job.computed_tokens

    def _recover(self, lm: LoadedModel, error: Exception) -> None:
        """After a failed step: fail the request that caused it (every request of the batch
        when no single one did), rebuild MLX's random state and the batch, and put the other
        requests back in it, each resuming from the tokens it already emitted."""
        if lm.spec is not None and (not isinstance(error, StepFailed)
                                    or error.job is lm.spec.job):
            job = lm.spec.job
            lm.spec = None  # it ran alone: only it fails
            cause = error.error if isinstance(error, StepFailed) else error
            log.error("%s: a speculative step failed (%s: %s); failing request %s", lm.name,
                      type(cause).__name__, cause, job.request_id, exc_info=True)
            reset_random_state()
            self._finish(job, generation_failed(job, cause, alone=True))
            return
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
        assert lm.batch is not None
        gone = [uid for uid, job in lm.active.items() if job.cancelled.is_set()]
        if gone:
            lm.batch.remove(gone)
            for uid in gone:
                self._finish(lm.active.pop(uid), Cancelled("the client went away"))
            if not lm.active:
                return
        prefilled, emitted = lm.batch.step()
        for p in prefilled:
            if p.end_of_segment and not p.end_of_prompt:
                batching.pin_reached(lm, self.prompt_cache, p.uid)
        now = time.perf_counter()
        for r in emitted:
            job = lm.active.get(r.uid)
            if job is None:
                continue
            if not job.t_first:
                job.t_first = now
                self.measure_prefill(job, now)
            batching.emit(job, r.token, r.finish_reason)
            if r.finish_reason is not None:
                del lm.active[r.uid]
                if r.cache is not None and r.tokens is not None:
                    self.prompt_cache.insert(job.model, r.tokens, r.cache, len(job.prompt))
                self._finish(job, None, r.finish_reason)

    # ------------------------------------------------------------ vision and endings

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
        from inference_node.chat import done_event

        job.events.put(error if error is not None else done_event(job, finish_reason))
        job.events.put(DONE)

    def _fail_all(self, error: Exception) -> None:
        for lm in self.loaded.values():
            if lm.spec is not None:
                self._finish(lm.spec.job, error)
                lm.spec = None
            if lm.active and lm.batch is not None:
                lm.batch.remove(list(lm.active))
                for job in lm.active.values():
                    self._finish(job, error)
                lm.active.clear()
            while lm.waiting:
                self._finish(lm.waiting.popleft(), error)
        for job in self._vision_jobs:
            self._finish(job, error)
        self._vision_jobs.clear()

