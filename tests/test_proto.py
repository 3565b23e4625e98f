"""The checked-in stubs are exactly what the proto generates, and they import without mlx."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import REPO


def test_checked_in_stubs_match_the_proto(tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO / "inference_node" / "api"))
    from generate import GENERATED, generate  # type: ignore[import-not-found]

    for fresh in generate(tmp_path):
        checked_in = REPO / "inference_node" / "api" / fresh.name
        assert checked_in.read_text() == fresh.read_text(), (
            f"{checked_in.name} is stale: run `make proto` and commit the result"
        )
    assert {p.name for p in tmp_path.iterdir()} >= set(GENERATED)


def test_stubs_import_without_mlx() -> None:
    code = (
        "import sys; sys.modules['mlx'] = None; sys.modules['mlx_lm'] = None\n"
        "from inference_node.api import pb, rpc\n"
        "assert pb.ChatRequest and rpc.InferenceStub\n"
        "from agent_node import config\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
