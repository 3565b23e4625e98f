"""The command lines: subcommand dispatch, `--json` output, exit codes, messages."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import REPO

from studio_common.net import free_port


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


def test_serve_on_a_public_address_is_a_usage_error_without_a_traceback():
    out = run("inference_node.cli", "serve", "--host", "0.0.0.0", "--port", str(free_port()))
    assert out.returncode == 2
    assert "refusing to listen on 0.0.0.0" in out.stderr and "SSH tunnel" in out.stderr
    assert "--allow-remote" in out.stderr
    assert "Traceback" not in out.stderr


def test_serve_on_a_taken_port_is_a_usage_error_without_a_traceback(tmp_path, chain_models):
    import socket

    cfg = write_config(tmp_path, {"hello": chain_models["hello"]})
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = run("inference_node.cli", "serve", "--config", str(cfg), "--port", str(port))
    assert out.returncode == 2
    assert "port is taken" in out.stderr and "--port" in out.stderr
    assert "Traceback" not in out.stderr


def test_the_start_up_line_gives_the_budget_in_gib(tmp_path, chain_models):
    """budget_gb = 88 is 88 GiB; it printed "94.5 GB" (10**9) before."""
    import os
    import signal

    cfg = write_config(tmp_path, {"hello": chain_models["hello"]})
    cfg.write_text(cfg.read_text().replace("[server]\nport = 1\n",
                                           "[server]\nport = 1\n\n[memory]\nbudget_gb = 88\n"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "inference_node.cli", "serve", "--config", str(cfg), "--port",
         str(free_port())], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        env=os.environ.copy())
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    # the prompt cache's 512 MiB is set aside from the configured 88 GiB, and says so
    assert "budget 87.5 GiB (budget_gb = 88.0 in" in line, line + err
    assert "− prompt cache 512 MiB" in line
    assert "memory budget 87.5 GiB" in err
    assert " GB" not in line


def test_models_prints_sizes_in_gib(tmp_path, chain_models):
    cfg = write_config(tmp_path, {"hello": chain_models["hello"]})
    out = run("inference_node.cli", "models", "--config", str(cfg))
    assert out.returncode == 0, out.stderr
    header, row = out.stdout.splitlines()[:2]
    assert row.startswith("hello") and " GiB " in row and " KiB " in row
    assert " GB" not in out.stdout
