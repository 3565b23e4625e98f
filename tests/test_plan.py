"""`inference-node plan`: do the configured models fit together, before anything loads?"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny_models import write_random_llama

from inference_node.admission import GB
from inference_node.footprint import Footprint
from inference_node.plan import PlannedModel, PlanResult, main, plan

MB = 1 << 20


def synthetic(name: str, weights_gb: float, kv_gb_at_context: float, pinned: bool = False,
              role: str = "coder") -> PlannedModel:
    context = 32768
    fp = Footprint(int(weights_gb * GB), int(kv_gb_at_context * GB) // context, 0, 64 * MB, "")
    return PlannedModel(name, fp, context, pinned, role)


def fits_together(result: PlanResult, *names: str) -> bool:
    """Whether the plan found `names` to fit together (KeyError: not a combination it tried)."""
    want = tuple(sorted(names))
    for combo, _, ok in result.combinations:
        if tuple(sorted(combo)) == want:
            return ok
    raise KeyError(f"no combination {names!r} in this plan")


def test_81_gb_coder_and_3_gb_vision_model_on_a_96_gb_machine() -> None:
    budget = 96 * GB - 4 * GB  # recommended working set less the default reserve
    coder = synthetic("coder", 81.0, 6.0, pinned=True)
    vision = synthetic("vision", 3.0, 0.5, role="vision")
    big_vision = synthetic("big-vision", 8.0, 1.0, role="vision")
    result = plan([coder, vision, big_vision], budget)
    assert fits_together(result, "coder", "vision")  # 81 + 6 + 3 + 0.5 + overhead < 92
    assert not fits_together(result, "coder", "big-vision")
    assert fits_together(result, "vision", "big-vision")
    assert not result.fits
    assert ("coder", "vision") in result.largest_fitting()
    assert result.too_big_alone == []


def test_a_model_too_big_alone_is_named() -> None:
    result = plan([synthetic("giant", 100.0, 1.0)], 92 * GB)
    assert result.too_big_alone == ["giant"] and not result.fits


def write_model(path: Path, layers: int) -> None:
    # tied embeddings, as mlx-lm's llama defaults to
    write_random_llama(path, num_hidden_layers=layers, max_position_embeddings=4096,
                       tie_word_embeddings=True)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("STUDIO_CODER_HOME", str(tmp_path))
    write_model(tmp_path / "models" / "alpha", 4)  # ~10 MB weights
    write_model(tmp_path / "models" / "beta", 4)
    return tmp_path


def config(home: Path, budget_gb: float) -> Path:
    toml = home / "inference-node.toml"
    toml.write_text(f"""
[memory]
budget_gb = {budget_gb}
overhead_mb = 1.0

[[models]]
name = "alpha"
path = "alpha"
pinned = true
context = 2048

[[models]]
name = "beta"
path = "beta"
role = "vision"
""")
    return toml


def test_plan_exits_0_when_the_configured_models_fit(home: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    assert main(["--config", str(config(home, 1.0))]) == 0
    out = capsys.readouterr().out
    assert "alpha *" in out and "fit together" in out and "budget_gb = 1.0" in out


def test_plan_exits_1_when_they_do_not_fit_and_says_what_does(
        home: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["--config", str(config(home, 0.04)), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["fits"] is False and doc["total_bytes"] > doc["budget_bytes"]
    alpha = doc["models"][0]
    assert alpha["context"] == 2048
    assert alpha["kv_bytes"] == 2048 * alpha["kv_per_token"]
    assert ["alpha"] in doc["largest_fitting"] and ["beta"] in doc["largest_fitting"]


def test_plan_exits_2_for_a_bad_config(home: Path, capsys: pytest.CaptureFixture) -> None:
    toml = home / "bad.toml"
    toml.write_text('[memory]\nbudget_gb = 1.0\nbudgte = 2\n')
    assert main(["--config", str(toml)]) == 2
    assert "budgte" in capsys.readouterr().err
    toml.write_text('[[models]]\nname = "ghost"\npath = "ghost"\n')
    assert main(["--config", str(toml)]) == 2
    assert "no model folder" in capsys.readouterr().err
