"""A bench run's record, one finished task a line, so that a run that stopped goes on from there.

    python -m bench.agent_tasks --model qwen2.5-coder-1.5b --record run-1.5b.jsonl --json
    # stopped after 9 of 22 tasks (a reboot, the end of the day)? the same command again runs
    # the other 13, and its JSON holds all 22

A full run of a 1.5B coder on a CPU takes hours. The file's first line holds the settings the
run was made with (model, limits, the loop's settings, the tasks' folder); each line after it is
one task's result row, written as the task ends. A task already in the file is not run again. A
file made with other settings is refused: rows from two settings are not one run. A last line
cut short by a kill is dropped, and its task runs again. A task in flight when the run is
stopped (SIGTERM, ^C) or loses its inference node (exit 3) leaves no row: it runs again.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from bench.task_grading import TaskError


class Record:
    def __init__(self, path: Path | None, settings: dict[str, Any]) -> None:
        self.path = path
        self.settings = json.loads(json.dumps(settings))  # as the file will give it back
        self.rows: dict[str, dict[str, Any]] = {}
        self.stopped = False
        self._lock = threading.Lock()
        if path is None:
            return
        text = _read(path)
        if not text.strip():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"settings": self.settings}) + "\n", encoding="utf-8")
            return
        lines = text.splitlines()
        head = _json(lines[0])
        if not isinstance(head, dict) or not isinstance(head.get("settings"), dict):
            raise TaskError(f"--record {path} is not a bench record (its first line holds no "
                            "settings); give a new file")
        if _compared(head["settings"]) != _compared(self.settings):
            raise TaskError(f"--record {path} was made with other settings "
                            f"({_differences(head['settings'], self.settings)}); run with those "
                            "settings to go on with it, or give a new file")
        for line in lines[1:]:
            row = _json(line)
            if isinstance(row, dict) and isinstance(row.get("name"), str):
                self.rows[row["name"]] = row
        if not text.endswith("\n"):  # a line cut short: the next row starts on a line of its own
            with path.open("a", encoding="utf-8") as f:
                f.write("\n")

    def stop(self) -> None:
        """The run is stopping: a task still in flight ends in the stop's own errors (the node
        going away, its channel closed), which are not its result, so no row is kept after."""
        with self._lock:
            self.stopped = True

    def add(self, row: dict[str, Any]) -> bool:
        """Keep one finished task's row; written at once, so a stop loses no finished task.
        False: the run is stopping, and the row is not kept."""
        with self._lock:
            if self.stopped:
                return False
            self.rows[row["name"]] = row
            if self.path is not None:
                with self.path.open("a", encoding="utf-8") as f:
                    f.write(json.dumps(row) + "\n")
            return True


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return ""
    except (OSError, UnicodeDecodeError) as e:
        raise TaskError(f"--record {path}: cannot read it ({e}); give a readable file") from None


def _json(line: str) -> Any:
    try:
        return json.loads(line)
    except ValueError:
        return None


def _compared(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings that make two runs one: all but where the loop's came from (the same
    `[loop]` from another file, or from the defaults, is the same loop)."""
    loop = settings.get("loop")
    if not isinstance(loop, dict):
        return settings
    return {**settings, "loop": {k: v for k, v in loop.items() if k != "config"}}


def _differences(there: dict[str, Any], here: dict[str, Any]) -> str:
    keys = sorted(k for k in there.keys() | here.keys() if there.get(k) != here.get(k))
    said = []
    for k in keys:
        a, b = there.get(k), here.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            said.append(f"{k}: {_differences(a, b)}")
        else:
            said.append(f"{k} {json.dumps(a)} there, {json.dumps(b)} now")
    return "; ".join(said)
