"""mlx-lm's internals reach the node through mlx_compat alone, and an upgrade that breaks them
says which names it lacks, before a model loads."""

from __future__ import annotations

import tomllib
from importlib import import_module
from importlib.metadata import version

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
