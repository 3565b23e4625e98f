"""bench/lookup_tasks.py: the task bench with prompt lookup and without, task by task."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import agent_tasks, lookup_tasks


def row(name: str, passed: bool, wall: float, tokens: int = 100, **extra: Any) -> dict[str, Any]:
    return {"name": name, "pass_final": passed, "failure": None if passed else "no_change",
            "rounds": 1, "wall_s": wall, "tokens_generated": tokens, "model_calls": 3, **extra}


def test_the_arms_are_compared_over_the_tasks_both_ran() -> None:
    off = {"a": row("a", True, 60.0), "b": row("b", False, 100.0), "c": row("c", True, 50.0)}
    on = {"a": row("a", True, 40.0, proposed_tokens=90, accepted_proposals=80),
          "b": row("b", False, 70.0, tokens=120)}  # c: its "on" arm has not run yet
    out = lookup_tasks.compare(off, on, ["a", "b", "c"])
    assert list(out["tasks"]) == ["a", "b"]
    assert out["arms"]["off"] == {"tasks": 2, "solved": 1, "wall_s": 160.0,
                                  "wall_s_per_solved": 160.0, "proposed_tokens": 0,
                                  "accepted_proposals": 0}
    assert out["arms"]["on"]["wall_s_per_solved"] == 110.0
    assert (out["arms"]["on"]["proposed_tokens"], out["arms"]["on"]["accepted_proposals"]) == (
        90, 80)
    assert out["wall_ratio"] == 0.688
    assert out["same_replies"] == 1  # b generated other tokens with lookup


def test_no_task_solved_gives_no_time_per_solved_task() -> None:
    out = lookup_tasks.compare({"a": row("a", False, 10.0)}, {"a": row("a", False, 8.0)}, ["a"])
    assert out["arms"]["on"]["wall_s_per_solved"] is None and out["wall_ratio"] == 0.8


def test_each_task_runs_in_both_arms_alternating_which_goes_first_and_goes_on_from_the_records(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENCH_SMOKE", "1")  # the scripted model: the plumbing, in seconds
    monkeypatch.setenv("STUDIO_CODER_HOME", str(tmp_path / "home"))
    order: list[tuple[str, bool]] = []
    real = agent_tasks.run

    def spy(*args: Any, **kwargs: Any) -> dict[str, Any]:
        order.append((args[1]["names"][0], kwargs["prompt_lookup"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(agent_tasks, "run", spy)
    names = ["fizzbuzz", "mean_bug"]
    out = lookup_tasks.measure("any", names, tmp_path / "ab")
    assert order == [("fizzbuzz", False), ("fizzbuzz", True), ("mean_bug", True),
                     ("mean_bug", False)]
    for arm in ("off", "on"):
        lines = (tmp_path / "ab" / f"{arm}.record.jsonl").read_text().splitlines()
        assert [json.loads(line)["name"] for line in lines[1:]] == names
    assert list(out["tasks"]) == names and out["same_replies"] == 2
    assert out["tasks"]["fizzbuzz"]["on"]["pass"] and out["arms"]["on"]["solved"] >= 1
    # run again: every task is in both records, nothing runs, the same comparison comes back
    again = lookup_tasks.measure("any", names, tmp_path / "ab")
    assert again["tasks"] == out["tasks"]
