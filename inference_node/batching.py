"""Running jobs in a model's batch: joining it, what joining costs, and a token's way out.

mlx-lm's BatchGenerator (behind `mlx_compat.Batch`) decodes every sequence of a batch in one
step. A job joins with what the prompt cache holds of its prompt (and its system part is set
apart as a segment, whose KV is pinned once prefill reaches it); each generated token goes
through the job's detokenizer and text router to its event queue (`emit`), the same way for a
job decoding speculatively (speculative.py).
"""

from __future__ import annotations

import logging

from inference_node import mlx_compat
from inference_node.admission import kv_tokens
from inference_node.isolation import guarded
from inference_node.jobs import Job, LoadedModel
from inference_node.prompt_cache import Lookup, PromptCache

log = logging.getLogger("inference_node.engine")
MIN_PINNED = 16  # a shorter system part is not worth a pin
MIN_SHARED = 32  # nor a part shared with another request's prompt this much past the system part


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


def padding_needed(lm: LoadedModel, job: Job) -> int:
    """Bytes that `job` joining `lm`'s running batch needs beyond the reservations held.

    mlx-lm stores every sequence of a batch at the longest one's length, left-padded (see
    BatchKVCache), so a short request beside a long one holds as much KV as the long one
    while both run. Reservations count each request alone; the difference is asked for
    before the join.
    """
    jobs = [*lm.active.values(), job]
    seqs = [(len(j.prompt) + j.completion_tokens, j.max_tokens - j.completion_tokens)
            for j in jobs]
    peak = batch_peak_tokens(seqs) * lm.kv_per_token + len(jobs) * lm.kv_fixed_bytes
    held = sum(j.reservation.bytes for j in jobs if j.reservation is not None)
    return peak - held


def lookup(cache: PromptCache, job: Job, tokens: list[int], *, account: bool) -> Lookup:
    """What the prompt cache holds of `tokens`; logs why it held less than it had seen."""
    found = cache.fetch(job.model, tokens, account=account, continues=job.continues)
    miss = found.miss
    if account and miss is not None and miss.tokens:
        log.info("prompt cache: %s %s: %d of %d prompt tokens cached (%d pinned); %s",
                 job.model, job.request_id, found.cached, len(tokens), found.pinned,
                 miss.describe())
    elif account:
        log.debug("prompt cache: %s %s: %d of %d prompt tokens cached (%d pinned)", job.model,
                  job.request_id, found.cached, len(tokens), found.pinned)
    return found


def served(job: Job, found: Lookup) -> None:
    """What the cache served of `job`'s prompt, and what it had seen and computed again."""
    job.cached_tokens = found.cached
    miss = found.miss
    if miss is not None and miss.tokens and miss.cause != "off":
        job.recomputed_tokens, job.recompute_cause = miss.tokens, miss.cause


def segments(cache: PromptCache, job: Job, tokens: list[int], found: Lookup) -> list[list[int]]:
    """The tokens still to run, split where the prefix to pin ends when it is not pinned yet:
    prefill stops there and its KV is taken (`job.pin_at`). That prefix is the system part, or
    the longer part the prompt shares with another request's (PromptCache.shared_prefix)."""
    rest = found.rest
    end = job.system_prefix
    job.pin_at = 0
    if cache.pinned_bytes:
        shared = cache.shared_prefix(job.model, tokens)
        if shared >= max(end, cache.pinned_len(job.model, tokens)) + MIN_SHARED:
            end = shared
    if (not cache.pinned_bytes or end < MIN_PINNED or end >= len(tokens) - 1
            or cache.has_pin(job.model, tokens[:end])):
        return [rest]
    if found.cached >= end and found.cache is not None:  # served already: pin a copy now
        pinned = [c for c in _copy(found.cache)]
        mlx_compat.trim(pinned, mlx_compat.cache_tokens(pinned) - end)
        pin(cache, job, tokens[:end], pinned)
        return [rest]
    job.pin_at = end
    split = end - found.cached
    return [rest[:split], rest[split:]]


def pin(cache: PromptCache, job: Job, tokens: list[int], kv: mlx_compat.Cache) -> None:
    """Pin the KV of `tokens`, a prefix of `job`'s prompt: its system part, or a part it
    shares with another prompt (those are the first to go when the pins are full)."""
    cache.pin(job.model, tokens, kv, system=len(tokens) == job.system_prefix)


def _copy(cache: mlx_compat.Cache) -> mlx_compat.Cache:
    import copy

    return copy.deepcopy(cache)


def insert(lm: LoadedModel, cache: PromptCache, job: Job) -> int:
    """Add `job` to `lm`'s batch: its prompt, or after a rebuild its prompt + what it emitted;
    returns its uid. Its sampler and processors go in wrapped (`guarded`), so a step they fail
    names it."""
    assert lm.batch is not None
    resumed = bool(job.generated)
    tokens = job.prompt + job.generated
    found = lookup(cache, job, tokens, account=not resumed)
    if not resumed:
        served(job, found)
    pieces = segments(cache, job, tokens, found) if not resumed else [found.rest]
    processors = job.logits_processors
    if resumed and job.rebuild_processors is not None:
        processors = job.logits_processors = job.rebuild_processors()
    sampler = job.sampler
    if sampler is not None and sampler is not mlx_compat.greedy_sampler():  # argmax can't fail
        sampler = guarded(job, sampler)
    return lm.batch.insert(pieces, max_tokens=job.max_tokens - job.completion_tokens,
                           cache=found.cache, cached=tokens[:found.cached], sampler=sampler,
                           processors=[guarded(job, p) for p in processors],
                           stop=job.stop_sequences)


def pin_reached(lm: LoadedModel, cache: PromptCache, uid: int) -> None:
    """Prefill of `uid` reached a segment end: pin the KV of its system part if that is it."""
    job = lm.active.get(uid)
    if job is None or not job.pin_at or lm.batch is None:
        return
    kv, tokens = lm.batch.extract(uid)
    if len(tokens) == job.pin_at:
        pin(cache, job, tokens, kv)
        log.info("prompt cache: %s: pinned a %d-token prefix (%.1f MiB of pins)",
                 lm.name, len(tokens), cache.pinned_nbytes() / 2**20)
        job.pin_at = 0


def emit(job: Job, token: int, finish_reason: str | None) -> None:
    """One generated token to `job`'s events (text, reasoning, tool calls as they complete)."""
    job.completion_tokens += 1
    job.generated.append(token)
    detok = job.detokenizer
    if finish_reason != "stop":
        detok.add_token(token)
    if finish_reason is not None:
        detok.finalize()
    for event in job.router.feed(detok.last_segment, finish_reason):
        job.events.put(event)
