"""The README's commands on a fresh machine: `make test` uses OpenBLAS from its first run."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_openblas_installed_by_setup_is_preloaded_in_the_same_make_run(tmp_path: Path) -> None:
    # A fresh machine: the library appears only when a prerequisite (setup) installs it, after
    # make has read the Makefile. Recipes that run later must preload it.
    lib = tmp_path / "libopenblas.so.0"
    probe = tmp_path / "Makefile"
    probe.write_text(
        f"include {REPO / 'Makefile'}\n"
        ".PHONY: fake-setup show\n"
        "fake-setup:\n\ttouch $(OPENBLAS_LIB)\n"
        "show: fake-setup\n\t@echo \"preload=[$$LD_PRELOAD]\"\n")
    out = subprocess.run(["make", "--no-print-directory", "-f", str(probe), "show",
                          f"OPENBLAS_LIB={lib}"], cwd=tmp_path, capture_output=True, text=True,
                         check=True, env={"PATH": "/usr/bin:/bin"}).stdout
    assert f"preload=[{lib}]" in out


def test_the_gemv_forwarder_goes_ahead_of_openblas_and_never_alone(tmp_path: Path) -> None:
    lib = tmp_path / "libopenblas.so.0"
    forwarder = tmp_path / ".venv" / "lib" / "studio-coder" / "libgemv_forward.so"
    forwarder.parent.mkdir(parents=True)
    forwarder.touch()
    probe = tmp_path / "Makefile"
    probe.write_text(f"include {REPO / 'Makefile'}\n.PHONY: show\n"
                     "show:\n\t@echo \"preload=[$$LD_PRELOAD]\"\n")

    def preload() -> str:
        return subprocess.run(["make", "--no-print-directory", "-f", str(probe), "show",
                               f"OPENBLAS_LIB={lib}"], cwd=tmp_path, capture_output=True,
                              text=True, check=True, env={"PATH": "/usr/bin:/bin"}).stdout

    assert "preload=[]" in preload()  # the forwarder forwards to OpenBLAS: not without it
    lib.touch()
    assert f"preload=[{forwarder} {lib}]" in preload()


def test_no_openblas_means_no_preload(tmp_path: Path) -> None:
    probe = tmp_path / "Makefile"
    probe.write_text(f"include {REPO / 'Makefile'}\n.PHONY: show\n"
                     "show:\n\t@echo \"preload=[$$LD_PRELOAD]\"\n")
    out = subprocess.run(["make", "--no-print-directory", "-f", str(probe), "show",
                          f"OPENBLAS_LIB={tmp_path / 'absent.so'}"], cwd=tmp_path,
                         capture_output=True, text=True, check=True,
                         env={"PATH": "/usr/bin:/bin"}).stdout
    assert "preload=[]" in out


def test_make_demo_with_a_model_runs_the_loop_the_bench_kept_for_small_coders() -> None:
    import shlex

    from agent_node.config import load_default_config

    out = subprocess.run(["make", "-n", "--no-print-directory", "demo",
                          "MODEL=qwen2.5-coder-1.5b"], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    [line] = [ln for ln in out.replace("\\\n", " ").splitlines() if "agent-node demo" in ln]
    args = shlex.split(line)
    flags = dict(zip(args, args[1:], strict=False))  # each flag to the word after it
    cfg = load_default_config(REPO / flags["--config"])
    assert cfg.loop.coder == "files" and cfg.loop.keep_definitions and cfg.loop.refuse_repeats
    assert cfg.inference.timeout_s >= 3600
    # A reply writes the example's page and stylesheet whole: at ~3 characters a token, they fit.
    pricing = REPO / "examples" / "pricing"
    whole = sum(len((pricing / f).read_text()) for f in ("index.html", "style.css"))
    assert int(flags["--reply-tokens"]) * 3 > 2 * whole
