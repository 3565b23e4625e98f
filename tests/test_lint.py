"""ruff and mypy stay clean: the house style is checked, not hoped for."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import REPO

BIN = Path(sys.executable).parent


def test_ruff_is_clean():
    out = subprocess.run([str(BIN / "ruff"), "check", "."], cwd=REPO, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stdout


def test_mypy_is_clean():
    out = subprocess.run([str(BIN / "mypy"), "inference_node", "agent_node", "studio_common"],
                         cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout
