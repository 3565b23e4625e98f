"""Run records: `$STUDIO_CODER_HOME/runs/<run-id>/`.

`events.jsonl` is the one source of truth: one JSON object per line, each written with a single
`write` and fsync'd before the loop goes on, so a crash or SIGKILL at any moment leaves every
finished step on disk. Everything else in the directory (diffs, test logs, screenshots,
`report.html`) is either referenced by an event or rebuilt from the events.

Event types the loop writes (each has `type` and `t`, seconds since the epoch):
    run_started     task, repo, base, branch, run_branch, worktree, dirty, pid
    classified      ui, asks_for_change, page, reason
    spec            statements, source
    round_started   round, brief_file
    model_call      role, round, model, prompt_tokens, completion_tokens, reasoning_tokens,
                    seconds, decode_tps, finish_reason
    tool_call       round, name, arguments, ok, output_chars, seconds
    coder_done      round, report, turns, tokens, stopped
    gate            round, diff_file, files, test_cmd, test_exit, test_log, test_files_touched, ...
    qa              round, passed, failures, screenshots
    round_verdict   round, verdict, reasons, fixes
    verdict         verdict, rounds, reasons
    approved / rejected / note / error
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent_node.config import studio_home

Listener = Callable[[dict[str, Any]], None]


def runs_root(home: Path | None = None) -> Path:
    return (home or studio_home()) / "runs"


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


class RunRecord:
    """An open run directory; `emit` appends an event durably and tells the listeners."""

    def __init__(self, run_dir: Path) -> None:
        self.dir = run_dir
        self.run_id = run_dir.name
        self.dir.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.dir / "events.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.listeners: list[Listener] = []

    @classmethod
    def create(cls, home: Path | None = None) -> RunRecord:
        root = runs_root(home)
        root.mkdir(parents=True, exist_ok=True)
        while True:
            run_dir = root / new_run_id()
            if not run_dir.exists():
                return cls(run_dir)

    def emit(self, type_: str, **fields: Any) -> dict[str, Any]:
        event = {"type": type_, "t": round(time.time(), 3), **fields}
        line = (json.dumps(event, default=str, ensure_ascii=False) + "\n").encode()
        os.write(self._fd, line)  # one write per event: a kill cannot interleave two lines
        os.fsync(self._fd)
        for listener in self.listeners:
            listener(event)
        return event

    def write_text(self, name: str, text: str) -> Path:
        path = self.dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return path

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def read_events(run_dir: Path) -> list[dict[str, Any]]:
    """Every complete event; a torn last line (a kill mid-write) is skipped, not an error."""
    path = run_dir / "events.jsonl"
    if not path.exists():
        return []
    events = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


def summarize(run_dir: Path, events: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """What `agent-node runs`, `approve` and `--json` need, folded from the events."""
    events = read_events(run_dir) if events is None else events
    out: dict[str, Any] = {
        "run_id": run_dir.name,
        "run_dir": str(run_dir),
        "verdict": "incomplete",
        "rounds": 0,
        "reasons": [],
        "models": [],
        "tokens": {"prompt": 0, "completion": 0, "reasoning": 0},
        "state": "",
    }
    models: list[str] = []
    for e in events:
        kind = e.get("type")
        if kind == "run_started":
            for key in ("task", "repo", "base", "branch", "run_branch", "worktree", "dirty"):
                out[key] = e.get(key)
            out["started"] = e.get("t")
        elif kind == "round_started":
            out["rounds"] = max(out["rounds"], int(e.get("round", 0)))
        elif kind == "model_call":
            if e.get("model") and e["model"] not in models:
                models.append(e["model"])
            out["tokens"]["prompt"] += int(e.get("prompt_tokens", 0))
            out["tokens"]["completion"] += int(e.get("completion_tokens", 0))
            out["tokens"]["reasoning"] += int(e.get("reasoning_tokens", 0))
        elif kind == "verdict":
            out["verdict"] = e.get("verdict", "fail")
            out["reasons"] = e.get("reasons", [])
            out["ended"] = e.get("t")
        elif kind in ("approved", "rejected"):
            out["state"] = kind
    out["models"] = models
    return out


def list_runs(home: Path | None = None) -> list[dict[str, Any]]:
    root = runs_root(home)
    if not root.is_dir():
        return []
    dirs = sorted(p for p in root.iterdir() if (p / "events.jsonl").exists())
    return [summarize(p) for p in dirs]


def find_run(run_id: str, home: Path | None = None) -> Path:
    """The run directory for `run_id` (a unique prefix is enough); ValueError names the problem."""
    root = runs_root(home)
    exact = root / run_id
    if run_id and (exact / "events.jsonl").exists():
        return exact
    found = root.glob(f"{run_id}*") if run_id else iter(())
    matches = [p for p in found if (p / "events.jsonl").exists()]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise ValueError(f"no run {run_id!r} under {root}; `agent-node runs` lists them")
    names = ", ".join(sorted(p.name for p in matches)[:5])
    raise ValueError(f"run id {run_id!r} matches {len(matches)} runs ({names}); give more of it")
