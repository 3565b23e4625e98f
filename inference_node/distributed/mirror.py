"""Rank 0's side of the lockstep: the engine's batch and prompt cache, mirrored to every rank.

The engine drives an mlx-lm `BatchGenerator` and an `LRUPromptCache` as it always does; on
rank 0 of a group they are wrapped so that every call that changes what the model will run is
also recorded as an op for the other ranks:

    insert        the full prompt, how much of it came from the prompt cache, its uid
    remove        cancelled (or failed) sequences
    finish        sequences that finished in the last step (the other ranks never decide to
                  stop on their own: they have no stop words and no token limit)
    cache_insert  a finished sequence's KV kept for prefix reuse, and the cache's new length
    cache_trim    the cache trimmed to a length

Ops are queued and go out with the next message; `next()` sends them with a `step` and then
runs the step, whose collectives (the model's own, and the sampled token taken from rank 0)
the other ranks run at the same time. Every rank sees the same ops in the same order, so its
batch and prompt cache hold the same sequences, each rank its own part of them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import numpy as np

from inference_node.distributed.control import follow_rank0

NEVER = 1 << 30  # max_tokens on the other ranks: they stop when rank 0 says so


def digest(tokens: list[int]) -> str:
    """A short fingerprint of a token sequence, to match caches across ranks."""
    return hashlib.sha1(np.asarray(tokens, dtype=np.int64).tobytes()).hexdigest()[:16]


class MirroredBatch:
    """An mlx-lm BatchGenerator whose changes are sent to every rank before each step."""

    def __init__(self, batch: Any, leader: Any, model: str) -> None:
        self.batch = batch
        self.leader = leader
        self.model = model

    def __getattr__(self, name: str) -> Any:  # read-only attributes pass through
        return getattr(self.batch, name)

    def _leading(self, sampler: Callable[[Any], Any]) -> Callable[[Any], Any]:
        group = self.leader.group

        def sample(logprobs: Any) -> Any:
            return follow_rank0(sampler(logprobs), group, leader=True)

        return sample

    def insert(self, prompts: list[list[int]], max_tokens: list[int] | None = None,
               caches: list[Any] | None = None, all_tokens: list[list[int]] | None = None,
               samplers: list[Any] | None = None, logits_processors: Any = None,
               stop_sequences: Any = None) -> list[int]:
        n = len(prompts)
        caches = caches or [None] * n
        all_tokens = all_tokens or [[] for _ in prompts]
        samplers = [self._leading(s or self.batch.sampler) for s in (samplers or [None] * n)]
        uids = self.batch.insert(prompts, max_tokens=max_tokens, caches=caches,
                                 all_tokens=all_tokens, samplers=samplers,
                                 logits_processors=logits_processors,
                                 stop_sequences=stop_sequences)
        self.leader.queue(["insert", self.model, {
            "uids": list(uids),
            "prompts": [list(map(int, a)) + list(map(int, p))
                        for a, p in zip(all_tokens, prompts, strict=True)],
            "rest": [len(p) for p in prompts],
            "cached": [c is not None for c in caches],
        }])
        return list(uids)

    def remove(self, uids: list[int], return_prompt_caches: bool = False) -> Any:
        out = self.batch.remove(uids, return_prompt_caches=return_prompt_caches)
        self.leader.queue(["remove", self.model, list(map(int, uids))])
        return out

    def next(self) -> Any:
        with self.leader.guard("a generation step", self.leader.step_timeout_s):
            self.leader.send({"op": "step", "model": self.model})
            prompt_responses, responses = self.batch.next()
        finished = [int(r.uid) for r in responses if r.finish_reason is not None]
        if finished:
            self.leader.queue(["finish", self.model, finished])
        return prompt_responses, responses

    def close(self) -> None:
        self.batch.close()


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
