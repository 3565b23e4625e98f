"""Agent-loop task bench, in the spirit of aider's: tiny coding tasks graded by hidden tests.

    .venv/bin/python -m bench.agent_tasks [--quick] [--rounds N] [--turns N] [--max-tokens N]
                                          [--tasks fizzbuzz,roman] [--target HOST:PORT --model M]

Each task in bench/tasks/<name>/ is a starting repo, a task text and hidden tests. The repo is
copied to a temp folder and committed; `agent_node.loop.run_task` works on it (its gate runs the
repo's visible tests); afterwards each round's real diff (round-N/diff.patch in the run record)
is applied to a fresh copy with the hidden tests added, and pytest grades it. Reported per task:
passed after round 1 and after all rounds, model tokens, wall time, tool calls made and
malformed ones (an unknown tool, arguments that fail the tool's schema, or tool-call markup the
parser could not read), and coder replies that called no tool. Default model: the embedded
SmolLM2 (the float32 copy bench.engine measures) behind a local inference server, reached
through agent_node.client. Limits are small by default so it
runs here; BENCH_AGENT_ROUNDS / _TURNS / _MAX_TOKENS (or the flags) raise them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.stats import smoke

TASKS = Path(__file__).resolve().parent / "tasks"
MALFORMED_PREFIXES = ("error: unknown tool", "error: bad arguments", "error: arguments for")


def log(msg: str) -> None:
    print(f"bench.agent_tasks: {msg}", file=sys.stderr, flush=True)


class CappedModel:
    """A Model whose every reply is capped at `max_tokens`, so one answer cannot run for minutes."""

    def __init__(self, inner: Any, max_tokens: int) -> None:
        self.inner = inner
        self.max_tokens = max_tokens
        self.name = getattr(inner, "name", "")

    def chat(self, messages: list[dict[str, Any]], *, tools: list[dict[str, Any]] | None = None,
             tool_choice: str = "auto", response_format: dict[str, Any] | None = None,
             max_tokens: int | None = None) -> Any:
        cap = min(max_tokens or self.max_tokens, self.max_tokens)
        return self.inner.chat(messages, tools=tools, tool_choice=tool_choice,
                               response_format=response_format, max_tokens=cap)

    def __getattr__(self, item: str) -> Any:
        return getattr(self.inner, item)


class SmokeModel:
    """BENCH_SMOKE's stand-in: answers each loop question at once and writes a known fix.

    The smoke run checks the bench's plumbing (repo setup, the loop, grading, counting) in
    seconds; the real model's path is what --quick and the full run measure.
    """

    name = "smoke-scripted"

    def __init__(self, files: dict[str, str]) -> None:
        self.files = dict(files)

    def chat(self, messages: list[dict[str, Any]], *, tools: list[dict[str, Any]] | None = None,
             tool_choice: str = "auto", response_format: dict[str, Any] | None = None,
             max_tokens: int | None = None) -> Any:
        from agent_node.model import Reply, ToolCall, Usage

        usage = Usage(prompt_tokens=10, completion_tokens=5)
        props = (response_format or {}).get("properties", {})
        if "verdict" in props:
            return Reply(text=json.dumps({"verdict": "pass", "reasons": ["tests pass"],
                                          "fixes": [], "tests_change_ok": True}),
                         usage=usage, model=self.name)
        if "ui" in props:
            return Reply(text=json.dumps({"ui": False, "asks_for_change": True, "page": "",
                                          "reason": "smoke"}), usage=usage, model=self.name)
        if tools and self.files:
            path, content = self.files.popitem()
            return Reply(tool_calls=[ToolCall(id="w1", name="write",
                                              arguments={"path": path, "content": content})],
                         finish_reason="tool_calls", usage=usage, model=self.name)
        return Reply(text="done", usage=usage, model=self.name)


SMOKE_FIX = {"fizzbuzz": {"fizz.py": "def fizzbuzz(n: int) -> str:\n    return 'Fizz' * (n % 3 "
                          "== 0) + 'Buzz' * (n % 5 == 0) or str(n)\n"}}


def task_names() -> list[str]:
    return sorted(p.name for p in TASKS.iterdir() if (p / "task.md").is_file())


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@localhost",
           "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@localhost"}
    return subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True,
                          text=True).stdout


def start_repo(task: str, dest: Path) -> Path:
    shutil.copytree(TASKS / task / "repo", dest)
    _git(dest, "init", "-q", "-b", "main")
    _git(dest, "add", "-A")
    _git(dest, "commit", "-q", "-m", "start")
    return dest


def grade(task: str, patch: Path | None, where: Path) -> bool:
    """Apply `patch` (None: nothing) to a fresh copy of the start, add hidden tests, run pytest."""
    repo = start_repo(task, where)
    if patch is not None and patch.is_file() and patch.read_text().strip():
        try:
            _git(repo, "apply", "--whitespace=nowarn", str(patch))
        except subprocess.CalledProcessError:
            return False
    for f in (TASKS / task / "hidden").iterdir():
        shutil.copy(f, repo / "tests" / f.name)
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "tests"], cwd=repo, capture_output=True, timeout=120)
    return done.returncode == 0


def tool_use(run_dir: Path) -> dict[str, int]:
    """Coder tool calls made; malformed ones (refused by the tools as unknown or badly shaped,
    or tool-call markup the parser could not read); coder replies with no tool call at all."""
    out = {"tool_calls": 0, "malformed_tool_calls": 0, "replies_without_tool_call": 0}
    for coder in run_dir.glob("round-*/coder.json"):
        for m in json.loads(coder.read_text()):
            content = str(m.get("content") or "")
            if m.get("role") == "tool":
                out["malformed_tool_calls"] += content.startswith(MALFORMED_PREFIXES)
            elif m.get("role") == "assistant":
                out["tool_calls"] += len(m.get("tool_calls") or [])
                if not m.get("tool_calls"):
                    out["replies_without_tool_call"] += 1
                    out["malformed_tool_calls"] += "<tool_call>" in content
    return out


def run_one(task: str, model: Any, cfg: Any, tmp: Path) -> dict[str, Any]:
    from agent_node.loop import run_task

    repo = start_repo(task, tmp / task / "repo")
    text = (TASKS / task / "task.md").read_text().strip()
    t0 = time.monotonic()
    error = ""
    try:
        summary = run_task(text, repo, model=model, cfg=cfg, home=tmp / task / "home",
                           test_cmd=f"{sys.executable} -m pytest -q -p no:cacheprovider tests")
    except Exception as e:  # noqa: BLE001 - a crashed run is a result too
        summary, error = {}, f"{type(e).__name__}: {e}"
    wall = time.monotonic() - t0
    run_dirs = sorted((tmp / task / "home" / "runs").glob("*"))
    run_dir = run_dirs[-1] if run_dirs else tmp / "missing"
    rounds = sorted(run_dir.glob("round-*/diff.patch"),
                    key=lambda p: int(p.parent.name.split("-")[1]))
    first = grade(task, rounds[0] if rounds else None, tmp / task / "grade-1")
    final = grade(task, rounds[-1] if rounds else None, tmp / task / "grade-final")
    tokens = summary.get("tokens", {})
    return {"task": task, "passed_round_1": first, "passed_final": final,
            "verdict": summary.get("verdict", "error"), "rounds": summary.get("rounds", 0),
            "completion_tokens": tokens.get("completion", 0) + tokens.get("reasoning", 0),
            "prompt_tokens": tokens.get("prompt", 0), "wall_s": round(wall, 1),
            **(tool_use(run_dir) if run_dir.is_dir() else tool_use(tmp / "none")),
            "error": error}


def limits(quick: bool) -> dict[str, Any]:
    if smoke():
        base = {"tasks": 1, "rounds": 1, "turns": 1, "max_tokens": 8}
    elif quick:
        base = {"tasks": 2, "rounds": 1, "turns": 2, "max_tokens": 96}
    else:
        base = {"tasks": len(task_names()), "rounds": 2, "turns": 4, "max_tokens": 256}
    for key in ("rounds", "turns", "max_tokens"):
        env = os.environ.get(f"BENCH_AGENT_{key.upper()}")
        if env:
            base[key] = int(env)
    return base


def run(quick: bool, overrides: dict[str, Any] | None = None, target: str = "",
        model_name: str = "") -> dict:
    from agent_node.client import Client, GrpcModel
    from agent_node.config import AgentConfig

    lim = {**limits(quick), **(overrides or {})}
    names = lim.pop("names", None) or task_names()[: lim["tasks"]]
    cfg = AgentConfig()
    cfg.loop.max_rounds = lim["rounds"]
    cfg.loop.coder_max_turns = lim["turns"]
    cfg.loop.json_retries = 0 if quick or smoke() else cfg.loop.json_retries
    cfg.loop.test_timeout_s = 120.0
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        scripted = smoke() and not target
        if scripted:
            server = None
            model_info = {"name": SmokeModel.name, "note": "smoke run: a scripted stand-in"}
        elif target:
            server = None
            model_info: dict[str, Any] = {"name": model_name or "(server default)",
                                          "note": f"given server {target}"}
        else:
            from bench.engine import grpc_server, prepare_model

            # Even the smoke run uses SmolLM2: the loop asks for JSON-constrained replies, which
            # need a real tokenizer.
            path, model_info = prepare_model(tmp, tiny=False)
            model_name = "bench-model"
            server = grpc_server(path, model_name, tmp)
            target = server.__enter__()
        try:
            cfg.inference.target = target or cfg.inference.target
            with Client(cfg) as client:
                rows = []
                for name in names:
                    log(f"{name}: rounds<={lim['rounds']} turns<={lim['turns']} "
                        f"max_tokens/reply={lim['max_tokens']}")
                    model: Any = (SmokeModel(SMOKE_FIX.get(name, {})) if scripted else
                                  CappedModel(GrpcModel(client, [model_name] if model_name
                                                        else []), lim["max_tokens"]))
                    rows.append(run_one(name, model, cfg, tmp))
                    log(f"{name}: {rows[-1]}")
        finally:
            if server is not None:
                server.__exit__(None, None, None)
    n = len(rows)
    return {
        "model": model_info,
        "limits": {**lim, "tasks": n},
        "tasks": rows,
        "pass_rate_round_1": round(sum(r["passed_round_1"] for r in rows) / max(1, n), 3),
        "pass_rate_final": round(sum(r["passed_final"] for r in rows) / max(1, n), 3),
        "malformed_tool_calls": sum(r["malformed_tool_calls"] for r in rows),
        "tool_calls": sum(r["tool_calls"] for r in rows),
        "completion_tokens": sum(r["completion_tokens"] for r in rows),
        "wall_s": round(time.monotonic() - t_start, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.agent_tasks")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rounds", type=int)
    p.add_argument("--turns", type=int)
    p.add_argument("--max-tokens", type=int)
    p.add_argument("--tasks", help="comma-separated task names (default: all, or 2 with --quick)")
    p.add_argument("--target", default="", help="a running inference server to use instead")
    p.add_argument("--model", default="", help="model name on --target")
    a = p.parse_args(argv)
    over: dict[str, Any] = {k: v for k, v in (("rounds", a.rounds), ("turns", a.turns),
                                              ("max_tokens", a.max_tokens)) if v is not None}
    if a.tasks:
        over["names"] = a.tasks.split(",")
    print(json.dumps(run(a.quick, over, a.target, a.model), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
