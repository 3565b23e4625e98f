"""`check_page`: the one call the agent loop makes for visual QA.

    with Capturer(cfg.qa) as capturer:
        result = check_page(url, spec, model=model, describer=describer,
                            capturer=capturer, out_dir=run_dir / "qa-1")
        if not result.passed: ...result.failures...

Each artefact is written to `out_dir` as soon as it exists (desktop.png, phone.png, logs.json,
facts.json, descriptions.json, verdict.json, result.json), so a crash loses nothing done.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from agent_node import activity
from agent_node.model import Describer, Model
from agent_node.qa.capture import Capturer
from agent_node.qa.describe import describe_capture
from agent_node.qa.facts import facts_of
from agent_node.qa.judge import judge
from agent_node.qa.result import QAResult
from agent_node.qa.spec import Spec, load_spec


def check_page(
    url: str,
    spec: Spec | Path,
    *,
    model: Model | None,
    describer: Describer | None,
    capturer: Capturer,
    out_dir: Path,
) -> QAResult:
    """Capture `url` in both viewports, describe, judge against `spec`; write it all to out_dir.

    `model` None gives a facts-only verdict; `describer` None says plainly that nothing was
    described. Raises QAError for bad input (no browser, page unreachable, bad spec) and
    lets the inference node's errors through.
    """
    spec = spec if isinstance(spec, Spec) else load_spec(spec)
    out_dir.mkdir(parents=True, exist_ok=True)
    with activity.stage("capture"):
        capture = capturer.capture(url)
    shots = {}
    for name, vc in capture.viewports.items():
        shots[name] = out_dir / f"{name}.png"
        shots[name].write_bytes(vc.screenshot)
    notes = sorted({n for vc in capture.viewports.values() for n in vc.notes})
    _write(out_dir / "logs.json", {n: vc.logs() for n, vc in capture.viewports.items()})
    facts = facts_of(capture, min_font_px=capturer.cfg.min_font_px)
    spec.apply(facts)
    _write(out_dir / "facts.json", [f.to_dict() for f in facts])
    with activity.stage("describe") if describer is not None else nullcontext():
        descriptions = describe_capture(describer, capture)
    _write(out_dir / "descriptions.json", {k: d.to_dict() for k, d in descriptions.items()})
    with activity.stage("judge"):
        verdict = judge(spec, facts, descriptions, model=model, url=url,
                        attempts=capturer.cfg.judge_attempts,
                        max_tokens=capturer.cfg.judge_max_tokens or None)
    _write(out_dir / "verdict.json", verdict.to_dict())
    result = QAResult(url, out_dir, verdict, shots, facts, descriptions, capture.seconds, notes)
    _write(out_dir / "result.json", result.to_dict())
    return result


def _write(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
