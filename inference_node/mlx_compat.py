"""The one place that touches mlx-lm: loading, sampling, stops, text states, KV caches, batches.

mlx-lm's generation internals (`BatchGenerator.insert(stop_sequences=…)`, `StopSequences`,
`TextStateMachine`, `make_stop_sequences`, the caches' `step` and trimming, `LRUPromptCache`)
are not a stable API: upstream renames them between minor versions. Every other module of the
inference node goes through this one, so an mlx-lm upgrade breaks here, once, and
`problems()` (run by tests/test_mlx_compat.py, and by `require()` before a model loads) names
what it needs and no longer finds.

    model, tokenizer = load(folder, dequantize=True)
    batch = Batch.new(model, completion_batch_size=8, prefill_batch_size=8,
                      prefill_step_size=512)
    uid = batch.insert([prompt_tokens], max_tokens=256, sampler=make_sampler(0.0),
                       stop=stop_sequences(tokenizer))
    progress, tokens = batch.step()       # [Prefilled], [Emitted]

mlx-lm itself is imported lazily (it pulls in transformers: seconds), so importing this module
is cheap. The version range it is tested with is `TESTED` (also pyproject.toml's pin).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import import_module
from pathlib import Path
from typing import Any

import mlx.core as mx

TESTED = ">=0.32.0,<0.33"  # mlx-lm versions this module is tested with (pyproject.toml too)
KV_STEP = 256  # mlx-lm's KV caches grow in whole steps of this many tokens (KVCache.step)

Sampler = Callable[[mx.array], mx.array]
LogitsProcessor = Callable[[mx.array, mx.array], mx.array]
Cache = list[Any]  # one mlx-lm cache object per layer

# What this module needs from mlx-lm: (module, attribute, parameters it must accept).
CONTRACT: list[tuple[str, str, tuple[str, ...]]] = [
    ("mlx_lm", "load", ("path_or_hf_repo", "lazy")),
    ("mlx_lm.utils", "load_model", ("model_path", "lazy")),
    ("mlx_lm.utils", "load_tokenizer", ("model_path", "eos_token_ids")),
    ("mlx_lm.utils", "dequantize_model", ("model",)),
    ("mlx_lm.generate", "BatchGenerator", ("model", "completion_batch_size",
                                           "prefill_batch_size", "prefill_step_size")),
    ("mlx_lm.generate", "BatchGenerator.insert_segments", (
        "segments", "max_tokens", "caches", "all_tokens", "samplers", "logits_processors",
        "stop_sequences")),
    ("mlx_lm.generate", "BatchGenerator.remove", ("uids", "return_prompt_caches")),
    ("mlx_lm.generate", "BatchGenerator.extract_cache", ("uids",)),
    ("mlx_lm.generate", "BatchGenerator.next", ()),
    ("mlx_lm.generate", "BatchGenerator.close", ()),
    ("mlx_lm.generate", "StopSequences", ("stop_sequences",)),
    ("mlx_lm.generate", "StopSequences.matcher", ()),
    ("mlx_lm.generate", "make_stop_sequences", ("tokenizer", "stop_words")),
    ("mlx_lm.generate", "make_text_state_machine", ("tokenizer", "stop_words")),
    ("mlx_lm.generate", "TextStateMachine.make_state", ("initial",)),
    ("mlx_lm.generate", "TextStateMachine.split", ("state", "text")),
    ("mlx_lm.generate", "TextStateMachine.flush", ("state",)),
    ("mlx_lm.generate", "TextStateMachine.discard", ("state",)),
    ("mlx_lm.generate", "generation_stream", ()),
    ("mlx_lm.sample_utils", "make_sampler", ("temp", "top_p", "min_p", "top_k")),
    ("mlx_lm.sample_utils", "make_logits_processors", ("repetition_penalty",)),
    ("mlx_lm.sample_utils", "greedy_sampler", ()),
    ("mlx_lm.models.cache", "make_prompt_cache", ("model",)),
    ("mlx_lm.models.cache", "can_trim_prompt_cache", ("cache",)),
    ("mlx_lm.models.cache", "trim_prompt_cache", ("cache", "num_tokens")),
    ("mlx_lm.models.cache", "KVCache.step", ()),
    ("mlx_lm.models.cache", "BatchKVCache.step", ()),
    ("mlx_lm.models.cache", "LRUPromptCache", ("max_size", "max_bytes")),
    ("mlx_lm.models.cache", "LRUPromptCache.fetch_nearest_cache", ("model", "tokens")),
    ("mlx_lm.models.cache", "LRUPromptCache.insert_cache", ("model", "tokens", "prompt_cache",
                                                            "cache_type")),
    ("mlx_lm.models.cache", "LRUPromptCache.trim_to", ("n_sequences", "n_bytes")),
    ("mlx_lm.tool_parsers.json_tools", "parse_tool_call", ()),
    ("mlx_lm.models.base", "scaled_dot_product_attention", (
        "queries", "keys", "values", "cache", "scale", "mask", "sinks")),
]


class MlxLmIncompatible(RuntimeError):
    """The installed mlx-lm lacks what the inference node needs (see `problems()`)."""


def installed_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mlx-lm")
    except PackageNotFoundError:
        return "not installed"


def problems() -> list[str]:
    """What CONTRACT needs and the installed mlx-lm does not have, one line each ([] if all)."""
    out: list[str] = []
    for module_name, dotted, params in CONTRACT:
        where = f"{module_name}.{dotted}"
        try:
            obj: Any = import_module(module_name)
        except ImportError as e:
            out.append(f"{module_name}: cannot be imported ({e})")
            continue
        try:
            for part in dotted.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            out.append(f"{where}: missing")
            continue
        if dotted.endswith(".step") and obj != KV_STEP:
            out.append(f"{where}: is {obj}, the node counts KV in steps of {KV_STEP}")
        if not params:
            continue
        try:
            accepted = inspect.signature(obj).parameters
        except (TypeError, ValueError):
            continue
        missing = [p for p in params if p not in accepted]
        if missing:
            out.append(f"{where}: no parameter {', '.join(missing)}")
    return out


@cache
def _problems_once() -> tuple[str, ...]:
    return tuple(problems())


def require() -> None:
    """Raise MlxLmIncompatible naming every missing piece, before a model is loaded."""
    found = _problems_once()
    if found:
        raise MlxLmIncompatible(
            f"mlx-lm {installed_version()} is not one this inference node works with (tested: "
            f"mlx-lm{TESTED}); it lacks: {'; '.join(found)}. Install a tested version: "
            f"pip install 'mlx-lm{TESTED}'")


# ---------------------------------------------------------------- loading


def load(path: Path | str, *, dequantize: bool) -> tuple[Any, Any]:
    """(model, tokenizer) from an MLX folder; quantized weights expanded to float32 if asked.

    The weights are evaluated here one at a time, and what that frees goes back to the system:
    evaluating a dequantized model in one `mx.eval` holds every layer's temporaries at once
    (measured on Qwen2.5-Coder-0.5B: 5.5 GB peak RSS for 2.4 GB of float32 weights, and MLX's
    buffer cache then kept 1.4 GB of them resident; one at a time, 4.1 GB peak).
    """
    from mlx_lm import load as mlx_load

    loaded = mlx_load(str(path), lazy=True)
    model, tokenizer = loaded[0], loaded[1]
    if dequantize:
        model = dequantize_model(model)
    evaluate(model)
    return model, tokenizer


def evaluate(model: Any) -> None:
    """Materialize a lazily loaded model's weights one array at a time, returning what each
    step frees (its temporaries, the quantized originals) to the system as it goes."""
    from mlx.utils import tree_flatten

    for i, (_, weight) in enumerate(tree_flatten(model.parameters())):
        mx.eval(weight)
        if i % 8 == 7:
            mx.clear_cache()
    mx.clear_cache()


def replace_attention(attention: Callable[..., Any]) -> Callable[..., Any]:
    """Make `attention` the one every mlx-lm model attends through; returns mlx-lm's own.

    Models call `mlx_lm.models.base.scaled_dot_product_attention`, each module through its own
    `from .base import` binding: the base's and those of model modules already imported are
    replaced, and modules imported later bind the replacement."""
    import sys

    import mlx_lm.models.base as base

    own = getattr(base, "_studio_coder_own_attention", base.scaled_dot_product_attention)
    base._studio_coder_own_attention = own  # type: ignore[attr-defined]
    current = base.scaled_dot_product_attention
    for name, module in list(sys.modules.items()):
        if name == "mlx_lm.models.base" or (
                name.startswith("mlx_lm.models.")
                and getattr(module, "scaled_dot_product_attention", None) in (own, current)):
            setattr(module, "scaled_dot_product_attention", attention)  # noqa: B010
    return own


def dequantize_model(model: Any) -> Any:
    """Quantized layers replaced by float ones (lazily: nothing is computed yet)."""
    from mlx_lm.utils import dequantize_model as mlx_dequantize

    return mlx_dequantize(model)


def load_model(path: Path, *, lazy: bool) -> tuple[Any, dict[str, Any]]:
    """(model, config) built from the folder's config; `lazy`: weights mapped, not read."""
    from mlx_lm.utils import load_model as mlx_load_model

    model, config = mlx_load_model(Path(path), lazy=lazy)
    return model, config


def load_tokenizer(path: Path, eos_token_ids: Any = None) -> Any:
    from mlx_lm.utils import load_tokenizer as mlx_load_tokenizer

    return mlx_load_tokenizer(Path(path), None, eos_token_ids=eos_token_ids)


def generation_stream() -> Any:
    """The MLX stream mlx-lm generates on (collectives must run on it too)."""
    from mlx_lm.generate import generation_stream as stream

    return stream


def native_json_tool_calls(tokenizer: Any) -> bool:
    """Whether the tokenizer's tool parser is mlx-lm's hermes-style JSON one."""
    from mlx_lm.tool_parsers import json_tools

    return bool(tokenizer.tool_parser is json_tools.parse_tool_call)


# ---------------------------------------------------------------- sampling and stops


def greedy_sampler() -> Sampler:
    from mlx_lm.sample_utils import greedy_sampler as greedy

    return greedy  # type: ignore[no-any-return]


def make_sampler(temp: float = 0.0, top_p: float = 0.0, min_p: float = 0.0,
                 top_k: int = 0) -> Sampler:
    from mlx_lm.sample_utils import make_sampler as mlx_make_sampler

    return mlx_make_sampler(temp=temp, top_p=top_p, min_p=min_p, top_k=top_k)  # type: ignore[no-any-return]


def make_logits_processors(repetition_penalty: float | None = None) -> list[LogitsProcessor]:
    from mlx_lm.sample_utils import make_logits_processors as mlx_processors

    return list(mlx_processors(repetition_penalty=repetition_penalty))


def stop_sequences(tokenizer: Any, stop_words: Sequence[str] = ()) -> Any:
    """mlx-lm's stop automaton: the model's EOS tokens and the stop words' token sequences."""
    from mlx_lm.generate import make_stop_sequences

    return make_stop_sequences(tokenizer, list(stop_words))


def no_stop_sequences() -> Any:
    """A stop automaton that never stops (the ranks that follow rank 0)."""
    from mlx_lm.generate import StopSequences

    return StopSequences()


def stop_matcher(stop: Any) -> Any:
    """One stream's position in a stop automaton: `.advance(token) -> bool` (a stop ended)."""
    return stop.matcher()


class TextStates:
    """mlx-lm's TextStateMachine: decoded text split into normal, reasoning and tool text.

    `machine` is built by `text_states(tokenizer, stop_words)` or `plain_text_states()`; the
    state it makes is an opaque value threaded through `split`, `flush` and `discard`.
    """

    def __init__(self, machine: Any) -> None:
        self.machine = machine

    def make_state(self, initial: str = "normal") -> Any:
        return self.machine.make_state(initial)

    @staticmethod
    def split(state: Any, text: str) -> Any:  # (state, [(state name, text), ...])
        from mlx_lm.generate import TextStateMachine

        return TextStateMachine.split(state, text)

    @staticmethod
    def flush(state: Any) -> Any:  # (state, the held-back text, state name)
        from mlx_lm.generate import TextStateMachine

        return TextStateMachine.flush(state)

    @staticmethod
    def discard(state: Any) -> Any:  # (state, state name)
        from mlx_lm.generate import TextStateMachine

        return TextStateMachine.discard(state)


def text_states(tokenizer: Any, stop_words: Sequence[str] = ()) -> TextStates:
    from mlx_lm.generate import make_text_state_machine

    return TextStates(make_text_state_machine(tokenizer, list(stop_words)))


def plain_text_states() -> TextStates:
    """No reasoning or tool markers: everything is normal text."""
    from mlx_lm.generate import TextStateMachine

    return TextStates(TextStateMachine())


# ---------------------------------------------------------------- KV caches


def make_cache(model: Any) -> Cache:
    from mlx_lm.models.cache import make_prompt_cache

    return list(make_prompt_cache(model))


def can_trim(cache: Cache) -> bool:
    from mlx_lm.models.cache import can_trim_prompt_cache

    return bool(can_trim_prompt_cache(cache))


def trim(cache: Cache, tokens: int) -> int:
    """Drop the last `tokens` positions of every layer's cache; returns how many went."""
    from mlx_lm.models.cache import trim_prompt_cache

    trimmed: Any = trim_prompt_cache(cache, tokens)  # mlx-lm annotates it as a list
    return int(trimmed)


def cache_tokens(cache: Cache) -> int:
    """How many positions the cache holds (its first layer's)."""
    return int(cache[0].offset) if cache else 0


def cache_nbytes(cache: Cache) -> int:
    return sum(int(c.nbytes) for c in cache)


def lru_prompt_cache(max_size: int, max_bytes: int) -> Any:
    """mlx-lm's LRUPromptCache: a trie of token sequences with their KV, LRU by bytes."""
    from mlx_lm.models.cache import LRUPromptCache

    return LRUPromptCache(max_size=max_size, max_bytes=max_bytes)


# ---------------------------------------------------------------- the batch


@dataclass
class Prefilled:
    """A sequence's prompt advanced by one prefill step."""

    uid: int
    end_of_segment: bool  # a segment boundary (see Batch.insert) was reached
    end_of_prompt: bool


@dataclass
class Emitted:
    """One token a sequence generated; at its finish, its KV and the tokens the KV holds."""

    uid: int
    token: int
    finish_reason: str | None  # None, "stop" or "length"
    cache: Cache | None = None
    tokens: list[int] | None = None


class _GenerateCore:
    """`mlx.core` as mlx_lm.generate sees it once a Batch is made (`_unnormalized`): the same,
    except that while `unnormalized` is set, `logsumexp` is 0.

    A batch's decode step turns every row's logits into log-probabilities, `logits -
    logsumexp(logits)`, before its samplers see them. Greedy picks the same token either way,
    and MLX's CPU `exp` is slow: over Qwen's 151,936 tokens the log-softmax took 18 ms for 8
    rows against 1.4 ms for their argmax. `Batch.step` sets `unnormalized` for a step whose
    every sequence samples greedily with no logits processor; the log-probabilities mlx-lm
    returns with that step's tokens, which the node does not use, are then the logits."""

    def __init__(self) -> None:
        self.unnormalized = False

    def __getattr__(self, name: str) -> Any:
        return getattr(mx, name)

    def logsumexp(self, a: mx.array, *args: Any, **kwargs: Any) -> mx.array:
        if self.unnormalized:
            return mx.array(0, dtype=a.dtype)
        return mx.logsumexp(a, *args, **kwargs)


@cache
def _unnormalized() -> _GenerateCore:
    """Installs the _GenerateCore in mlx_lm.generate (once) and returns it: in the namespace
    BatchGenerator's methods resolve `mx` in (`import mlx_lm.generate` can name another)."""
    from mlx_lm.generate import BatchGenerator

    core = _GenerateCore()
    BatchGenerator.next.__globals__["mx"] = core
    return core


class Batch:
    """mlx-lm's BatchGenerator (continuous batching), one sequence at a time.

    Sequences join (`insert`) and leave (`remove`) between steps; `step()` runs one prefill
    chunk or one decode step for all of them.
    """

    def __init__(self, generator: Any) -> None:
        self.generator = generator
        # Per sequence: whether it samples greedily with no logits processor (_GenerateCore)
        self._greedy: dict[int, bool] = {}

    @classmethod
    def new(cls, model: Any, *, completion_batch_size: int, prefill_batch_size: int,
            prefill_step_size: int) -> Batch:
        from mlx_lm.generate import BatchGenerator

        generator = BatchGenerator(model, completion_batch_size=completion_batch_size,
                                   prefill_batch_size=prefill_batch_size,
                                   prefill_step_size=prefill_step_size)
        # BatchGenerator raises the wired limit to the recommended working set on Metal; ours
        # is an explicit option (memory.wired_limit_mb), so put the old one back.
        generator.close()
        return cls(generator)

    def insert(self, segments: list[list[int]], *, max_tokens: int, cache: Cache | None = None,
               cached: Sequence[int] = (), sampler: Sampler | None = None,
               processors: Sequence[LogitsProcessor] = (), stop: Any = None) -> int:
        """Add one sequence; returns its uid.

        `segments`: the prompt tokens still to run (after `cached`, the tokens `cache` holds),
        in pieces: prefill stops at the end of each piece and `step()` reports it, so the KV
        up to there can be taken (`extract`). `stop`: `stop_sequences(...)`.
        """
        (uid,) = self.generator.insert_segments(
            [[list(s) for s in segments]], max_tokens=[max_tokens],
            caches=[cache] if cache is not None else None, all_tokens=[list(cached)],
            samplers=[sampler], logits_processors=[list(processors)],
            stop_sequences=[stop if stop is not None else no_stop_sequences()])
        self._greedy[int(uid)] = sampler is greedy_sampler() and not processors
        return int(uid)

    def remove(self, uids: list[int]) -> None:
        self.generator.remove(uids)
        for uid in uids:
            self._greedy.pop(uid, None)

    def finish(self, uids: list[int]) -> dict[int, tuple[Cache, list[int]]]:
        """Remove sequences, returning each one's KV and the tokens it holds."""
        out = self.generator.remove(uids, return_prompt_caches=True)
        for uid in uids:
            self._greedy.pop(uid, None)
        return {int(uid): (list(cache), list(tokens)) for uid, (cache, tokens) in out.items()}

    def extract(self, uid: int) -> tuple[Cache, list[int]]:
        """A copy of a sequence's KV so far and the tokens it holds; the sequence goes on."""
        out = self.generator.extract_cache([uid])
        cache, tokens = out[uid]
        return list(cache), list(tokens)

    def step(self) -> tuple[list[Prefilled], list[Emitted]]:
        core = _unnormalized()
        core.unnormalized = bool(self._greedy) and all(self._greedy.values())
        try:
            prompt, generated = self.generator.next()
        finally:
            core.unnormalized = False
        for r in generated:
            if r.finish_reason is not None:
                self._greedy.pop(int(r.uid), None)
        return ([Prefilled(int(r.uid), bool(r.end_of_segment), bool(r.end_of_prompt))
                 for r in prompt],
                [Emitted(int(r.uid), int(r.token), r.finish_reason,
                         list(r.prompt_cache) if r.prompt_cache is not None else None,
                         list(r.all_tokens) if r.all_tokens is not None else None)
                 for r in generated])
