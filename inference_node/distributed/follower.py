"""Every rank but 0: follow rank 0's engine, op by op, and open no port.

A follower waits for rank 0's next message (a collective), does what it says and waits again:

    load      plan and load this rank's part of a model; report how much memory it took
    unload    drop a model
    step      apply the queued ops (see mirror.py), then run one batch step with rank 0
    ping      report this host's memory readings (the idle group's heartbeat); with
              "park", then sleep on the wake-up line until rank 0 rings it (doorbell.py)
    stop      rank 0 is shutting down cleanly: exit 0

A follower decides nothing: it samples no token of its own (it takes rank 0's, through the
step's collectives), never stops a sequence by itself, and keeps its prompt cache at rank 0's
length. If it cannot do what a message says, its state would no longer match rank 0's; it
logs why and exits non-zero, and rank 0 sees the group fail.
"""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx

from inference_node import mlx_compat
from inference_node.distributed.control import Channel, RankLost, follow_rank0, memory_readings
from inference_node.distributed.doorbell import Line
from inference_node.distributed.mirror import NEVER, digest
from inference_node.distributed.sharding import ShardPlan, config_digest, load_shard
from inference_node.models import Catalog

log = logging.getLogger("inference_node.distributed.follower")


class OutOfStep(RuntimeError):
    """This rank's state no longer matches rank 0's: it must not run another step."""


@dataclass
class FollowedModel:
    name: str
    model: Any
    batch: mlx_compat.Batch
    # Caches of sequences rank 0 says finished, until it says (in the same message) which it
    # keeps in its prompt cache.
    finished: dict[int, tuple[Any, list[int]]] = field(default_factory=dict)


class Follower:
    def __init__(self, channel: Channel, catalog: Catalog, available: Any,
                 line: Line | None = None) -> None:
        self.channel = channel
        self.line = line  # rank 0's wake-up line (doorbell.py): parked on it while idle
        self.group = channel.group
        self.catalog = catalog
        self.available = available  # () -> this host's available system memory
        self.models: dict[str, FollowedModel] = {}
        self.prompt_cache: Any = None

    def _sampler(self) -> Any:
        group = self.group

        def sample(logprobs: Any) -> Any:
            return follow_rank0(mx.argmax(logprobs, axis=-1), group, leader=False)

        return sample

    # ------------------------------------------------------------ the loop

    def run(self) -> int:
        # Unbounded: rank 0's cap decides, through cache_trim / cache_insert lengths.
        self.prompt_cache = mlx_compat.lru_prompt_cache(max_size=1 << 30, max_bytes=1 << 62)
        while True:
            try:
                message = self.channel.receive()
            except RankLost as e:
                log.error("rank %d lost rank 0: %s", self.channel.rank, e)
                return 1
            op = message.get("op")
            try:
                for queued in message.get("ops", []):
                    self._apply(queued)
                for fm in self.models.values():  # caches rank 0 did not keep (it says in the
                    fm.finished.clear()          # same message as the finish)
                if op == "stop":
                    log.info("rank %d: rank 0 is shutting down", self.channel.rank)
                    return 0
                if op == "step":
                    self._step(message["model"])
                elif op == "load":
                    self._load(message)
                elif op == "unload":
                    self._unload(message["name"])
                elif op == "ping":
                    self.channel.gather(memory_readings(self.available))
                    if message.get("park") and self.line is not None:
                        self.line.wait()  # idle: not inside a collective, which polls
                elif op != "sync":
                    raise OutOfStep(f"unknown op {op!r}")
            except RankLost as e:
                log.error("rank %d lost the group during %s: %s", self.channel.rank, op, e)
                return 1
            except Exception:
                log.exception("rank %d cannot follow %s; leaving the group", self.channel.rank, op)
                return 1

    # ------------------------------------------------------------ ops

    def _apply(self, queued: list[Any]) -> None:
        kind = queued[0]
        if kind == "cache_trim":
            self.prompt_cache.trim_to(n_sequences=int(queued[1]))
            return
        fm = self.models.get(queued[1])
        if fm is None:
            raise OutOfStep(f"{kind} for {queued[1]!r}, which this rank has not loaded")
        if kind == "insert":
            self._insert(fm, queued[2])
        elif kind == "remove":
            fm.batch.remove(queued[2])
        elif kind == "finish":
            for uid, (cache, tokens) in fm.batch.finish(queued[2]).items():
                fm.finished[uid] = (cache, tokens)
        elif kind == "cache_insert":
            _, model, n, fingerprint, length, cache_type = queued
            match = [uid for uid, (_, t) in fm.finished.items()
                     if len(t) == n and digest(t) == fingerprint]
            if not match:
                raise OutOfStep(f"rank 0 kept a cache of {n} tokens this rank did not finish")
            cache, tokens = fm.finished.pop(match[0])
            self.prompt_cache.insert_cache(model, tokens, cache, cache_type=cache_type)
            self.prompt_cache.trim_to(n_sequences=int(length))
        else:
            raise OutOfStep(f"unknown queued op {kind!r}")

    def _insert(self, fm: FollowedModel, spec: dict[str, Any]) -> None:
        for uid, prompt, rest_len, cached in zip(spec["uids"], spec["prompts"], spec["rest"],
                                                 spec["cached"], strict=True):
            cache, rest = None, prompt
            if cached:
                cache, rest = self.prompt_cache.fetch_nearest_cache(fm.name, prompt)
                if cache is not None and not rest:  # rank 0 reruns the last token
                    mlx_compat.trim(cache, 1)
                    rest = prompt[-1:]
                if cache is None or len(rest) != rest_len:
                    raise OutOfStep(f"rank 0 ran {rest_len} of {len(prompt)} prompt tokens "
                                    f"after its cached prefix; this rank's cache gives "
                                    f"{len(rest)}")
            got = fm.batch.insert(
                [rest], max_tokens=NEVER, cache=cache, cached=prompt[:len(prompt) - len(rest)],
                sampler=self._sampler(), stop=mlx_compat.no_stop_sequences())
            if got != uid:
                raise OutOfStep(f"sequence uid {got} here, {uid} on rank 0")

    def _step(self, name: str) -> None:
        self.models[name].batch.step()

    def _load(self, message: dict[str, Any]) -> None:
        name = message["name"]
        error, measured = "", 0
        try:
            entry = self.catalog.get(name, "coder")
            if config_digest(entry.path) != message["config"]:
                raise OutOfStep(f"{entry.path} here is not the model rank 0 has (its "
                                "config.json differs); install the same model on every host")
            plan = ShardPlan.from_json(message["plan"])
            self._unload(name)
            mx.synchronize()
            before = mx.get_active_memory()
            model = load_shard(entry.path, plan, self.group, bool(message["dequantize"]))
            b = message["batch"]
            batch = mlx_compat.Batch.new(model, completion_batch_size=b["completion_batch_size"],
                                         prefill_batch_size=b["prefill_batch_size"],
                                         prefill_step_size=b["prefill_step_size"])
            mx.synchronize()
            measured = max(0, mx.get_active_memory() - before)
            self.models[name] = FollowedModel(name, model, batch)
            log.info("rank %d loaded its part of %s: %.1f MB", self.channel.rank, name,
                     measured / 2**20)
        except Exception as e:  # reported to rank 0, which refuses the load everywhere
            log.exception("rank %d could not load %s", self.channel.rank, name)
            error = f"{type(e).__name__}: {e}"[:1500]
        self.channel.gather_json({"error": error, "measured": measured})

    def _unload(self, name: str) -> None:
        if self.models.pop(name, None) is not None:
            gc.collect()
            mx.clear_cache()
