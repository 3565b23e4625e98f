"""The checked-in stubs are exactly what the proto generates, and they import without mlx."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from conftest import REPO


def test_checked_in_stubs_match_the_proto(tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO / "inference_node" / "api"))
    from generate import GENERATED, generate  # type: ignore[import-not-found]

    for fresh in generate(tmp_path):
        checked_in = REPO / "inference_node" / "api" / fresh.name
        assert _unversioned(checked_in.read_text()) == _unversioned(fresh.read_text()), (
            f"{checked_in.name} is stale: run `make proto` and commit the result"
        )
    assert {p.name for p in tmp_path.iterdir()} >= set(GENERATED)


def test_the_stubs_ask_for_no_newer_grpc_than_pyproject_promises() -> None:
    # The service stub refuses to import under a grpcio older than the grpcio-tools that
    # generated it; pyproject's floor must be at least that, whatever tools version is current.
    import tomllib

    stub = (REPO / "inference_node" / "api" / "inference_pb2_grpc.py").read_text()
    made_by = re.search(r"^GRPC_GENERATED_VERSION = '([\d.]+)'$", stub, re.M)
    assert made_by is not None
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    floor = next(d for d in deps if re.match(r"grpcio>=", d))
    assert _version(floor.split(">=")[1]) >= _version(made_by.group(1)), (floor, made_by[1])


def _unversioned(text: str) -> str:
    """A generated file without the grpcio-tools version that made it: a new tools release on
    the registry changes that line alone (1.85.1 -> 1.85.4 broke a fresh CI clone)."""
    return re.sub(r"^GRPC_GENERATED_VERSION = .*$", "GRPC_GENERATED_VERSION = ?", text,
                  flags=re.M)


def _version(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.split("."))


def test_stubs_import_without_mlx() -> None:
    code = (
        "import sys; sys.modules['mlx'] = None; sys.modules['mlx_lm'] = None\n"
        "from inference_node.api import pb, rpc\n"
        "assert pb.ChatRequest and rpc.InferenceStub\n"
        "from agent_node import config\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
