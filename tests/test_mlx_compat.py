"""mlx-lm's internals reach the node through mlx_compat alone, and an upgrade that breaks them
says which names it lacks, before a model loads."""

from __future__ import annotations

import tomllib
from importlib import import_module
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO
from packaging.specifiers import SpecifierSet

from inference_node import mlx_compat


def test_the_installed_mlx_lm_has_everything_the_node_uses_and_is_a_tested_version() -> None:
    assert mlx_compat.problems() == []
    assert version("mlx-lm") in SpecifierSet(mlx_compat.TESTED)


def test_pyproject_pins_mlx_lm_to_the_tested_range() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    deps = project["optional-dependencies"]["inference"]
    (pin,) = [d for d in deps if d.startswith("mlx-lm")]
    assert SpecifierSet(pin.removeprefix("mlx-lm")) == SpecifierSet(mlx_compat.TESTED)


def test_a_renamed_internal_is_named_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    generate = import_module("mlx_lm.generate")  # the package's `generate` is a function
    cache = import_module("mlx_lm.models.cache")
    monkeypatch.delattr(generate.BatchGenerator, "insert_segments")
    monkeypatch.setattr(cache.KVCache, "step", 512)
    found = mlx_compat.problems()
    assert "mlx_lm.generate.BatchGenerator.insert_segments: missing" in found
    assert any(p.startswith("mlx_lm.models.cache.KVCache.step: is 512") for p in found)
    mlx_compat._problems_once.cache_clear()
    try:
        with pytest.raises(mlx_compat.MlxLmIncompatible,
                           match=r"insert_segments: missing.*pip install 'mlx-lm>=0\.32"):
            mlx_compat.require()
    finally:
        mlx_compat._problems_once.cache_clear()


def test_only_mlx_compat_and_the_gguf_importer_import_mlx_lm() -> None:
    importers = sorted(
        str(p.relative_to(REPO)) for p in (REPO / "inference_node").rglob("*.py")
        if "import mlx_lm" in p.read_text() or "from mlx_lm" in p.read_text())
    assert importers == ["inference_node/gguf/importer.py", "inference_node/mlx_compat.py"]


def test_a_greedy_batch_step_skips_the_log_softmax_and_keeps_its_tokens(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """mlx-lm normalizes every row's logits each step; a batch whose every sequence samples
    greedily with no processor gets the same tokens without it (its cost on a CPU: see
    mlx_compat._GenerateCore). One sequence that samples otherwise turns it back on."""
    import mlx.core as mx
    from tiny_models import write_random_chat_model

    from inference_node import mlx_compat

    model, tokenizer = mlx_compat.load(write_random_chat_model(tmp_path / "m", seed=3),
                                       dequantize=False)
    prompts = [tokenizer.encode(text) for text in ("one two three", "four five six seven")]
    normalized: list[tuple[int, ...]] = []
    logsumexp = mx.logsumexp

    def spy(a: mx.array, *args: Any, **kwargs: Any) -> mx.array:
        normalized.append(tuple(a.shape))
        return logsumexp(a, *args, **kwargs)

    monkeypatch.setattr(mx, "logsumexp", spy)

    def decode(samplers: list[Any]) -> list[list[int]]:
        batch = mlx_compat.Batch.new(model, completion_batch_size=4, prefill_batch_size=4,
                                     prefill_step_size=64)
        uids = [batch.insert([p], max_tokens=12, sampler=s) for p, s in zip(prompts, samplers,
                                                                            strict=True)]
        tokens: dict[int, list[int]] = {uid: [] for uid in uids}
        while any(len(t) < 12 for t in tokens.values()):
            for r in batch.step()[1]:
                tokens[r.uid].append(r.token)
        return [tokens[uid] for uid in uids]

    greedy = mlx_compat.greedy_sampler()
    fast = decode([greedy, greedy])
    assert normalized == []
    argmax_of_logprobs = lambda logprobs: mx.argmax(logprobs, axis=-1)  # noqa: E731
    mixed = decode([greedy, argmax_of_logprobs])  # the same choice, through log-probabilities
    assert normalized  # the second sequence's sampler needed them: every row was normalized
    assert mixed == fast
