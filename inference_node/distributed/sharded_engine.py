"""The engine on rank 0 of a group: the same engine, with each coder model split across ranks.

`DistributedEngine` changes only what must differ from one process:

- `footprint`: the model's plan (weights and KV per rank, from the headers) is registered with
  the per-host admission, and the totals are returned;
- `_load_coder`: every rank loads its part (rank 0 sends the plan), and the batch is wrapped
  so its inserts, removals and steps reach every rank (mirror.py);
- `_new_prompt_cache`: the prompt cache is mirrored the same way; its pinned prefixes are off
  (`pins_prefixes`): they live outside the LRU the other ranks mirror;
- `_unload`: every rank drops its part;
- `call` and `submit`: once the group has failed, they answer UNAVAILABLE at once instead of
  waiting on an engine thread that may be stuck in a collective; and every stream in flight is
  failed with UNAVAILABLE naming the host.

Vision models (mlx-vlm has no sharding) are served by rank 0 alone, as on one host.
Speculative decoding (a model's `draft`) is refused by config.validate for a distributed group:
the other ranks would have to run the draft's steps in lockstep.
"""

from __future__ import annotations

import logging
import time
import weakref
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import mlx.core as mx

from inference_node.config import InferenceConfig
from inference_node.distributed.leader import Leader
from inference_node.distributed.mirror import MirroredBatch, MirroredPromptCache
from inference_node.distributed.ranked import RankedAdmission
from inference_node.distributed.sharding import (
    ShardPlan,
    config_digest,
    load_shard,
    plan_model,
    rank0_plan,
)
from inference_node.engine import Engine
from inference_node.errors import InferenceError, LoadFailed, Unavailable
from inference_node.footprint import Footprint
from inference_node.jobs import DONE, Job, LoadedModel
from inference_node.mlx_compat import Batch, load_tokenizer
from inference_node.models import CatalogModel

log = logging.getLogger("inference_node.distributed.engine")
POLL_S = 0.2


class DistributedEngine(Engine):
    pins_prefixes = False  # the other ranks mirror the LRU only

    def __init__(self, cfg: InferenceConfig, admission: RankedAdmission, leader: Leader) -> None:
        self.leader = leader  # before Engine's __init__ makes the (mirrored) prompt cache
        super().__init__(cfg, admission)
        self.ranked = admission
        self._plans: dict[str, tuple[float, ShardPlan | None, str]] = {}
        self._live: dict[int, weakref.ref[Job]] = {}
        leader.on_failure(self._fail_streams)

    # ------------------------------------------------------------ plans and footprints

    def plan(self, entry: CatalogModel) -> ShardPlan:
        """`entry` split over the ranks (cached per config.json mtime); raises if it cannot be."""
        mtime = (entry.path / "config.json").stat().st_mtime
        cached = self._plans.get(entry.name)
        if cached is None or cached[0] != mtime:
            base = super().footprint(entry)
            try:
                if entry.is_vision:
                    plan: ShardPlan | None = rank0_plan(
                        entry.name, base.weights_bytes, base.kv_per_token, base.kv_fixed_bytes,
                        base.overhead_bytes, self.leader.cluster.size)
                else:
                    plan = plan_model(entry.name, entry.path, self.leader.cluster.size,
                                      self.cfg.distributed.sharding_of(self.cfg.models,
                                                                       entry.name),
                                      overhead=base.overhead_bytes, dequantize=self.dequantize,
                                      prefill_step=self.cfg.engine.prefill_step_size)
                error = ""
            except InferenceError as e:
                plan, error = None, str(e)
            cached = self._plans[entry.name] = (mtime, plan, error)
        if cached[1] is None:
            raise LoadFailed(cached[2])
        return cached[1]

    def footprint(self, entry: CatalogModel) -> Footprint:
        try:
            plan = self.plan(entry)
        except LoadFailed:  # listed as one host would hold it; loading it says why not
            return super().footprint(entry)
        self.ranked.set_plan(plan)
        holders = sum(1 for w in plan.weights if w)
        return Footprint(sum(plan.weights), sum(plan.kv_per_token), sum(plan.kv_fixed),
                         plan.overhead * holders, plan.note)

    # ------------------------------------------------------------ seams of Engine

    def _new_prompt_cache(self) -> Any:
        return MirroredPromptCache(super()._new_prompt_cache(), self.leader)

    def _load_coder(self, entry: CatalogModel) -> LoadedModel:
        plan = self.plan(entry)
        e = self.cfg.engine
        batch_cfg = {"completion_batch_size": e.max_concurrent,
                     "prefill_batch_size": e.max_concurrent,
                     "prefill_step_size": e.prefill_step_size}
        leader = self.leader
        error = ""
        model: Any = None
        tokenizer: Any = None
        with leader.guard(f"loading {entry.name}", leader.load_timeout_s):
            leader.send({"op": "load", "name": entry.name, "plan": plan.to_json(),
                         "config": config_digest(entry.path), "dequantize": self.dequantize,
                         "batch": batch_cfg})
            mx.synchronize()
            before = mx.get_active_memory()
            try:
                model = load_shard(entry.path, plan, leader.group, self.dequantize)
                tokenizer = load_tokenizer(entry.path, entry.config.get("eos_token_id"))
            except Exception as ex:  # still answer the gather: the others wait for it
                log.exception("rank 0 could not load %s", entry.name)
                error = f"{type(ex).__name__}: {ex}"
            mx.synchronize()
            measured = max(0, mx.get_active_memory() - before)
            results = leader.channel.gather_json({"error": error, "measured": measured})
        errors = [f"{leader.label(r)}: {res['error']}" for r, res in enumerate(results)
                  if res["error"]]
        if errors:
            with leader.guard(f"unloading {entry.name}", leader.step_timeout_s):
                leader.send({"op": "unload", "name": entry.name})
            raise LoadFailed(f"{entry.name} did not load on every rank: {'; '.join(errors)}")
        self.ranked.measured[entry.name] = [int(res["measured"]) for res in results]
        self._cap_prompt_cache(plan)
        batch = Batch.new(model, completion_batch_size=e.max_concurrent,
                          prefill_batch_size=e.max_concurrent,
                          prefill_step_size=e.prefill_step_size)
        return LoadedModel(entry=entry, model=model, tokenizer=tokenizer,
                           batch=MirroredBatch(batch, leader, entry.name))

    def _cap_prompt_cache(self, plan: ShardPlan) -> None:
        """Each host sets prompt_cache_mb aside; rank 0's cap is in its own bytes, so with a
        pipeline split where another rank holds more of the KV, scale rank 0's cap down."""
        if not plan.kv_per_token[0]:
            return
        ratio = min([1.0] + [plan.kv_per_token[0] / kv for kv in plan.kv_per_token if kv])
        lru = self.prompt_cache.lru.cache  # the LRUPromptCache inside the mirror
        lru.max_bytes = min(lru.max_bytes, int(self.prompt_cache_bytes * ratio))

    def _unload(self, name: str) -> bool:
        lm = self.loaded.get(name)
        split = lm is not None and not lm.entry.is_vision
        was = super()._unload(name)
        if was and split:
            with self.leader.guard(f"unloading {name}", self.leader.step_timeout_s):
                self.leader.send({"op": "unload", "name": name})
        return was

    def _recover(self, lm: LoadedModel, error: Exception) -> None:
        # One host's failed step leaves the ranks out of step, and a batch rebuilt on rank 0
        # alone would be one the followers never saw: fail the group, and the supervisor
        # relaunches it.
        if lm.entry.is_vision:
            super()._recover(lm, error)
            return
        log.error("%s: a generation step failed on rank 0 (%s); failing the group", lm.name,
                  error, exc_info=error)
        lm.active.clear()  # their streams end with the group's failure, below
        lm.waiting.clear()
        self.leader.fail(f"a generation step of {lm.name} failed on "
                         f"{self.leader.label(0)}: {error}")

    # ------------------------------------------------------------ failing fast

    def call(self, fn: Any, timeout: float | None = None) -> Any:
        if self.leader.failed:
            raise Unavailable(self.leader.failed)
        future = self._post(fn)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                return future.result(timeout=POLL_S)
            except FutureTimeout:
                if self.leader.failed:
                    raise Unavailable(self.leader.failed) from None
                if deadline is not None and time.monotonic() > deadline:
                    raise

    def submit(self, job: Job) -> None:
        if self.leader.failed:
            job.events.put(Unavailable(self.leader.failed))
            job.events.put(DONE)
            return
        self._live = {k: r for k, r in self._live.items() if r() is not None}
        self._live[id(job)] = weakref.ref(job)
        super().submit(job)

    def _fail_streams(self, reason: str) -> None:
        """From any thread: end every stream in flight with UNAVAILABLE naming the host. The
        engine thread may be blocked in a collective, so nothing here waits for it."""
        for ref in list(self._live.values()):
            job = ref()
            if job is not None:
                job.events.put(Unavailable(reason))
                job.events.put(DONE)
        self.healthy = False
