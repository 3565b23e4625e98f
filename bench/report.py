"""docs/BENCHMARKS.md from a results file: tables and short plain-language conclusions.

    python -m bench.report [RESULTS.json]     # default: the newest bench/results/<date>-<host>.json

The engine benchmark gets its own tables (single stream, concurrency); the tunnel, bridge and
agent-task results join them where they measure the same thing; every other benchmark's result
is shown as a flat table of its numbers, so a new benchmark appears without touching this file.
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
NAMED = re.compile(r"^\d{4}-\d{2}-\d{2}-.+\.json$")
# What follows this line in docs/BENCHMARKS.md is written by hand (runs made apart from the full
# one, and what was learnt from them): regenerating the doc rewrites what is above it only.
KEPT = ("<!-- Written by hand from here on: `make bench` regenerates what is above this line "
        "and keeps the rest as it is. -->")
# Benchmarks run on their own (`python -m bench.<name>`, the task bench with --record), kept in
# bench/results beside the full runs: their targets join the Targets table, each row saying
# where it comes from. (label, file, the run in a file that holds several, or "")
APART: tuple[tuple[str, str, str], ...] = (
    ("engine --concurrency", "concurrency_hold.json", "H3"),
    ("speculative", "speculative.json", ""),
    ("control_plane", "control_plane.json", ""),
    ("cpu", "cpu.json", ""),
    ("agent_tasks, all 22", "agent_tasks_0.5b.system_pins.record.jsonl", ""),
)


def newest_results(root: Path = RESULTS) -> Path | None:
    files = [p for p in root.glob("*.json") if NAMED.match(p.name)]
    return max(files, key=lambda p: (p.name[:10], p.stat().st_mtime)) if files else None


def _num(x: Any, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int | float):
        return f"{x:,.{digits}f}" if isinstance(x, float) else f"{x:,}"
    return str(x)


def _ms(s: float | None) -> str:
    return "–" if s is None else f"{1000 * s:,.0f} ms" if s >= 0.1 else f"{1000 * s:,.1f} ms"


def _med_iqr(summary: dict[str, Any], fmt: Any) -> str:
    if not summary or summary.get("median") is None:
        return "–"
    return f"{fmt(summary['median'])} ({fmt(summary['p25'])}–{fmt(summary['p75'])})"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out + [""]


def _ok(bench: dict[str, Any] | None) -> dict[str, Any] | None:
    return bench.get("result") if bench and bench.get("ok") else None


# ------------------------------------------------------------------ sections

PATH_LABELS = {"in_process": "mlx-lm in process", "grpc": "our gRPC, direct",
               "mlx_lm_server": "`mlx_lm.server` (HTTP)"}


def single_stream(engine: dict[str, Any], others: dict[str, Any]) -> list[str]:
    out: list[str] = []
    pt = engine.get("prompt_tokens", {})
    for label, row in engine.get("single_stream", {}).items():
        out.append(f"### Single stream, {label} prompt ({pt.get(label, '?')} prompt tokens, "
                   f"up to {engine['params']['max_tokens']} new tokens)")
        out.append("")
        rows = []
        for key, r in row.items():
            rows.append([PATH_LABELS.get(key, key),
                         _med_iqr(r["ttft_s"], _ms),
                         _med_iqr(r["decode_tps"], lambda v: f"{v:.1f}"),
                         _num(r.get("decode_ratio_vs_in_process", 1.0), 3),
                         "0" if key == "in_process"
                         else f"{r.get('ttft_added_ms_vs_in_process', 0):+,.1f}"])
        out += _table(["path", "time to first token, median (IQR)", "decode tok/s, median (IQR)",
                       "decode ÷ in process", "TTFT added, ms"], rows)
    tunnel = _ok(others.get("tunnel"))
    if tunnel:
        out.append(f"Through the SSH tunnel (bench/tunnel.py, its own interleaved run on "
                   f"{tunnel.get('model')}, {tunnel.get('max_tokens')} new tokens):")
        out.append("")
        rows = [[k, _ms(tunnel["ttft_s"][k]), _num(tunnel["decode_tps"][k])]
                for k in ("direct", "tunnel")]
        out += _table(["path", "TTFT (median)", "decode tok/s (median)"], rows)
        out.append(f"Tunnel ÷ direct decode: {_num(tunnel.get('decode_ratio'), 3)}; the tunnel "
                   f"adds {_num(tunnel.get('ttft_added_ms'), 1)} ms to the first token and "
                   f"{_num(tunnel.get('added_ms_per_token'), 2)} ms to each token after.")
        out.append("")
    bridge = _ok(others.get("bridge"))
    if bridge and isinstance(bridge.get("median"), dict):
        med = bridge["median"]
        out.append(f"Through the OpenAI bridge (bench/bridge.py, its own interleaved run on "
                   f"{bridge.get('model')}, {bridge.get('max_tokens')} new tokens):")
        out.append("")
        out += _table(["path", "TTFT (median)", "decode tok/s (median)"],
                      [[k, _ms(v.get("ttft_s")), _num(v.get("decode_tps"))]
                       for k, v in med.items() if isinstance(v, dict)])
        r = bridge.get("ratio_bridge_over_mlx_lm", {})
        out += [f"Bridge ÷ `mlx_lm.server`: TTFT {_num(r.get('ttft'), 2)}×, decode "
                f"{_num(r.get('decode_tps'), 2)}×.", ""]
    return out


def concurrency(engine: dict[str, Any]) -> list[str]:
    conc = engine.get("concurrency", {})
    if not conc:
        return []
    p = engine["params"]
    out = [f"### Concurrency ({engine.get('prompt_tokens', {}).get('short', '?')}-token prompt, "
           f"{p['level_max_tokens']} new tokens per stream, {p['level_repeats']} run(s) per "
           "level, interleaved)", ""]
    rows = []
    for n, row in conc.items():
        g, m = row["grpc"], row["mlx_lm_server"]
        rows.append([n, _med_iqr(g["aggregate_tps"], lambda v: f"{v:.1f}"),
                     _med_iqr(m["aggregate_tps"], lambda v: f"{v:.1f}"),
                     _num(row["aggregate_ratio_grpc_vs_mlx_server"], 2),
                     f"{_ms(g['ttft_p50_s'])} / {_ms(g['ttft_p95_s'])}",
                     f"{_ms(m['ttft_p50_s'])} / {_ms(m['ttft_p95_s'])}"])
    out += _table(["streams", "ours: aggregate tok/s", "mlx_lm.server: aggregate tok/s",
                   "ours ÷ theirs", "ours TTFT p50 / p95", "theirs TTFT p50 / p95"], rows)
    servers = engine.get("servers", {})
    if servers:
        out += [f"Settings: ours — {servers.get('grpc')}; theirs — {servers.get('mlx_lm_server')}.",
                ""]
    return out


def _field(row: dict[str, Any], name: str, old: str = "") -> Any:
    """A task row's field; records before the 20-task bench used other names."""
    return row.get(name, row.get(old) if old else None)


def agent_tasks(res: dict[str, Any]) -> list[str]:
    lim = res.get("limits", {})
    out = [f"Model: {res['model'].get('name')}. Limits: {lim.get('rounds')} round(s), "
           f"{lim.get('turns')} coder turn(s) per round, {lim.get('max_tokens')} tokens per "
           "reply.", ""]
    qa = res.get("visual_qa")
    if qa:
        out += [f"UI tasks go through the visual gate: {qa.get('capture')}; describer: "
                f"{qa.get('describer') or 'none (the judge reads the measured facts only)'}; "
                f"judge: {qa.get('judge')}.", ""]
    rows = []
    for r in res.get("tasks", []):
        prompt = r.get("prompt_tokens")
        cached = r.get("cached_prompt_tokens")
        share = f" ({100 * cached / prompt:.0f}% cached)" if prompt and cached is not None else ""
        failure = r.get("failure") or ("" if "failure" in r else r.get("verdict", ""))
        detail = str(r.get("failure_detail") or r.get("error") or "")[:80]
        rows.append([
            str(_field(r, "name", "task")), _num(_field(r, "pass_round1", "passed_round_1")),
            _num(_field(r, "pass_final", "passed_final")), _num(r.get("rounds")),
            _num(_field(r, "tokens_generated", "completion_tokens")),
            _num(prompt) + share, _num(r.get("wall_s")), _num(r.get("tool_calls")),
            _num(r.get("malformed_tool_calls")),
            f"{failure}: {detail}".strip(": ").replace("|", "\\|").replace("\n", " ")])
    out += _table(["task", "pass, round 1", "pass, final", "rounds", "tokens generated",
                   "prompt tokens", "wall s", "tool calls", "malformed", "failure"], rows)
    r1 = res.get("pass_rate_round1", res.get("pass_rate_round_1", math.nan))
    out += [f"Pass rate: {100 * r1:.0f}% after round 1, "
            f"{100 * res['pass_rate_final']:.0f}% after all rounds; "
            f"{res['malformed_tool_calls']} malformed tool call(s)"
            + (f"; {100 * res['cache_share']:.0f}% of prompt tokens served from the prompt "
               "cache" if "cache_share" in res else "") + ".", ""]
    if res.get("cache_by_stage"):
        from bench.task_totals import stage_shares

        out += ["Prompt tokens served from the cache, by stage: "
                + stage_shares(res["cache_by_stage"]) + ".", ""]
    if res.get("failures"):
        out += ["Why tasks failed (`bench/task_failures.py`): " + ", ".join(
            f"{k} {v}" for k, v in res["failures"].items()) + ".", ""]
    return out


def distributed(res: dict[str, Any]) -> list[str]:
    """bench/distributed.py: 1 rank against 2, the ring's cost, and the Thunderbolt 5 estimate."""
    served = res["served"]
    out = [f"Measured {res.get('date', '?')} ({res.get('size', '?')} run). "
           f"{res['model']}; {res['prompt_tokens']} prompt tokens, up to {res['max_tokens']} new "
           f"tokens, {res['repeats']} interleaved runs each after a warm-up (ring backend over "
           f"loopback, both ranks on this machine's {res.get('cores', '?')} cores; load average "
           f"{res.get('load_average', ['?'])[0]} then).", ""]
    rows = [[name, _med_iqr(r["prefill_tps"], lambda v: f"{v:.1f}"),
             _med_iqr(r["decode_tps"], lambda v: f"{v:.1f}"), _med_iqr(r["ttft_s"], _ms)]
            for name, r in served.items()]
    out += _table(["ranks", "prefill tok/s, median (IQR)", "decode tok/s, median (IQR)",
                   "time to first token"], rows)
    ratio = res["ratio_2_over_1"]
    out.append(f"2 ranks ÷ 1 rank: decode {ratio['decode_tps']:.2f}×, prefill "
               f"{ratio['prefill_tps']:.2f}×. Two CPU ranks on one machine are slower, and "
               "should be: they add no compute (both share the same cores, and each rank's BLAS "
               "threads now fight the other's), every layer waits for two all-reduces through "
               "the kernel's TCP stack, and the parts every rank keeps whole (embeddings, head, "
               "norms) are computed twice. What a second rank buys is memory: each holds about "
               "half the weights and half the KV cache, which is the point on two Macs.")
    out.append("")
    ring = res["ring_loopback"]
    token = res["per_token"]["measured_model"]
    out.append(f"The ring over loopback, measured (`all_sum` between 2 ranks, medians of "
               f"{ring['iterations']}): {ring['latency_us']:.0f} µs for a small message at best, "
               f"{ring['bandwidth_gb_s']:.2f} GB/s for large ones; one token's chain of "
               f"{token['collectives']} collectives for this model took "
               f"{token['measured_ms']:.1f} ms. A second rank added "
               f"{_num(res.get('ms_per_token_added_by_2_ranks'), 1)} ms to each token.")
    out.append("")
    rows = []
    for key in ("measured_model", "large_model"):
        t = res["per_token"][key]
        rows.append([res["model"] if key == "measured_model" else t["name"],
                     f"{t['layers']} × {t['hidden']}", f"{t['collectives']}",
                     f"{t['bytes'] / 1024:,.0f} KB",
                     f"{t['measured_ms']:.1f} ms" if "measured_ms" in t else "–",
                     f"{t['tb5_bandwidth_ms']:.3f} ms",
                     f"+{t['ms_per_us_of_latency']:.3f} ms"])
    out += _table(["per token, tensor split over 2 ranks, batch 1", "layers × hidden",
                   "collectives", "bytes", "measured here (loopback)",
                   f"Thunderbolt 5 at {res['tb5_gbit_s']:.0f} Gb/s: the bytes",
                   "Thunderbolt 5: per µs of link latency"], rows)
    out.append("At Thunderbolt 5's stated bandwidth the bytes cost well under a millisecond per "
               "token even for a 32B-class model: what decides the speed of a tensor split there "
               "is the per-collective latency of JACCL's RDMA (two collectives per layer), which "
               "this machine cannot measure; the last column says what each microsecond of it "
               "costs. Here, on one busy 2-core machine, a collective also waits for both ranks "
               "to be scheduled, which is most of what the second rank adds. A pipeline split "
               "moves one hidden state per stage boundary instead of two per layer.")
    idle = res.get("idle_cores")
    if idle:  # results from before 2026-12-04 have none
        node = ", ".join(f"{name} {v:.2f}" for name, v in idle["node"].items())
        launch = ", ".join(f"{name} {v:.2f}" for name, v in idle["launchers"].items())
        out += ["", f"Idle, over {idle['seconds']:.0f} s, in cores kept busy: the 2-rank node's "
                f"processes {node}; a launcher alone with 2 sleeping ranks: {launch}. MLX's "
                "ring backend polls its sockets, so rank 1 sleeps only on its wake-up line "
                "(doorbell.py), parked there by the idle group's heartbeat."]
    return out + [""]


SKIPPED_KEYS = {"runs", "machine"}  # raw samples and a second copy of the machine table


def coder_models(res: dict[str, Any]) -> list[str]:
    """bench/coder_models.py: each real coder model, our server beside mlx-lm in process."""
    p = res.get("params", {})
    out = [f"`bench/coder_models.py`: a ~{p.get('prompt_tokens')}-token prompt, "
           f"{p.get('max_tokens')} new tokens, {p.get('repeats')} runs per side, greedy, weights "
           "as the engine serves them here. Resident memory is the peak RSS of the process "
           "holding the model.", ""]
    rows = []
    for name, m in res.get("models", {}).items():
        for side, label in (("grpc", "our gRPC server"), ("in_process", "mlx-lm in process")):
            r = m.get(side, {})
            rows.append([name, label, _med_iqr(r.get("ttft_s", {}), _ms),
                         _med_iqr(r.get("prefill_tps", {}), _num),
                         _med_iqr(r.get("decode_tps", {}), lambda x: _num(x, 2)),
                         f"{_num(r.get('peak_rss_mb'), 0)} MB", f"{_num(r.get('load_s'))} s"])
    out += _table(["model", "path", "time to first token", "prefill tok/s", "decode tok/s",
                   "resident (peak)", "load"], rows)
    return out


def flat(result: Any, prefix: str = "", limit: int = 40) -> list[tuple[str, str]]:
    """Scalars of a nested result as (dotted key, value) rows."""
    rows: list[tuple[str, str]] = []
    if isinstance(result, dict):
        for k, v in result.items():
            if k in SKIPPED_KEYS:
                continue
            rows += flat(v, f"{prefix}.{k}" if prefix else str(k), limit)
    elif isinstance(result, list):
        if all(not isinstance(v, dict | list) for v in result) and len(result) <= 8:
            rows.append((prefix, ", ".join(_num(v, 3) for v in result)))
        else:
            for i, v in enumerate(result[:8]):
                rows += flat(v, f"{prefix}[{i}]", limit)
    else:
        rows.append((prefix, _num(result, 3) if isinstance(result, float) else str(result)))
    return rows[:limit]


def targets(benchmarks: dict[str, Any], source: str = "",
            apart: list[list[str]] | None = None) -> list[str]:
    """The targets of the run the doc is generated from, then those of the runs made apart
    from it (`apart_targets`)."""
    rows = []
    for name, b in benchmarks.items():
        res = _ok(b)
        for k, v in (res or {}).get("targets", {}).items():
            rows.append([name, k, "met" if v else "**missed**", f"this run ({source})"])
    rows += apart or []
    return _table(["benchmark", "target", "result", "from"], rows) if rows else []


def apart_targets(root: Path = RESULTS) -> list[list[str]]:
    """Rows of the Targets table for the runs in APART that `root` holds: a results file's
    targets (of the run named, in a file of several), or a task record's totals' targets."""
    from bench import task_totals

    rows = []
    for label, name, key in APART:
        path = root / name
        if not path.is_file():
            continue
        if name.endswith(".jsonl"):  # a task record: its settings line, then a row per task
            lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            tasks = [r for r in lines if "name" in r]
            model = next((r["settings"]["model"] for r in lines if "settings" in r), "")
            got = task_totals.targets(str(model), task_totals.totals(tasks)["cache_share"])
            when = re.search(r"/(\d{4})(\d\d)(\d\d)-\d{6}-", tasks[0].get("run_dir", "")) \
                if tasks else None
            said = [f"{model}, {len(tasks)} tasks"] + (["-".join(when.groups())] if when else [])
        else:
            data = json.loads(path.read_text())
            run = data.get(key, {}) if key else data
            got = run.get("targets", {})
            started = str(data.get("run", {}).get("started", ""))[:10]
            commit = data.get("commit") or data.get("commits", {}).get(key) \
                or data.get("run", {}).get("commit")
            said = [x for x in (data.get("date") or started, commit) if x]
        where = f"`{name}`" + (f" {key}" if key else "") + (f" ({', '.join(said)})" if said
                                                              else "")
        rows += [[label, k, "met" if v else "**missed**", where] for k, v in got.items()]
    return rows


def conclusions(record: dict[str, Any]) -> list[str]:
    b = record.get("benchmarks", {})
    out: list[str] = []
    engine = _ok(b.get("engine"))
    if engine:
        for label, row in engine.get("single_stream", {}).items():
            g, m, i = row["grpc"], row["mlx_lm_server"], row["in_process"]
            r_dec = g["decode_ratio_vs_in_process"]
            add = g["ttft_added_ms_vs_in_process"]
            vs = _ratio(g["decode_tps"]["median"], m["decode_tps"]["median"])
            ttft_vs = _ratio(g["ttft_s"]["median"], m["ttft_s"]["median"])
            out.append(
                f"- **Single stream, {label} prompt**: our gRPC path decodes at "
                f"{100 * r_dec:.0f}% of mlx-lm in process (target ≥ 97%: "
                f"{'met' if r_dec >= 0.97 else 'missed'}) and changes time to first token by "
                f"{add:+.1f} ms. Against "
                f"`mlx_lm.server` we decode {_ahead(vs)} and reach the first token "
                f"{_faster(ttft_vs)} ({_ms(g['ttft_s']['median'])} vs "
                f"{_ms(m['ttft_s']['median'])}; in process {_ms(i['ttft_s']['median'])})."
                + _resolution(i["ttft_s"], g["ttft_s"]))
        over = engine.get("overhead")
        if over:
            out.append(
                f"- **What our path adds** (a tiny model, so the model's own time is ~1 ms; "
                f"{over['repeats']} interleaved runs): {over['ttft_added_ms']:+.2f} ms to the "
                f"first token (target < 5 ms: {'met' if over['ttft_added_ms'] < 5 else 'missed'};"
                f" in process {_ms(over['in_process']['ttft_s']['median'])}, over gRPC "
                f"{_ms(over['grpc']['ttft_s']['median'])}) and "
                f"{over['added_ms_per_token']:+.3f} ms to each token after.")
        conc = engine.get("concurrency", {})
        if conc:
            ahead = [n for n, r in conc.items() if r["aggregate_ratio_grpc_vs_mlx_server"] >= 1.03]
            behind = [n for n, r in conc.items()
                      if r["aggregate_ratio_grpc_vs_mlx_server"] <= 0.97]
            parts = []
            if ahead:
                parts.append(f"ahead of `mlx_lm.server` in aggregate tokens/s at "
                             f"{', '.join(ahead)} stream(s)")
            if behind:
                parts.append(f"behind at {', '.join(behind)} stream(s)")
            even = [n for n in conc if n not in ahead and n not in behind]
            if even:
                parts.append(f"within 3% at {', '.join(even)}")
            ratios = ", ".join(f"{n}: {r['aggregate_ratio_grpc_vs_mlx_server']:.2f}"
                               for n, r in conc.items())
            out.append(f"- **Concurrency**: we are {'; '.join(parts)} (ours ÷ theirs by streams "
                       f"— {ratios}). In this run our server batched at most "
                       f"`engine.max_concurrent` = {engine.get('max_concurrent', 4)} requests; "
                       "`mlx_lm.server` batches up to 32.")
        model = engine.get("model", {})
        if model.get("note"):
            out.append(f"- **Model**: {model.get('name')} — {model['note']}.")
    tunnel = _ok(b.get("tunnel"))
    if tunnel:
        rec = tunnel.get("recovery_s", {})
        out.append(f"- **Tunnel**: decode through the tunnel is "
                   f"{100 * tunnel.get('decode_ratio', math.nan):.0f}% of direct "
                   f"({tunnel.get('added_ms_per_token', math.nan):+.2f} ms per token, "
                   f"{tunnel.get('ttft_added_ms', math.nan):+.1f} ms to the first); after sshd "
                   f"restarts the first call completes in "
                   f"{rec.get('first_call_done_after_sshd_restart', math.nan):.1f} s.")
    bridge = _ok(b.get("bridge"))
    if bridge and isinstance(bridge.get("ratio_bridge_over_mlx_lm"), dict):
        r = bridge["ratio_bridge_over_mlx_lm"]
        out.append(f"- **OpenAI bridge vs `mlx_lm.server`** (same SDK, same model): time to "
                   f"first token {r.get('ttft', math.nan):.2f}× theirs, decode "
                   f"{r.get('decode_tps', math.nan):.2f}× theirs.")
    agent = _ok(b.get("agent_tasks"))
    if agent:
        name = str(agent["model"].get("name"))
        out.append(f"- **Agent tasks**: {name} passes {100 * agent['pass_rate_final']:.0f}% of "
                   f"{len(agent['tasks'])} task(s) under the limits below"
                   + (" — a 135M model is not a coder; the bench exists to compare configured "
                      "models, not to flatter this one." if "smollm2" in name.lower() else "."))
    dist = _ok(b.get("distributed"))
    if dist:
        r = dist["ratio_2_over_1"]
        tb5 = dist["per_token"]["large_model"]
        out.append(f"- **Two ranks on one CPU** decode at {r['decode_tps']:.2f}× and prefill at "
                   f"{r['prefill_tps']:.2f}× one rank (shared cores, TCP all-reduces; expected "
                   f"to be slower). Over Thunderbolt 5 the bytes a {tb5['name']} model moves "
                   f"per token take {tb5['tb5_bandwidth_ms']:.2f} ms; its {tb5['collectives']} "
                   f"collectives add {tb5['ms_per_us_of_latency']:.2f} ms per µs of link "
                   "latency, the real cost.")
    failed = [n for n, v in b.items() if not v.get("ok")]
    if failed:
        out.append(f"- **Did not finish**: {', '.join(failed)} (see Errors below).")
    if record.get("machine", {}).get("load_average", [0])[0] > (record["machine"].get("cores")
                                                                 or 1):
        out.append(f"- The machine was busy (load average "
                   f"{record['machine']['load_average'][0]} on "
                   f"{record['machine']['cores']} cores): absolute numbers are noisy; the "
                   "interleaved ratios are the figures to read.")
    return out + [""]


def _resolution(a: dict[str, Any], b: dict[str, Any]) -> str:
    """A caveat when the TTFT spread is wider than the 5 ms the target is about."""
    widths = [1000 * (x["p75"] - x["p25"]) for x in (a, b) if x.get("p75") is not None]
    if widths and max(widths) > 5.0:
        return (f" The TTFT spread (IQR up to {max(widths):,.0f} ms) is wider than the 5 ms "
                "target, so this run cannot resolve it either way.")
    return ""


def _ratio(a: float | None, b: float | None) -> float:
    return a / b if a and b else math.nan


def _ahead(r: float) -> str:
    if math.isnan(r):
        return "at an unknown ratio"
    if abs(r - 1) < 0.03:
        return f"at the same speed ({r:.2f}×)"
    return f"{r:.2f}× as fast ({'ahead' if r > 1 else 'behind'})"


def _faster(r: float) -> str:
    if math.isnan(r):
        return "at an unknown ratio"
    if abs(r - 1) < 0.03:
        return "at the same time"
    return f"{'sooner' if r < 1 else 'later'} ({r:.2f}× their time)"


# ------------------------------------------------------------------ the page


def render(record: dict[str, Any], source: str = "", root: Path | None = None) -> str:
    """The generated doc; `root`: where the runs made apart (APART) are, none when None."""
    m = record.get("machine", {})
    b = record.get("benchmarks", {})
    mode = "smoke" if record.get("smoke") else "quick" if record.get("quick") else "full"
    out = ["# Benchmarks", "",
           f"Generated by `make bench` (`python -m bench`) from `bench/results/{source}` — a "
           f"{mode} run started {record.get('started', '?')}. Do not edit by hand.", "",
           "Time per benchmark: " + ", ".join(
               f"{n} {v.get('seconds', 0):.0f} s" for n, v in b.items())
           + f" — {sum(v.get('seconds', 0) for v in b.values()) / 60:.1f} min in all.", "",
           "Method: every comparison runs its contenders interleaved (A B C, C B A, …) in one "
           "run after a warm-up, so a busy machine weighs on all of them alike; tables give "
           "medians with the interquartile range in brackets, and ratios of medians.", "",
           "## Machine", ""]
    out += _table(["", ""], [[k, str(m.get(k, "–"))] for k in (
        "host", "cpu", "cores", "memory_gb", "os", "mlx", "mlx_device", "mlx_lm", "python",
        "openblas_preloaded", "gemv_forwarder", "load_average", "commit")])
    out += ["## Conclusions", ""] + conclusions(record)
    out += ["## Targets", ""] + targets(b, source, apart_targets(root) if root else None)
    engine = _ok(b.get("engine"))
    if engine:
        out += ["## Engine: mlx-lm in process vs our gRPC server vs `mlx_lm.server`", ""]
        out += single_stream(engine, b)
        out += concurrency(engine)
    agent = _ok(b.get("agent_tasks"))
    if agent:
        out += ["## Agent-loop tasks (bench/tasks)", ""] + agent_tasks(agent)
    dist = _ok(b.get("distributed"))
    if dist:
        out += ["## One model across ranks: 1 rank vs 2 (`bench/distributed.py`)", ""]
        out += distributed(dist)
    coder = _ok(b.get("coder_models"))
    if coder:
        out += ["## Real coder models: Qwen2.5-Coder 0.5B and 1.5B", ""] + coder_models(coder)
    for name, bench in b.items():
        if name in ("engine", "agent_tasks", "distributed", "coder_models") or not bench.get("ok"):
            continue
        out += [f"## {name}", "", f"`bench/{name}.py`, {bench.get('seconds')} s.", ""]
        out += _table(["measure", "value"], [[k, v] for k, v in flat(bench["result"])])
    failed = {n: v for n, v in b.items() if not v.get("ok")}
    if failed:
        out += ["## Errors", ""]
        out += _table(["benchmark", "error"], [[n, str(v.get("error", ""))[:300].replace(
            "|", "\\|").replace("\n", " ")] for n, v in failed.items()])
    return "\n".join(out).rstrip() + "\n"


def write_doc(doc: Path, text: str) -> None:
    """Write the generated `text` to `doc`, and after it what `doc` holds from the KEPT line on:
    the part written by hand is never lost to a regeneration."""
    old = doc.read_text() if doc.is_file() else ""
    at = old.find(KEPT)
    doc.write_text(text + ("\n" + old[at:] if at >= 0 else ""))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    path = Path(argv[0]) if argv else newest_results()
    if path is None:
        print("bench.report: no results yet in bench/results; run `make bench-quick`",
              file=sys.stderr)
        return 2
    doc = Path(__file__).resolve().parent.parent / "docs" / "BENCHMARKS.md"
    write_doc(doc, render(json.loads(path.read_text()), path.name, path.parent))
    print(f"bench.report: wrote {doc} from {path.name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
