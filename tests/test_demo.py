"""The whole loop end to end: real inference node (SmolLM2), real gRPC, real Chromium, on the
bundled example. It checks the run record is complete, not that a 135M model succeeds."""

from __future__ import annotations

import json
from pathlib import Path

STAGES = ["run_started", "classified", "spec", "round_started", "model_call", "tool_call",
          "coder_done", "gate", "qa", "round_verdict", "verdict"]


def test_demo_runs_every_stage_and_leaves_a_complete_record(smol_server, tmp_path, monkeypatch,
                                                            capsys):
    from agent_node import demo

    monkeypatch.setenv("STUDIO_CODER_HOME", str(tmp_path / "home"))
    cfg = tmp_path / "agent-node.toml"
    cfg.write_text(f'[inference]\ntarget = "{smol_server[1]}"\ncoder = ["smollm2"]\n')
    code = demo.main(["--config", str(cfg), "--rounds", "1", "--turns", "2",
                      "--reply-tokens", "64"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "verdict: " in out and "report: " in out

    (run_dir,) = (tmp_path / "home" / "runs").iterdir()
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    kinds = [e["type"] for e in events]
    for stage in STAGES:
        assert stage in kinds, f"no {stage} event in {kinds}"
    assert kinds.index("gate") > kinds.index("coder_done")
    verdict = events[kinds.index("verdict")]
    assert verdict["verdict"] in ("pass", "fail") and verdict.get("reasons") is not None
    assert any(e.get("model") == "smollm2" for e in events if e["type"] == "model_call")
    report = (run_dir / "report.html").read_text()
    assert "Visual QA" in report and "Gate" in report
    shots = sorted(p.name for p in Path(run_dir).rglob("*.png"))
    assert any("desktop" in s for s in shots) and any("phone" in s for s in shots)
    # the demo's own repository: the user's branch holds only the shipped example
    (repo,) = (tmp_path / "home" / "demo").iterdir()
    assert (repo / "index.html").read_text().count('<section class="plan') == 3
