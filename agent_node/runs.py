"""Run records: `$STUDIO_CODER_HOME/runs/<run-id>/`, written by agent-node alone.

`events.jsonl` is the one source of truth: one JSON object per line, each written with a single
`write` and fsync'd before the loop goes on, so a crash or SIGKILL at any moment leaves every
finished step on disk. Everything else in the directory (diffs, test logs, screenshots,
`report.html`) is either referenced by an event or rebuilt from the events.

Every line is signed (`record_key.py`: an HMAC chained line to line, with a key the coder's
sandbox cannot see), and a record is only as good as its signed prefix: `load_record` stops at
the first line that does not verify and says which, `summarize` then calls the run "tampered",
and approve refuses it. Records are private: folders 0700, files 0600.

Each line is one event of `agent_node/events.py` (its table: docs/run-record.md); `emit` takes
only those, checked, and `summarize` and the report read them back through the same types.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent_node.config import record_key_path, studio_home
from agent_node.events import (
    Approved,
    Event,
    ModelCall,
    Rejected,
    RoundStarted,
    RunStarted,
    RunVerdict,
    ScreenEvent,
    parse_events,
    to_record,
)
from agent_node.record_key import RecordKeyError, event_mac, load_key, verify

Listener = Callable[[ScreenEvent], None]  # told each event as it is written (and in-flight calls)


def runs_root(home: Path | None = None) -> Path:
    return (home or studio_home()) / "runs"


def private_dir(path: Path) -> Path:
    """`path` and its missing parents made 0700 (an existing one is made 0700 too)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def make_private(root: Path) -> None:
    """Everything under `root` (files a browser or a tool wrote) made 0600, folders 0700."""
    for folder, _dirs, files in os.walk(root):
        os.chmod(folder, 0o700)
        for name in files:
            path = Path(folder) / name
            if not path.is_symlink():
                os.chmod(path, 0o600)


def write_private(path: Path, text: str) -> Path:
    """Write `path` as a 0600 file, atomically: a reader sees the old file or the new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    tmp.replace(path)
    return path


NOT_OURS = "was not written by agent-node"


class RecordTampered(RuntimeError):
    """A record with a line agent-node did not write; the message names the line."""


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


class RunRecord:
    """An open run directory; `emit` appends a signed event durably and tells the listeners.

    `RunRecord(run_dir)` continues an existing record (approve, reject) after checking every
    line of it; RecordTampered when one does not verify."""

    def __init__(self, run_dir: Path) -> None:
        self.dir = run_dir
        self.run_id = run_dir.name
        self._key = load_key(create=True)
        assert self._key is not None
        self._previous = ""
        if (run_dir / "events.jsonl").exists():
            events, problem = load_record(run_dir, self._key)
            if problem:
                raise RecordTampered(f"run {self.run_id}: {problem}")
            self._previous = str(events[-1]["mac"]) if events else ""
        private_dir(self.dir)
        self._fd = os.open(self.dir / "events.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._size = os.fstat(self._fd).st_size  # where the chain's last link ends
        self.listeners: list[Listener] = []

    @classmethod
    def create(cls, home: Path | None = None) -> RunRecord:
        root = private_dir(runs_root(home))
        while True:
            run_dir = root / new_run_id()
            if not run_dir.exists():
                return cls(run_dir)

    def emit(self, event: Event) -> dict[str, Any]:
        """Write `event` (stamped with the time) as one signed line; the line as written.
        `events.MalformedEvent` when it is not a recorded event or a value is not its type."""
        line_obj = to_record(event)  # checked before anything is written
        event = dataclasses.replace(event, t=round(time.time(), 3))
        line_obj["t"] = event.t
        # Through JSON and back first, so what is signed is exactly what a reader will parse.
        line_obj = json.loads(json.dumps(line_obj, ensure_ascii=False))
        assert self._key is not None
        size = os.fstat(self._fd).st_size
        if size != self._size:  # a Ctrl-C landed between a write and its bookkeeping
            self._previous, self._size = _last_mac(self.dir / "events.jsonl"), size
        line_obj["mac"] = event_mac(self._key, self.run_id, self._previous, line_obj)
        line = (json.dumps(line_obj, ensure_ascii=False) + "\n").encode()
        os.write(self._fd, line)  # one write per event: a kill cannot interleave two lines
        os.fsync(self._fd)
        self._previous, self._size = line_obj["mac"], size + len(line)
        for listener in self.listeners:
            listener(event)
        return line_obj

    def write_text(self, name: str, text: str) -> Path:
        path = self.dir / name
        private_dir(path.parent)
        return write_private(path, text)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _last_mac(path: Path, tail: int = 1 << 20) -> str:
    """The signature on the last whole line of `path` ("" if there is none)."""
    with path.open("rb") as f:
        f.seek(max(0, f.seek(0, os.SEEK_END) - tail))
        lines = f.read().split(b"\n")[:-1]
    try:
        return str(json.loads(lines[-1])["mac"]) if lines else ""
    except (ValueError, KeyError, TypeError):
        return ""


def load_record(run_dir: Path, key: bytes | None = None) -> tuple[list[dict[str, Any]], str]:
    """(the events agent-node signed, up to the first that does not verify; what is wrong, or
    ""). A torn last line (a kill mid-write) is skipped, not an error. Without `key`, the
    record key is read; when there is none, nothing can be verified and that is the problem."""
    path = run_dir / "events.jsonl"
    if not path.exists():
        return [], ""
    if key is None:
        try:
            key = load_key()
        except RecordKeyError as e:
            return [], str(e)
        if key is None:
            return [], f"cannot be verified: there is no record key at {record_key_path()}"
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")[:-1]  # after the last newline: nothing, or an unfinished write
    events: list[dict[str, Any]] = []
    previous = ""
    for number, line in enumerate(lines, 1):
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            event = None
        if isinstance(event, dict) and "mac" not in event and not events:
            return events, (f"line {number} of {path} is not signed (a record from before "
                            "agent-node signed them, or one written by hand)")
        if not isinstance(event, dict) or not verify(key, run_dir.name, previous, event):
            return events, (f"line {number} of {path} {NOT_OURS} (its signature does not "
                            "match); the record cannot be trusted")
        events.append(event)
        previous = str(event["mac"])
    return events, ""


def read_events(run_dir: Path) -> list[dict[str, Any]]:
    """The events agent-node wrote, up to the first line that does not verify."""
    return load_record(run_dir)[0]


def summarize(run_dir: Path, events: list[dict[str, Any]] | None = None,
              problem: str | None = None) -> dict[str, Any]:
    """What `agent-node runs`, `approve` and `--json` need, folded from the signed events.

    A record with a line agent-node did not write is "tampered", whatever it says."""
    if events is None:
        events, problem = load_record(run_dir)
    problem = problem or ""
    out: dict[str, Any] = {
        "run_id": run_dir.name,
        "run_dir": str(run_dir),
        "verdict": "incomplete",
        "rounds": 0,
        "reasons": [],
        "models": [],
        # cached: prompt tokens the node served from its cache; recomputed: ones it had run
        # before and computed again (evicted, or the conversation's past sent changed);
        # proposed, accepted: speculative decoding's proposals and the ones the model kept
        "tokens": {"prompt": 0, "cached": 0, "recomputed": 0, "completion": 0, "reasoning": 0,
                   "proposed": 0, "accepted": 0},
        "state": "",
        "integrity": problem,
    }
    models: list[str] = []
    for e in parse_events(events):
        match e:
            case RunStarted() if "started" not in out:
                for key in ("task", "repo", "base", "branch", "run_branch", "checkout", "dirty",
                            "sandbox"):
                    out[key] = getattr(e, key)
                out["started"] = e.t
            case RoundStarted():
                out["rounds"] = max(out["rounds"], e.round)
            case ModelCall():
                if e.model and e.model not in models:
                    models.append(e.model)
                out["tokens"]["prompt"] += e.prompt_tokens
                out["tokens"]["cached"] += e.cached_prompt_tokens
                out["tokens"]["recomputed"] += e.recomputed_prompt_tokens
                out["tokens"]["completion"] += e.completion_tokens
                out["tokens"]["reasoning"] += e.reasoning_tokens
                out["tokens"]["proposed"] += e.draft_tokens
                out["tokens"]["accepted"] += e.accepted_draft_tokens
            case RunVerdict():
                out["verdict"] = e.verdict
                out["reasons"] = e.reasons
                out["commit"] = e.commit
                out["ended"] = e.t
            case Approved() | Rejected():
                out["state"] = e.type
    out["models"] = models
    if problem:  # what the lines say counts for nothing
        out["verdict"] = "tampered" if NOT_OURS in problem else "unverified"
        out["reasons"] = [problem]
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
