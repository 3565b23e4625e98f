"""`agent-node run` on the embedded default with the default configuration reaches a verdict.

Real everything: the session's SmolLM2 inference server, real gRPC, real git, the real gate
running pytest. Only `[inference] target` is set (the server is on a free port); every other
key is its default, as a new user has it. The 135M model is not expected to fix anything: the
run must end in pass or fail, never error, with the gate run and the record complete.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from user_repo import fingerprint, isolate, make_repo

from agent_node.loop import cli
from agent_node.runs import read_events


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    isolate(monkeypatch, tmp_path)


CALC = "def add(a, b):\n    return a - b\n"
TEST_CALC = "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n"


@pytest.mark.slow
@pytest.mark.timeout(1200)  # ~2.5 min on a loaded 2-core VM; generous for a busier one
def test_run_with_default_config_on_smollm2_reaches_a_verdict_with_a_complete_record(
        smol_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("STUDIO_CODER_HOME", str(tmp_path / "home"))
    repo = make_repo(tmp_path, {"calc.py": CALC, "test_calc.py": TEST_CALC})
    before = fingerprint(repo)
    config = tmp_path / "agent-node.toml"
    config.write_text(f'[inference]\ntarget = "{smol_server[1]}"\n')

    code = cli.run_main(["Fix add() in calc.py so it returns the sum.", "--repo", str(repo),
                         "--config", str(config), "--json"])
    out, err = capsys.readouterr()

    summary = json.loads(out)  # stdout is the one JSON object
    assert summary["verdict"] in ("pass", "fail"), (summary, err[-3000:])
    assert code == (0 if summary["verdict"] == "pass" else 1)
    run_dir = Path(summary["run_dir"])
    events = read_events(run_dir)
    kinds = [e["type"] for e in events]
    assert "error" not in kinds
    for kind in ("run_started", "classified", "round_started", "model_call", "coder_done",
                 "gate", "round_verdict", "verdict"):
        assert kind in kinds, f"no {kind} event in {kinds}"
    gates = [e for e in events if e["type"] == "gate"]
    assert len(gates) == summary["rounds"] >= 1
    for gate in gates:  # the gate ran the repository's tests itself, every round
        assert "pytest" in gate["test_cmd"] and gate["test_exit"] is not None
        assert (run_dir / gate["diff_file"]).is_file() and (run_dir / gate["test_log"]).is_file()
    assert "Gate" in (run_dir / "report.html").read_text()
    assert fingerprint(repo) == before  # the user's branch, index and files: untouched
    assert re.search(r"tests +round 1 done in \d+\.\ds", err), err[-3000:]
