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


def test_no_openblas_means_no_preload(tmp_path: Path) -> None:
    probe = tmp_path / "Makefile"
    probe.write_text(f"include {REPO / 'Makefile'}\n.PHONY: show\n"
                     "show:\n\t@echo \"preload=[$$LD_PRELOAD]\"\n")
    out = subprocess.run(["make", "--no-print-directory", "-f", str(probe), "show",
                          f"OPENBLAS_LIB={tmp_path / 'absent.so'}"], cwd=tmp_path,
                         capture_output=True, text=True, check=True,
                         env={"PATH": "/usr/bin:/bin"}).stdout
    assert "preload=[]" in out
