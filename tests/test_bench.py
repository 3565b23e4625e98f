"""The benchmark harness: statistics helpers and a smoke run of every benchmark.

The smoke run (BENCH_SMOKE=1) runs every benchmark in bench/ through `python -m bench --quick`
(each in its own subprocess, one repeat and a few tokens) and checks that every field each one
records, and the report reads, is there and holds a number. Nothing here asserts a timing:
benchmarks measure, tests check the plumbing.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import stats
from bench.__main__ import discover, machine, run_one
from bench.report import APART, KEPT, apart_targets, render, targets, write_doc

REPO = Path(__file__).resolve().parent.parent

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
    assert not {"stats", "report", "servers", "__main__", "__init__"} & set(names)


def test_a_failing_benchmark_is_recorded_not_raised() -> None:
    out = run_one("no_such_benchmark", quick=True, limit_s=60)
    assert out["ok"] is False and "No module named" in out["error"]


def test_a_failed_benchmark_is_named_with_its_error_as_it_fails_and_at_the_end(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import bench.__main__ as harness

    monkeypatch.setattr(harness, "run_one", lambda name, quick, limit_s: {
        "ok": False, "seconds": 120.0, "error": "timed out after 120 s",
        "stderr_tail": "waited for the tunnel to be up: failed"})
    assert harness.main(["--quick", "--only", "sandbox", "--results-dir", str(tmp_path),
                         "--doc", str(tmp_path / "B.md")]) == 1
    err = capsys.readouterr().err
    assert "bench: sandbox failed after 120.0 s: timed out after 120 s\n" in err
    assert "waited for the tunnel to be up: failed" in err
    assert err.rstrip().endswith("bench: failed: sandbox (timed out after 120 s)")


def test_machine_info_names_cpu_memory_os_and_mlx() -> None:
    info = machine()
    for key in ("host", "cpu", "cores", "memory_gb", "os", "mlx", "mlx_device", "mlx_lm"):
        assert info[key], key


# Per benchmark: dotted paths into its result ("*": every key at that level) that must hold a
# number, and fields that show BENCH_SMOKE reached its subprocess. A new benchmark adds a row.
NUMBERS: dict[str, list[str]] = {
    "engine": ["single_stream.short.*.ttft_s.median", "single_stream.short.*.decode_tps.median",
               "single_stream.short.*.completion_tokens.median",
               "single_stream.short.grpc.decode_ratio_vs_in_process",
               "concurrency.*.grpc.aggregate_tps.median",
               "concurrency.*.mlx_lm_server.aggregate_tps.median",
               "concurrency.*.aggregate_ratio_grpc_vs_mlx_server", "prompt_tokens.short",
               "overhead.ttft_added_ms", "overhead.added_ms_per_token",
               "overhead.grpc.ttft_s.median", "overhead.in_process.ttft_s.median",
               "wall_s"],
    "agent_tasks": ["pass_rate_round1", "pass_rate_final", "cache_share", "tokens_generated",
                    *(f"tasks.*.{k}" for k in ("rounds", "tokens_generated", "prompt_tokens",
                                               "cached_prompt_tokens", "wall_s", "tool_calls",
                                               "malformed_tool_calls"))],
    "admission": ["decision.*", *(f"workload.{side}.{k}" for side in ("with_admission",
                                                                     "no_admission")
                                  for k in ("requests_per_s", "loads", "peak_mb", "budget_mb")),
                  "workload.throughput_ratio"],
    "bridge": ["median.*.ttft_s", "median.*.decode_tps", "median.*.tokens",
               "ratio_bridge_over_mlx_lm.ttft", "ratio_bridge_over_mlx_lm.decode_tps",
               "bridge_hop_ttft_s"],
    "capture": [f"pages.*.{kind}.{stat}" for kind in ("cold", "launch", "warm")
                for stat in ("median_s", "p25_s", "p75_s", "min_s", "max_s", "n")]
               + ["target.warm_median_s_below"],
    "constrained": ["decode_tokens_per_s.*.median", "decode_tokens_per_s.*.n",
                    "constrained_over_unconstrained", "mask_cost_fraction_of_decode",
                    "processor_ms_per_token_alone.median", "grammar_compile_ms",
                    "first_compile_s_with_tokenizer"],
    "describe": ["screens.*.prompt_tokens", "screens.*.png_bytes",
                 *(f"screens.*.{k}.median" for k in ("request_s", "preprocess_s", "prefill_s",
                                                     "decode_tok_s")),
                 "end_to_end_grpc.*.total_s.median",
                 "end_to_end_grpc.*.time_to_first_delta_s.median"],
    "sandbox": [f"commands.*.*.{stat}" for stat in ("median", "p25", "p75", "n")]
               + ["added_ms.*.runner", "added_ms.*.sandbox", "added_ms.*.sandbox_memory"],
    "distributed": ["served.*.prefill_tps.median", "served.*.decode_tps.median",
                    "served.*.ttft_s.median", "ratio_2_over_1.decode_tps",
                    "ratio_2_over_1.prefill_tps", "ring_loopback.latency_us",
                    "ring_loopback.bandwidth_gb_s", "ring_loopback.token_collectives_ms",
                    "per_token.*.collectives", "per_token.*.bytes",
                    "per_token.*.tb5_bandwidth_ms", "per_token.*.ms_per_us_of_latency",
                    "per_token.measured_model.measured_ms", "ms_per_token_added_by_2_ranks",
                    "idle_cores.node.launcher", "idle_cores.node.*", "idle_cores.launchers.*"],
    "coder_models": [f"models.*.{side}.{k}" for side in ("grpc", "in_process")
                     for k in ("ttft_s.median", "prefill_tps.median", "decode_tps.median",
                               "peak_rss_mb", "load_s")] + ["wall_s"],
    "speculative": ["decode_tps.*.median", "speedup", "acceptance_rate",
                    "tokens_per_target_pass", "wall_s"],
    "control_plane": [f"levels.*.calls.*.{k}" for k in ("n", "median_ms", "p95_ms", "p99_ms",
                                                         "max_ms")]
                     + ["levels.2.calls.*.p99_over_idle", "levels.*.open_streams", "wall_s"],
    "cpu": [f"per_context.*.{side}.{k}.median" for side in ("mlx", "gemv", "rows", "gemv_numpy")
            for k in ("prefill_tps", "decode_tps")]
           + [f"per_context.*.{r}" for r in ("decode_ratio_gemv", "prefill_ratio_numpy_attention",
                                              "decode_ratio_both", "prefill_ratio_both")]
           + [f"per_batch.*.{side}.median" for side in ("mlx", "gemv", "rows", "gemv_numpy")]
           + ["per_batch.*.decode_ratio_small_rows", "per_batch.*.decode_ratio_all",
              "forwarded_calls", "small_rows_calls.gemv", "small_rows_calls.rows"],
    "lookup": [f"models.*.*.{k}" for k in ("decode_tps.plain.median",
                                            "decode_tps.looked-up.median", "speedup",
                                            "acceptance_rate", "tokens_per_pass")] + ["wall_s"],
    "forwarder": ["per_batch.*.ms_per_step.*.median", "per_batch.*.speed_ratio_current_vs_base",
                  "repeats", "steps"],
    "fused": ["models.*.fused_groups", "models.*.logits_max_abs_diff", "wall_s"]
             + [f"models.*.{n}.{k}" for n in ("1", "2", "4", "8")
                for k in ("plain.median", "fused.median", "speedup")],
    "tunnel": ["ttft_s.direct", "ttft_s.tunnel", "decode_tps.direct", "decode_tps.tunnel",
               "recovery_s.tunnel_up_after_sshd_restart",
               "recovery_s.first_call_done_after_sshd_restart", "decode_ratio",
               "ttft_added_ms", "added_ms_per_token"],
}
SMOKE_FIELDS: dict[str, dict[str, Any]] = {
    "engine": {"params.repeats": 1},
    "agent_tasks": {"model.name": "smoke-scripted", "limits.tasks": 2},
    "admission": {},
    "bridge": {"repeats": 1, "max_tokens": 4},
    "capture": {"repeats": 1},
    "constrained": {"max_tokens": 8, "decode_tokens_per_s.constrained.n": 1},
    "describe": {"repeats": 1, "decode_tokens": 4},
    "sandbox": {"repeats": 2},
    "tunnel": {"repeats": 1, "max_tokens": 4},
    "distributed": {"repeats": 1, "max_tokens": 4},
    "coder_models": {"params.repeats": 1, "params.max_tokens": 4},
    "control_plane": {"seconds_per_level": 1.0, "levels.2.open_streams": 2},
    "speculative": {"params.repeats": 1, "params.max_tokens": 8, "greedy_identical": True},
    "cpu": {"repeats": 1, "decode_tokens": 4, "contexts": [16, 64], "batches": [2],
            "small_rows_calls.gemv": 0},
    "forwarder": {"repeats": 1, "steps": 4, "per_batch.2.same_tokens": True},
    "fused": {"blocks": 2, "steps_per_block": 2, "models.*.greedy_same": True},
    "lookup": {"params.repeats": 1, "params.max_tokens": 8,
               "models.*.edit.greedy_identical": True, "models.*.fresh.greedy_identical": True},
}


def _leaves(obj: Any, path: str) -> list[tuple[str, Any]]:
    """The values at a dotted path; "*" fans out over a dict's keys or a list's items; a missing
    key fails."""
    found = [("", obj)]
    for part in path.split("."):
        step = []
        for where, o in found:
            if part == "*":
                keys = list(range(len(o))) if isinstance(o, list) else list(o)
            else:
                keys = [int(part) if isinstance(o, list) else part]
            assert part == "*" or isinstance(o, list) or part in o, f"{where}.{part} missing"
            assert keys, f"{where}.* is empty"
            step += [(f"{where}.{k}", o[k]) for k in keys]
        found = step
    return found


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, Path]:
    """Every benchmark's quick mode under BENCH_SMOKE=1, through the harness, once."""
    tmp = tmp_path_factory.mktemp("smoke")
    env = {**os.environ, "BENCH_SMOKE": "1"}
    doc = tmp / "BENCHMARKS.md"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--results-dir", str(tmp), "--doc", str(doc),
         "--time-limit", "120"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-5000:]
    (results,) = [p for p in tmp.glob("*.json")]
    return json.loads(results.read_text()), results, doc


def test_every_benchmark_has_a_smoke_check() -> None:
    assert set(discover()) == set(NUMBERS) == set(SMOKE_FIELDS)


@pytest.mark.parametrize("name", sorted(NUMBERS))
def test_smoke_run_records_each_benchmarks_numbers(
        name: str, smoke_run: tuple[dict, Path, Path]) -> None:
    record, _, _ = smoke_run
    out = record["benchmarks"][name]
    assert out["ok"], out
    if "skipped" in out["result"]:  # what it measures is not on this machine (cpu: no OpenBLAS)
        pytest.skip(f"bench/{name}.py: {out['result']['skipped']}")
    for path in NUMBERS[name]:
        for where, value in _leaves(out["result"], path):
            assert isinstance(value, int | float) and not isinstance(value, bool), (where, value)
            assert not math.isnan(value), where
    for path, want in SMOKE_FIELDS[name].items():  # BENCH_SMOKE reached the subprocess
        ((where, value),) = _leaves(out["result"], path)
        assert value == want, (where, value)


def test_smoke_run_records_every_field_and_writes_the_doc(
        smoke_run: tuple[dict, Path, Path]) -> None:
    record, results, doc = smoke_run
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
    # the smoke run measures 1 and 2 streams: of the concurrency targets, only the one at 2
    assert set(e["targets"]) == {"grpc_decode_ratio_ge_0.97", "grpc_ttft_added_lt_5ms",
                                 "concurrency_ratio_ge_1.0_at_2"}

    agent = record["benchmarks"]["agent_tasks"]
    assert agent["ok"], agent
    a = agent["result"]
    plain, ui = a["tasks"]  # the smoke run's scripted model makes both known changes
    assert (plain["name"], plain["ui"], ui["name"], ui["ui"]) == (
        "fizzbuzz", False, "ui_signup_button", True)
    for row in a["tasks"]:
        assert row["pass_round1"] is row["pass_final"] is True and row["failure"] is None
    assert ui["visual_qa_final"] is True  # Chromium looked at the page, the judge passed it
    assert a["pass_rate_final"] == 1.0 and a["failures"] == {}

    text = doc.read_text()
    assert "## Machine" in text and "## Conclusions" in text
    assert "mlx-lm in process" in text and "### Concurrency" in text
    assert "## Agent-loop tasks" in text
    assert render(record, results.name, results.parent) == text


def test_regenerating_the_doc_keeps_what_is_written_by_hand(tmp_path: Path) -> None:
    doc = tmp_path / "BENCHMARKS.md"
    by_hand = KEPT + "\n\n## A run made apart\nkept\n"
    doc.write_text("# Benchmarks\nold tables\n" + by_hand)
    write_doc(doc, "# Benchmarks\nnew tables\n")
    assert doc.read_text() == "# Benchmarks\nnew tables\n\n" + by_hand
    write_doc(doc, "# Benchmarks\nnewer\n")  # and again: the kept part is not doubled
    assert doc.read_text().count("kept") == 1 and doc.read_text().count(KEPT) == 1
    plain = tmp_path / "plain.md"  # no line marks a kept part: the whole doc is generated
    plain.write_text("old\n")
    write_doc(plain, "new\n")
    assert plain.read_text() == "new\n"


def _task_row(name: str, prompt: int, cached: int) -> dict[str, Any]:
    return {"name": name, "prompt_tokens": prompt, "cached_prompt_tokens": cached,
            "failure": None, "pass_round1": True, "pass_final": True, "tokens_generated": 1,
            "tool_calls": 0, "malformed_tool_calls": 0,
            "run_dir": f"/tmp/x/{name}/home/runs/20261205-124306-cf3eef"}


def test_the_targets_of_runs_made_apart_join_the_table_saying_where_they_come_from(
        tmp_path: Path) -> None:
    run = next(key for _, name, key in APART if name == "concurrency_hold.json")
    (tmp_path / "concurrency_hold.json").write_text(json.dumps({
        "date": "2026-12-05", "commits": {"E1": "aaaaaaa", run: "bbbbbbb"},
        "E1": {"targets": {"concurrency_ratio_ge_1.0_at_2": False}},
        run: {"targets": {"concurrency_ratio_ge_1.0_at_2": True}}}))
    (tmp_path / "speculative.json").write_text(json.dumps({
        "targets": {"speculative_decode_speedup_ge_1.3": False},
        "run": {"started": "2026-12-01T23:16:30Z", "commit": "ccccccc"}}))
    rows = [_task_row("fizzbuzz", 1000, 900), _task_row("roman", 1000, 650)]  # 0.775
    record = next(name for label, name, _ in APART if label == "agent_tasks, all 22")
    (tmp_path / record).write_text("\n".join(
        json.dumps(r) for r in [{"settings": {"model": "qwen2.5-coder-0.5b"}}, *rows]) + "\n")

    got = apart_targets(tmp_path)
    assert got == [
        ["engine --concurrency", "concurrency_ratio_ge_1.0_at_2", "met",
         f"`concurrency_hold.json` {run} (2026-12-05, bbbbbbb)"],  # the run named, not the first
        ["speculative", "speculative_decode_speedup_ge_1.3", "**missed**",
         "`speculative.json` (2026-12-01, ccccccc)"],
        ["agent_tasks, all 22", "agent_prompt_cache_share_ge_0.80", "**missed**",
         f"`{record}` (qwen2.5-coder-0.5b, 2 tasks, 2026-12-05)"]]
    table = "\n".join(targets({"tunnel": {"ok": True, "result": {"targets": {
        "recovery_lt_3s": True}}}}, "2026-11-24-vm.json", got))
    assert "| tunnel | recovery_lt_3s | met | this run (2026-11-24-vm.json) |" in table
    assert "| speculative | speculative_decode_speedup_ge_1.3 | **missed** |" in table
    assert apart_targets(tmp_path / "none") == []  # a checkout without those files: no rows


def bench_alone(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess[str]:
    """`python -m <args>` (a benchmark run alone) under BENCH_SMOKE=1, from the repository."""
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO,
                          env={**os.environ, "BENCH_SMOKE": "1"}, capture_output=True,
                          text=True, timeout=timeout)


def test_engine_concurrency_alone_records_both_servers_and_its_targets() -> None:
    out = bench_alone(["bench.engine", "--concurrency"])
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    assert "single_stream" not in result  # part 1 is left out
    for level in ("1", "2"):
        for server in ("grpc", "mlx_lm_server"):
            assert result["concurrency"][level][server]["aggregate_tps"]["median"] > 0
    assert set(result["targets"]) == {"concurrency_ratio_ge_1.0_at_2"}


def test_engine_concurrency_with_lookup_adds_our_server_as_a_node_has_it_by_default() -> None:
    out = bench_alone(["bench.engine", "--concurrency", "--lookup"])
    assert out.returncode == 0, out.stderr[-2000:]
    for row in json.loads(out.stdout)["concurrency"].values():
        assert row["grpc_lookup"]["aggregate_tps"]["median"] > 0
        assert row["aggregate_ratio_lookup_vs_grpc"] > 0


def test_lookup_spans_serve_each_value_side_by_side_with_the_same_reply() -> None:
    out = bench_alone(["bench.lookup", "--spans", "2,7"])
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    assert result["params"]["lookup_tokens"] == [2, 7]
    for prompts in result["models"].values():
        for row in prompts.values():
            assert set(row["lookup_tokens"]) == {"2", "7"}
            assert row["ratio_to_first"]["2"] == 1.0 and row["ratio_to_first"]["7"] > 0
            assert row["greedy_identical"]  # the cap changes the speed, never the reply


@pytest.mark.parametrize("given", ["7", "5,x", "5,17"])
def test_lookup_spans_refuse_what_is_not_two_values_to_compare(given: str) -> None:
    out = bench_alone(["bench.lookup", "--spans", given], timeout=120)
    assert out.returncode == 1
    assert "--spans takes two or more values of engine.lookup_tokens (1 to 16)" in out.stderr
    assert repr(given) in out.stderr


def test_lookup_pair_times_a_reply_that_outlasts_another_with_the_lookup_and_without() -> None:
    out = bench_alone(["bench.lookup", "--pair"])
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    (row,) = [m["pair"] for m in result["models"].values()]
    assert row["decode_tps"]["plain"]["median"] > 0 and row["speedup"] > 0
    assert row["greedy_identical"]
