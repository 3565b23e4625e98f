"""The benchmark harness: statistics helpers, task grading, and a smoke run of the harness.

The smoke run (BENCH_SMOKE=1) runs bench/engine.py and bench/agent_tasks.py through
`python -m bench` with one repeat and a few tokens, and checks that every field the report reads
is there. Nothing here asserts a timing: benchmarks measure, tests check the plumbing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import stats
from bench.__main__ import discover, machine, run_one
from bench.agent_tasks import grade, start_repo, task_names
from bench.report import render

REPO = Path(__file__).resolve().parent.parent

SOLUTIONS = {
    "fizzbuzz": ("fizz.py", "def fizzbuzz(n):\n    return 'Fizz' * (n % 3 == 0) + "
                 "'Buzz' * (n % 5 == 0) or str(n)\n"),
    "slugify": ("text.py", "import re\n\n\ndef slugify(text):\n    return "
                "re.sub(r'[^a-z0-9]+', '-', text.lower()).strip('-')\n"),
    "mean_bug": ("stats.py", "def mean(xs):\n    if not xs:\n        raise ValueError('empty')\n"
                 "    return sum(xs) / len(xs)\n"),
    "roman": ("roman.py", "def to_roman(n):\n    out = ''\n    for v, s in [(1000, 'M'), (900, "
              "'CM'), (500, 'D'), (400, 'CD'), (100, 'C'), (90, 'XC'), (50, 'L'), (40, 'XL'), "
              "(10, 'X'), (9, 'IX'), (5, 'V'), (4, 'IV'), (1, 'I')]:\n        while n >= v:\n"
              "            out += s\n            n -= v\n    return out\n"),
    "top_words": ("words.py", "import re\nfrom collections import Counter\n\n\ndef top_words("
                  "text, n):\n    c = Counter(re.findall('[a-z]+', text.lower()))\n    return "
                  "sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))[:n]\n"),
}


def test_interleave_warms_up_then_alternates_the_order() -> None:
    calls: list[str] = []
    out = stats.interleave({"a": lambda: calls.append("a") or 1,
                            "b": lambda: calls.append("b") or 2}, n=3, warmup=1)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]
    assert out == {"a": [1, 1, 1], "b": [2, 2, 2]}


def test_percentile_median_spread_and_ratio() -> None:
    xs = [4.0, 1.0, 3.0, 2.0, 5.0]
    assert stats.median(xs) == 3.0
    assert stats.percentile(xs, 0) == 1.0 and stats.percentile(xs, 100) == 5.0
    assert stats.percentile(xs, 25) == 2.0 and stats.percentile([1.0, 2.0], 50) == 1.5
    assert stats.spread(xs) == {"p25": 2.0, "p75": 4.0, "min": 1.0, "max": 5.0}
    assert stats.ratio(3.0, 2.0) == 1.5
    assert stats.summary([]) == {"median": None, "p25": None, "p75": None, "min": None,
                                 "max": None, "n": 0}


def test_discover_finds_benchmarks_but_not_helpers() -> None:
    names = discover()
    assert {"engine", "agent_tasks"} <= set(names)
    assert not {"stats", "report", "__main__", "__init__"} & set(names)


def test_a_failing_benchmark_is_recorded_not_raised() -> None:
    out = run_one("no_such_benchmark", quick=True, limit_s=60)
    assert out["ok"] is False and "No module named" in out["error"]


def test_machine_info_names_cpu_memory_os_and_mlx() -> None:
    info = machine()
    for key in ("host", "cpu", "cores", "memory_gb", "os", "mlx", "mlx_device", "mlx_lm"):
        assert info[key], key


@pytest.mark.parametrize("task", task_names())
def test_task_fails_at_start_and_passes_with_a_solution(task: str, tmp_path: Path) -> None:
    assert task in SOLUTIONS, f"add a reference solution for bench/tasks/{task}"
    assert not grade(task, None, tmp_path / "start")
    work = start_repo(task, tmp_path / "work")
    name, code = SOLUTIONS[task]
    (work / name).write_text(code)
    patch = tmp_path / "solution.patch"
    patch.write_text(subprocess.run(["git", "diff"], cwd=work, capture_output=True,
                                    text=True, check=True).stdout)
    assert grade(task, patch, tmp_path / "solved")


def test_smoke_run_records_every_field_and_writes_the_doc(tmp_path: Path) -> None:
    env = {**os.environ, "BENCH_SMOKE": "1"}
    doc = tmp_path / "BENCHMARKS.md"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", "engine", "agent_tasks",
         "--results-dir", str(tmp_path), "--doc", str(doc), "--time-limit", "120"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=200)
    (results,) = [p for p in tmp_path.glob("*.json")]
    record = json.loads(results.read_text())
    assert done.returncode == 0, done.stderr[-2000:]
    assert record["smoke"] and record["quick"]
    for key in ("cpu", "cores", "memory_gb", "os", "mlx", "mlx_device"):
        assert record["machine"][key], key

    engine = record["benchmarks"]["engine"]
    assert engine["ok"], engine
    e = engine["result"]
    assert "smoke" in e["model"]["name"]  # BENCH_SMOKE reached the benchmark's subprocess
    for path in ("in_process", "grpc", "mlx_lm_server"):
        row = e["single_stream"]["short"][path]
        assert row["ttft_s"]["median"] > 0 and row["decode_tps"]["n"] == 1
        assert row["completion_tokens"]["median"] >= 1
    assert "decode_ratio_vs_in_process" in e["single_stream"]["short"]["grpc"]
    for level in ("1", "2"):
        for server in ("grpc", "mlx_lm_server"):
            row = e["concurrency"][level][server]
            assert row["aggregate_tps"]["median"] > 0 and row["ttft_p95_s"] > 0
        assert "aggregate_ratio_grpc_vs_mlx_server" in e["concurrency"][level]
    assert set(e["targets"]) == {"grpc_decode_ratio_ge_0.97", "grpc_ttft_added_lt_5ms"}

    agent = record["benchmarks"]["agent_tasks"]
    assert agent["ok"], agent
    a = agent["result"]
    assert len(a["tasks"]) == 1
    for key in ("passed_round_1", "passed_final", "completion_tokens", "wall_s",
                "malformed_tool_calls", "tool_calls", "replies_without_tool_call", "verdict"):
        assert key in a["tasks"][0], key
    assert 0.0 <= a["pass_rate_final"] <= 1.0

    text = doc.read_text()
    assert "## Machine" in text and "## Conclusions" in text
    assert "mlx-lm in process" in text and "### Concurrency" in text
    assert "## Agent-loop tasks" in text
    assert render(record, results.name) == text
