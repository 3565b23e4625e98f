"""Prompt lookup on the task bench: wall time per solved task with it ÷ without.

    .venv/bin/python -m bench.lookup_tasks --model qwen2.5-coder-0.5b --record-dir DIR
        [--tasks A,B] [--config FILE] [--max-tokens N]     # JSON on stdout, progress on stderr

Each task runs twice through `bench.agent_tasks.run`, once on a local node that decodes with
prompt lookup (a coder model's default) and once on one that does not (`prompt_lookup = false`),
one task at a time: the lookup decodes a lone stream, so `--parallel 1`. The arms alternate
which goes first from one task to the next, so a machine that gets slower or faster over the run
weighs on both. Each arm keeps its rows in DIR/on.record.jsonl and DIR/off.record.jsonl
(`bench.task_record`): a run that stopped goes on from there with the same command.

What it reports: per task, each arm's result, wall time and tokens; per arm, the tasks solved,
the wall time in all and per solved task; `wall_ratio`, on ÷ off over the tasks both arms ran;
`same_replies`, the tasks whose two arms generated as many tokens and ended alike (greedy
output is the same with lookup; a sampled retry may differ). Made apart from `make bench`: it
takes an hour or more on a CPU. BENCH_SMOKE=1: the scripted model in both arms (the plumbing).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from bench import agent_tasks
from bench.task_grading import TASKS, TaskError, load_tasks
from bench.task_models import log

ARMS = ("off", "on")


def measure(model: str, names: list[str], record_dir: Path, config: Path | None = None,
            max_tokens: int | None = None) -> dict[str, Any]:
    t_start = time.monotonic()
    over: dict[str, Any] = {} if max_tokens is None else {"max_tokens": max_tokens}
    for i, name in enumerate(names):
        for arm in ARMS if i % 2 == 0 else ARMS[::-1]:
            log(f"{name}: prompt lookup {arm}")
            agent_tasks.run(False, {**over, "names": [name]}, model_name=model, config=config,
                            record=record_dir / f"{arm}.record.jsonl",
                            prompt_lookup=arm == "on")
    rows = {arm: _rows(record_dir / f"{arm}.record.jsonl") for arm in ARMS}
    return {"model": model, "config": str(config) if config else None,
            **compare(rows["off"], rows["on"], names),
            "wall_s": round(time.monotonic() - t_start, 1)}


def _rows(path: Path) -> dict[str, dict[str, Any]]:
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    rows = (json.loads(line) for line in lines[1:] if line.strip())
    return {r["name"]: r for r in rows}


def compare(off: dict[str, dict[str, Any]], on: dict[str, dict[str, Any]],
            names: list[str]) -> dict[str, Any]:
    """Both arms' rows side by side, and their totals over the tasks both ran."""
    both = [n for n in names if n in off and n in on]
    tasks = {n: {arm: _brief(rows[n]) for arm, rows in (("off", off), ("on", on))}
             for n in both}
    arms = {}
    for arm, rows in (("off", off), ("on", on)):
        wall = sum(rows[n]["wall_s"] for n in both)
        solved = sum(bool(rows[n]["pass_final"]) for n in both)
        arms[arm] = {"tasks": len(both), "solved": solved, "wall_s": round(wall, 1),
                     "wall_s_per_solved": round(wall / solved, 1) if solved else None,
                     "proposed_tokens": sum(rows[n].get("proposed_tokens", 0) for n in both),
                     "accepted_proposals": sum(rows[n].get("accepted_proposals", 0)
                                               for n in both)}
    return {
        "tasks": tasks,
        "arms": arms,
        "wall_ratio": round(arms["on"]["wall_s"] / arms["off"]["wall_s"], 3)
        if arms["off"]["wall_s"] else None,
        "same_replies": sum(t["off"]["tokens_generated"] == t["on"]["tokens_generated"]
                            and t["off"]["pass"] == t["on"]["pass"] for t in tasks.values()),
    }


def _brief(row: dict[str, Any]) -> dict[str, Any]:
    return {"pass": row["pass_final"], "failure": row["failure"], "rounds": row["rounds"],
            "wall_s": row["wall_s"], "tokens_generated": row["tokens_generated"],
            "model_calls": row["model_calls"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.lookup_tasks", description=__doc__.split(
        "\n")[0])
    p.add_argument("--model", required=True, metavar="NAME",
                   help="a model in $STUDIO_CODER_HOME/models, served by a local node")
    p.add_argument("--tasks", metavar="A,B", help="comma-separated task names (default: all)")
    p.add_argument("--record-dir", type=Path, required=True, metavar="DIR",
                   help="where each arm's record goes; run again to go on from it")
    p.add_argument("--config", type=Path, metavar="FILE",
                   help="an agent-node.toml whose [loop] settings both arms use")
    p.add_argument("--max-tokens", type=int, metavar="N", help="cap on one model reply")
    a = p.parse_args(argv)
    from inference_node import blas

    blas.drop_from_environ()  # Chromium hangs with OpenBLAS preloaded; the node gets it back
    names = ([n.strip() for n in a.tasks.split(",") if n.strip()] if a.tasks
             else [t.name for t in load_tasks(TASKS)])
    try:
        out = measure(a.model, names, a.record_dir, a.config, a.max_tokens)
    except TaskError as e:
        log(str(e))
        return 2
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
