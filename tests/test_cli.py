"""The command lines: subcommand dispatch, `--json` output, exit codes, messages."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import REPO


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=120, env={**os.environ, **(env or {})})


def write_config(tmp_path: Path, models: dict[str, Path]) -> Path:
    lines = ['[server]\nport = 1\n']  # nothing listens there: "loaded?" is unknown
    for name, path in models.items():
        lines.append(f'[[models]]\nname = "{name}"\npath = "{path}"\nrole = "coder"\n')
    cfg = tmp_path / "inference-node.toml"
    cfg.write_text("\n".join(lines))
    return cfg


def test_models_lists_the_catalog_as_json_with_footprints(tmp_path, chain_models):
    cfg = write_config(tmp_path, {"hello": chain_models["hello"]})
    out = run("inference_node.cli", "models", "--config", str(cfg), "--json")
    assert out.returncode == 0, out.stderr
    (row,) = json.loads(out.stdout)["models"]
    assert row["name"] == "hello" and row["role"] == "coder"
    assert row["weights_bytes"] > 0 and row["kv_bytes_per_token"] > 0
    assert row["loaded"] is None  # no server answered


def test_unknown_config_key_is_refused_naming_key_and_file(tmp_path):
    cfg = tmp_path / "inference-node.toml"
    cfg.write_text("[server]\nprot = 50051\n")
    out = run("inference_node.cli", "models", "--config", str(cfg))
    assert out.returncode == 2
    assert "unknown key 'prot'" in out.stderr and str(cfg) in out.stderr


def test_a_model_folder_that_is_missing_is_named(tmp_path):
    cfg = write_config(tmp_path, {"ghost": tmp_path / "nowhere"})
    out = run("inference_node.cli", "models", "--config", str(cfg))
    assert out.returncode == 2
    assert "ghost" in out.stderr and "no model folder" in out.stderr


def test_pull_without_network_fails_clearly_and_leaves_nothing(tmp_path):
    out = run("inference_node.cli", "pull", "mlx-community/some-model", "--store",
              str(tmp_path), env={"HF_HUB_ETAG_TIMEOUT": "2", "HF_HUB_DOWNLOAD_TIMEOUT": "2",
                                  "HF_ENDPOINT": "http://127.0.0.1:9"})
    assert out.returncode == 3
    assert "could not download mlx-community/some-model" in out.stderr
    assert "import-gguf" in out.stderr
    assert list(tmp_path.iterdir()) == []


def test_import_gguf_refuses_a_file_that_is_not_a_gguf(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 not a gguf at all")
    out = run("inference_node.cli", "import-gguf", str(fake), "--name", "x", "--store",
              str(tmp_path / "store"))
    assert out.returncode == 2
    assert "GGUF" in out.stderr
    assert not (tmp_path / "store" / "x").exists()


def test_unknown_subcommands_are_usage_errors():
    for module in ("inference_node.cli", "agent_node.cli"):
        out = run(module, "frobnicate")
        assert out.returncode == 2
        assert "unknown command 'frobnicate'" in out.stderr
