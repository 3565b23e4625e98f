"""Rank 0's side of the lockstep: the engine's batch and prompt cache, mirrored to every rank.

The engine drives its batch (`mlx_compat.Batch`) and mlx-lm's `LRUPromptCache` as it always
does; on rank 0 of a group they are wrapped so that every call that changes what the model
will run is also recorded as an op for the other ranks:

    insert        the full prompt, how much of it came from the prompt cache, its uid
    remove        cancelled (or failed) sequences
    finish        sequences that finished in the last step (the other ranks never decide to
                  stop on their own: they have no stop words and no token limit)
    cache_insert  a finished sequence's KV kept for prefix reuse, and the cache's new length
    cache_trim    the cache trimmed to a length

Ops are queued and go out with the next message; `step()` sends them with a `step` and then
runs the step, whose collectives (the model's own, and the sampled token taken from rank 0)
the other ranks run at the same time. Every rank sees the same ops in the same order, so its
batch and prompt cache hold the same sequences, each rank its own part of them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from inference_node.distributed.control import follow_rank0
from inference_node.mlx_compat import (
    Batch,
    Cache,
    Emitted,
    LogitsProcessor,
    Prefilled,
    Sampler,
    greedy_sampler,
)

NEVER = 1 << 30  # max_tokens on the other ranks: they stop when rank 0 says so


def digest(tokens: list[int]) -> str:
    """A short fingerprint of a token sequence, to match caches across ranks."""
    return hashlib.sha1(np.asarray(tokens, dtype=np.int64).tobytes()).hexdigest()[:16]


class MirroredBatch(Batch):
    """A batch whose changes are sent to every rank before each step."""

    def __init__(self, batch: Batch, leader: Any, model: str) -> None:
        super().__init__(batch.generator)
        self.batch = batch
        self.leader = leader
        self.model = model

    def _leading(self, sampler: Sampler) -> Sampler:
        group = self.leader.group

        def sample(logprobs: Any) -> Any:
            return follow_rank0(sampler(logprobs), group, leader=True)

        return sample

    def insert(self, segments: list[list[int]], *, max_tokens: int, cache: Cache | None = None,
               cached: Sequence[int] = (), sampler: Sampler | None = None,
               processors: Sequence[LogitsProcessor] = (), stop: Any = None) -> int:
        if len(segments) != 1:  # a prefix pin splits the prompt; ranks mirror no pins
            raise ValueError("a distributed batch takes each prompt whole")
        uid = self.batch.insert(segments, max_tokens=max_tokens, cache=cache, cached=cached,
                                sampler=self._leading(sampler or greedy_sampler()),
                                processors=processors, stop=stop)
        self.leader.queue(["insert", self.model, {
            "uids": [uid],
            "prompts": [list(map(int, cached)) + list(map(int, segments[0]))],
            "rest": [len(segments[0])],
            "cached": [cache is not None],
        }])
        return uid

    def remove(self, uids: list[int]) -> None:
        self.batch.remove(uids)
        self.leader.queue(["remove", self.model, list(map(int, uids))])

    def finish(self, uids: list[int]) -> dict[int, tuple[Cache, list[int]]]:
        out = self.batch.finish(uids)
        self.leader.queue(["remove", self.model, list(map(int, uids))])
        return out

    def step(self) -> tuple[list[Prefilled], list[Emitted]]:
        with self.leader.guard("a generation step", self.leader.step_timeout_s):
            self.leader.send({"op": "step", "model": self.model})
            prefilled, emitted = self.batch.step()
        finished = [r.uid for r in emitted if r.finish_reason is not None]
        if finished:
            self.leader.queue(["finish", self.model, finished])
        return prefilled, emitted


class MirroredPromptCache:
    """mlx-lm's LRUPromptCache on rank 0; inserts and trims are sent to every rank.

    The other ranks keep theirs unbounded and trim to rank 0's length after each change: the
    caches evict in the same LRU order, so rank 0's choices (by its byte cap) are theirs too.
    """

    def __init__(self, cache: Any, leader: Any) -> None:
        self.cache = cache
        self.leader = leader

    def __getattr__(self, name: str) -> Any:
        return getattr(self.cache, name)

    def __len__(self) -> int:
        return len(self.cache)

    def fetch_nearest_cache(self, model: Any, tokens: list[int]) -> Any:
        return self.cache.fetch_nearest_cache(model, tokens)  # no side effect: not mirrored

    def insert_cache(self, model: Any, tokens: list[int], prompt_cache: Any, **kw: Any) -> None:
        self.cache.insert_cache(model, tokens, prompt_cache, **kw)
        self.leader.queue(["cache_insert", str(model), len(tokens), digest(list(tokens)),
                           len(self.cache), kw.get("cache_type", "assistant")])

    def trim_to(self, *, n_sequences: int | None = None, n_bytes: int | None = None) -> None:
        self.cache.trim_to(n_sequences=n_sequences, n_bytes=n_bytes)
        self.leader.queue(["cache_trim", len(self.cache)])
