"""Speculative decoding: tokens are proposed cheaply, and the served model checks them at once.

On a machine where decoding is bound by memory bandwidth (every token reads all the weights),
the served model checks k + 1 positions in about the time it decodes one. Each round k tokens
are proposed, the model runs once over them, and keeps the proposals up to the first one it
would not have chosen, plus its own token there: 1 to k + 1 tokens per pass of the big model.
The proposals come from one of two places:

- a small draft model (`[[models]] draft`), proposing one by one (it is several times cheaper);
- the request itself (`[[models]] prompt_lookup`, `Lookup`): the tokens that followed the
  latest earlier occurrence of its last few tokens. A coder writing a file back whole, or
  quoting code it was shown, repeats long runs of its prompt; those cost nothing to propose.

    spec = start(lm, job, prompt_cache, admission, draft_tokens=3, prefill_step=512)
    while (finish := spec.step(prompt_cache)) is None: ...       # or spec.to_batch(batch)

Output is the model's own: each kept token is the one the model's sampler chose at that
position, given everything before it, so greedy decoding gives exactly the tokens decoding
without a draft gives, and sampling keeps the model's distribution (with a seed, the random
draws fall differently than in the batch). Logits processors see the same contexts as in the
batch; a grammar's matcher is rewound past proposals that were not kept (`rewind`).

It runs while the request is the model's only one (the engine hands it to the batch when
another joins: `to_batch`, and with prompt lookup back from the batch when the others have
finished: `from_batch`); a draft model must share the served model's vocabulary. It is
not available across the ranks of a distributed group (config.validate refuses it). The
engine drives it through `begin`, `step_alone`, `hand_to_batch` and `from_batch`, which take
the engine.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import mlx.core as mx

from inference_node import batching, mlx_compat
from inference_node.admission import kv_tokens
from inference_node.errors import Cancelled, LoadFailed
from inference_node.isolation import generation_failed, guarded
from inference_node.jobs import Job, Ledger, LoadedModel
from inference_node.mlx_compat import Cache, LogitsProcessor
from inference_node.prompt_cache import PromptCache

if TYPE_CHECKING:
    from inference_node.engine import Engine

log = logging.getLogger("inference_node.engine")

NGRAM_MAX = 3  # prompt lookup matches the last 3 tokens, else the last 2, else the last one
MIN_ALONE_LEFT = 8  # tokens a request left alone in the batch must have to go to the lookup


def check_pair(target: LoadedModel, draft: LoadedModel) -> None:
    """LoadFailed unless `draft` can draft for `target`: same vocabulary, trimmable caches."""
    if draft.entry.is_vision or draft.batch is None:
        raise LoadFailed(f"{draft.name} is not a coder model; a draft must be one")
    if draft is target:
        raise LoadFailed(f"{target.name} cannot draft for itself")
    tv, dv = _vocab(target.tokenizer), _vocab(draft.tokenizer)
    if tv != dv:
        raise LoadFailed(f"{draft.name}'s vocabulary is not {target.name}'s ({len(dv)} and "
                         f"{len(tv)} tokens, or the same ids for other text); a draft must "
                         "use the same tokenizer")
    for lm in (target, draft):
        if not rolls_back(lm):
            raise LoadFailed(f"{lm.name}'s KV cache cannot be rolled back (sliding windows or "
                             "recurrent state), which speculative decoding needs")


def rolls_back(lm: LoadedModel) -> bool:
    """Whether `lm`'s KV cache can drop its last tokens: a rejected proposal's are dropped."""
    return bool(mlx_compat.can_trim(mlx_compat.make_cache(lm.model)))


def _vocab(tokenizer: Any) -> dict[str, int]:
    inner = getattr(tokenizer, "_tokenizer", tokenizer)
    return dict(inner.get_vocab())


def start(lm: LoadedModel, job: Job, cache: PromptCache, admission: Ledger, draft_tokens: int,
          prefill_step: int) -> Speculation | None:
    """`job` decoding speculatively on `lm` with its draft model, or with prompt lookup when
    `lm` has none; None when the draft's KV for it does not fit in memory now (the job then
    goes to the batch)."""
    draft = lm.draft
    if draft is not None:
        need = (kv_tokens(len(job.prompt) + job.max_tokens) * draft.kv_per_token
                + draft.kv_fixed_bytes)
        if job.reservation is not None and not admission.try_grow(job.reservation, need):
            log.info("%s: request %s decodes in the batch: the draft's KV (%.1f MiB) does not "
                     "fit now", lm.name, job.request_id, need / 2**20)
            return None
    found = batching.lookup(cache, job, job.prompt, account=True)
    batching.served(job, found)
    batching.segments(cache, job, job.prompt, found)  # sets job.pin_at when a pin is due
    drafted = cache.fetch(draft.name, job.prompt, account=False) if draft is not None else None
    return Speculation(lm, draft, job, found.cache, found.cached,
                       drafted.cache if drafted else None, drafted.cached if drafted else 0,
                       max(0, draft_tokens), prefill_step)


def next_span(span: int, kept: int, proposed: int, k: int) -> int:
    """Prompt lookup's proposals for the next pass, from what this one kept of `proposed`: two
    more when it kept them all (up to k), else one more than it kept. Text being copied keeps
    the passes wide; where the lookup guesses wrong, a pass checks one proposal, which costs
    about what a one-token step does, where a wide pass of wrong ones costs up to twice that
    (bench/lookup.py's fresh function on the 0.5B: 0.87x plain at 5 a pass, 0.99x adapting)."""
    if kept == proposed:
        return min(k, span + 2)
    return max(1, kept + 1)


class Lookup:
    """Proposals from a request's own tokens (prompt lookup): the k tokens that followed the
    latest earlier occurrence of its last NGRAM_MAX tokens, else of fewer, down to its last
    one; none when even that never occurred before. `tokens` only ever grows between calls
    (the prompt, then what was emitted), so each call indexes only what is new."""

    def __init__(self) -> None:
        self.after: dict[tuple[int, ...], int] = {}  # an n-gram -> where what followed it starts
        self.indexed = 1  # the n-grams ending before this position are in `after`

    def propose(self, tokens: list[int], k: int) -> list[int]:
        end = len(tokens)
        for e in range(self.indexed, end):  # never the last n-gram itself: nothing follows it
            for n in range(1, min(NGRAM_MAX, e) + 1):
                self.after[tuple(tokens[e - n:e])] = e
        self.indexed = max(self.indexed, end)
        for n in range(min(NGRAM_MAX, end), 0, -1):
            at = self.after.get(tuple(tokens[end - n:]))
            if at is not None:
                return tokens[at:at + k]
        return []


class Speculation:
    """One job decoding speculatively: its caches (the model's, and its draft model's if it has
    one; prompt lookup needs none) and how far each has run."""

    def __init__(self, lm: LoadedModel, draft: LoadedModel | None, job: Job,
                 target_kv: Cache | None, target_len: int, draft_kv: Cache | None,
                 draft_len: int, k: int, prefill_step: int) -> None:
        self.lm, self.draft, self.job = lm, draft, job
        self.lookup = Lookup() if draft is None else None
        self.target_kv = target_kv if target_kv is not None else mlx_compat.make_cache(lm.model)
        self.draft_kv: Cache = draft_kv if draft_kv is not None \
            else mlx_compat.make_cache(draft.model) if draft is not None else []  # lookup: none
        self.target_len = target_len if target_kv is not None else 0  # tokens each KV holds
        self.draft_len = draft_len if draft_kv is not None else 0
        self.k = k
        self.span = k  # proposals the next pass checks: with prompt lookup, see `next_span`
        self.prefill_step = max(1, prefill_step)
        self.stop = mlx_compat.stop_matcher(job.stop_sequences or mlx_compat.no_stop_sequences())
        self.sampler = job.sampler or mlx_compat.greedy_sampler()
        self.processors: list[LogitsProcessor] = [guarded(job, p) for p in job.logits_processors]
        self.eos = set(getattr(lm.tokenizer, "eos_token_ids", ()) or ())
        self.stream = mlx_compat.generation_stream()

    @property
    def tokens(self) -> list[int]:
        return self.job.prompt + self.job.generated

    @property
    def prefilling(self) -> bool:
        end = len(self.job.prompt) - 1
        return self.target_len < end or (self.draft is not None and self.draft_len < end)

    # ------------------------------------------------------------ one engine turn

    def step(self, cache: PromptCache) -> str | None:
        """One prefill chunk (of each model), or one round of draft and check; the job's
        finish reason once it is done (its KV then goes to the prompt cache)."""
        with mx.stream(self.stream):
            if self.prefilling:
                self._prefill(cache)
                return None
            finish = self._round()
        if finish is not None:
            self._keep(cache)
        return finish

    def _prefill(self, cache: PromptCache) -> None:
        prompt, end = self.job.prompt, len(self.job.prompt) - 1
        if self.target_len < end:
            stop = min(end, self.target_len + self.prefill_step)
            if self.target_len < self.job.pin_at < stop:
                stop = self.job.pin_at  # the system part ends here: its KV is pinned
            _feed(self.lm.model, self.target_kv, prompt[self.target_len:stop])
            self.target_len = stop
            if self.job.pin_at and stop == self.job.pin_at:
                batching.pin(cache, self.job, prompt[:stop], _copy(self.target_kv))
                self.job.pin_at = 0
        if self.draft is not None and self.draft_len < end:
            stop = min(end, self.draft_len + self.prefill_step)
            _feed(self.draft.model, self.draft_kv, prompt[self.draft_len:stop])
            self.draft_len = stop
        mx.clear_cache()

    def _round(self) -> str | None:
        job = self.job
        left = job.max_tokens - job.completion_tokens
        k = min(self.span, left - 1)
        base = self.tokens
        drafts = self._draft(base, k)
        for p in job.logits_processors:  # the draft moved the grammar on; back to `base`
            rewind = getattr(p, "rewind", None)
            if rewind is not None:
                rewind(len(base))
        # The model over its last token and the proposals: logits for k + 1 positions.
        fed = base[self.target_len:] + drafts
        logits = self.lm.model(mx.array(fed)[None], cache=self.target_kv)
        self.target_len += len(fed)
        chosen = self._choose(logits[0, -(len(drafts) + 1):, :], base, drafts)
        kept = len(chosen) - 1
        job.drafted += len(drafts)
        job.accepted += kept
        if self.lookup is not None and drafts:
            self.span = next_span(self.span, kept, len(drafts), self.k)
        finish = None
        job.t_first = job.t_first or time.perf_counter()
        for token in chosen:
            finish = "length" if job.completion_tokens + 1 >= job.max_tokens else None
            if self.stop.advance(token):
                finish = "stop"
            batching.emit(job, token, finish)
            if finish is not None:
                break
        now = len(self.tokens)
        # Each KV keeps only what the kept tokens agree with (the last token is fed next).
        mlx_compat.trim(self.target_kv, self.target_len - (now - 1))
        self.target_len = now - 1
        if self.draft is not None:
            valid = min(self.draft_len, len(base) + min(kept, max(0, len(drafts) - 1)), now - 1)
            mlx_compat.trim(self.draft_kv, self.draft_len - valid)
            self.draft_len = valid
        return finish

    def _draft(self, base: list[int], k: int) -> list[int]:
        """Up to k tokens proposed greedily by the draft, under the job's logits processors;
        with prompt lookup, the tokens that followed `base`'s last ones where they were before
        (the model's check applies the processors)."""
        if self.lookup is not None:
            return self.lookup.propose(base, k)
        assert self.draft is not None
        drafts: list[int] = []
        while len(drafts) < k:
            fed = (base + drafts)[self.draft_len:]
            logits = self.draft.model(mx.array(fed)[None], cache=self.draft_kv)[:, -1, :]
            self.draft_len += len(fed)
            logits = self._process(base + drafts, logits)
            token = _token(mx.argmax(logits, axis=-1))
            drafts.append(token)
            if token in self.eos:
                break
        return drafts

    def _choose(self, logits: mx.array, base: list[int], drafts: list[int]) -> list[int]:
        """The model's own tokens at each position, up to and including the first that is not
        the draft's; logits: (len(drafts) + 1, vocab)."""
        if not self.processors:  # every position at once
            picked: list[int] = self._sample(logits).tolist()  # type: ignore[assignment]
            out = []
            for i, token in enumerate(picked):
                out.append(int(token))
                if i >= len(drafts) or token != drafts[i]:
                    break
            return out
        out = []
        for i in range(len(drafts) + 1):
            token = _token(self._sample(self._process(base + drafts[:i], logits[i:i + 1])))
            out.append(token)
            if i >= len(drafts) or token != drafts[i]:
                break
        return out

    def _sample(self, logits: mx.array) -> mx.array:
        """The sampler's token for each row of `logits`. Greedy takes the argmax as it is: the
        log-softmax the other samplers need has the same argmax, and over Qwen's 151,936 tokens
        it cost 2.6 ms for one row here and 18 ms for a pass of 8, MLX's CPU `exp` being slow."""
        if self.sampler is mlx_compat.greedy_sampler():
            return mx.argmax(logits, axis=-1)
        return self.sampler(logits - mx.logsumexp(logits, axis=-1, keepdims=True))

    def _process(self, context: list[int], logits: mx.array) -> mx.array:
        if not self.processors:
            return logits
        ctx = mx.array(context)
        for p in self.processors:
            logits = p(ctx, logits)
        return logits

    # ------------------------------------------------------------ handing over

    def _keep(self, cache: PromptCache) -> None:
        """The finished job's KV (the model's and the draft's) for later prefixes."""
        tokens = self.tokens
        cache.insert(self.job.model, tokens[:self.target_len], self.target_kv,
                     len(self.job.prompt))
        if self.draft is not None and self.draft_len:
            cache.insert(self.draft.name, tokens[:self.draft_len], self.draft_kv,
                         len(self.job.prompt))

    def to_batch(self, batch: mlx_compat.Batch, cache: PromptCache) -> int:
        """Go on in `batch` from the model's KV; the draft's KV is kept in the prompt cache.
        Returns the job's uid in the batch."""
        job = self.job
        if self.draft is not None and self.draft_len:
            cache.insert(self.draft.name, self.tokens[:self.draft_len], self.draft_kv,
                         len(job.prompt))
        tokens = self.tokens
        pieces = [tokens[self.target_len:]]
        if job.pin_at > self.target_len:
            split = job.pin_at - self.target_len
            pieces = [pieces[0][:split], pieces[0][split:]]
        sampler = job.sampler
        if sampler is not None and sampler is not mlx_compat.greedy_sampler():
            sampler = guarded(job, sampler)
        return batch.insert(pieces, max_tokens=job.max_tokens - job.completion_tokens,
                            cache=self.target_kv if self.target_len else None,
                            cached=tokens[:self.target_len], sampler=sampler,
                            processors=self.processors, stop=job.stop_sequences)


# ---------------------------------------------------------------- on the engine's thread


def begin(engine: Engine, lm: LoadedModel, job: Job) -> bool:
    """Start `job` decoding speculatively, if `lm` has a draft model whose KV fits, or takes
    its proposals from the request (prompt lookup)."""
    e = engine.cfg.engine
    if lm.draft is not None and lm.draft.name in engine.loaded:
        k = e.draft_tokens
    elif lm.lookup:
        k = e.lookup_tokens
    else:
        return False
    spec = start(lm, job, engine.prompt_cache, engine.admission, k, e.prefill_step_size)
    if spec is None:
        return False
    if job.seed is not None:
        mx.random.seed(job.seed)
    lm.spec = spec
    if spec.draft is not None:
        engine.admission.touch(spec.draft.name)
    return True


def step_alone(engine: Engine, lm: LoadedModel) -> None:
    """One engine turn of `lm`'s speculative job; it ends there when done or cancelled."""
    spec = lm.spec
    assert spec is not None
    if spec.job.cancelled.is_set():
        lm.spec = None
        engine._finish(spec.job, Cancelled("the client went away"))
        return
    first = not spec.job.t_first
    finish = spec.step(engine.prompt_cache)
    if first and spec.job.t_first:
        engine.measure_prefill(spec.job, spec.job.t_first)
    if finish is not None:
        lm.spec = None
        engine._finish(spec.job, None, finish)


def hand_to_batch(engine: Engine, lm: LoadedModel) -> None:
    """The job decoding speculatively goes on in the batch, from the KV it has."""
    spec = lm.spec
    assert spec is not None and lm.batch is not None
    lm.spec = None
    job = spec.job
    if job.cancelled.is_set():
        engine._finish(job, Cancelled("the client went away"))
        return
    try:
        uid = spec.to_batch(lm.batch, engine.prompt_cache)
    except Exception as e:
        log.exception("could not move request %s into %s's batch", job.request_id, lm.name)
        engine._finish(job, generation_failed(job, e, alone=True))
        return
    lm.active[uid] = job
    log.info("%s: request %s decodes in the batch from now on (another request joined); "
             "%d of %d proposed tokens (%s) were accepted", lm.name, job.request_id,
             job.accepted, job.drafted,
             "prompt lookup" if spec.draft is None else f"drafted by {spec.draft.name}")


def from_batch(engine: Engine, lm: LoadedModel) -> bool:
    """The one request left in `lm`'s batch goes on decoding with prompt lookup, from the KV
    the batch has of it (the others finished): with two agents at once, a request that began
    beside another would otherwise never use the lookup again. Only when nothing is waiting
    or arriving, the model takes its proposals from requests (a draft model's KV would have
    to be admitted and prefilled: not done), the request is past its prefill with
    MIN_ALONE_LEFT tokens or more still to go, and it has no logits processors (a grammar's
    state is the batch's). True if it moved."""
    if lm.spec is not None or len(lm.active) != 1 or lm.waiting or not lm.lookup \
            or lm.draft is not None or lm.batch is None or engine.arriving():
        return False
    (uid, job), = lm.active.items()
    if not job.generated or job.logits_processors or job.cancelled.is_set() \
            or job.batch_only or job.max_tokens - job.completion_tokens < MIN_ALONE_LEFT:
        return False
    tokens = job.prompt + job.generated
    kv, held = lm.batch.extract(uid)
    # The batch has run every emitted token; the lookup's pass runs the last one again.
    if held != tokens[:len(held)] or len(held) < len(tokens) - 1:
        log.warning("%s: request %s: the batch's KV holds %d tokens, not its %d; it stays in "
                    "the batch", lm.name, job.request_id, len(held), len(tokens))
        job.batch_only = True
        return False
    lm.batch.remove([uid])
    del lm.active[uid]
    mlx_compat.trim(kv, len(held) - (len(tokens) - 1))
    spec = Speculation(lm, None, job, kv, len(tokens) - 1, None, 0,
                       engine.cfg.engine.lookup_tokens, engine.cfg.engine.prefill_step_size)
    for token in job.generated:  # where its stop sequences stand
        spec.stop.advance(token)
    lm.spec = spec
    log.info("%s: request %s decodes alone with prompt lookup from now on (the batch's other "
             "requests finished), %d tokens to go", lm.name, job.request_id,
             job.max_tokens - job.completion_tokens)
    return True


def _feed(model: Any, kv: Cache, tokens: list[int]) -> None:
    """Run `tokens` through `model` into its KV (prefill: the logits are never computed)."""
    if not tokens:
        return
    model(mx.array(tokens)[None], cache=kv)
    mx.eval([c.state for c in kv])


def _token(a: mx.array) -> int:
    value: Any = a.item()
    return int(value)


def _copy(kv: Cache) -> Cache:
    import copy

    return copy.deepcopy(kv)
