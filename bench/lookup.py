"""Prompt lookup: one stream's decode speed with proposals from the request itself ÷ without.

    .venv/bin/python -m bench.lookup [--quick]     # JSON on stdout, progress on stderr
    .venv/bin/python -m bench.lookup --spans 5,7 [--quick]     # engine.lookup_tokens side by side
    .venv/bin/python -m bench.lookup --pair [--quick]     # a reply that outlasts another's

Our gRPC server lists each model twice, as "plain" and as "looked-up" (`prompt_lookup = true`
in [[models]]: no draft model, proposals taken from the request's own tokens), both loaded, and
the two are asked in turn (plain, looked-up, looked-up, plain, ...) after a warm-up. One stream
at a time, greedy, prompt cache off. Two prompts:

- `edit`: the whole-file coder's brief for a task of bench/tasks (its file shown, the task,
  "write the file back whole with the change"), the loop's own prompt (`loop/brief`) with its
  own system prompt: what the coder's replies are on the task bench;
- `fresh`: a function written from a one-line request, where little of the prompt repeats:
  what prompt lookup costs when it has little to propose.

Decode tokens/s is (tokens - 1) / (last token - first token), client side; `speedup` is its
median looked-up ÷ plain; the acceptance rate is accepted ÷ proposed (Usage); the replies must
be token for token the same. Qwen2.5-Coder 0.5B and 1.5B (`inference-node install`);
BENCH_LOOKUP_MODELS=a,b picks others from the install list. BENCH_SMOKE=1: a tiny random model,
one repeat, a few tokens.

`--spans 5,7` chooses `engine.lookup_tokens`, the most tokens a pass proposes: one server per
value in this process, each serving the model with prompt lookup on, asked in turn on both
prompts. A pass checks up to lookup_tokens + 1 tokens in one forward; on a CPU with the gemv
forwarder (inference_node/gemv_forward.c) a product of up to 8 rows reads the weights once and
one of 9 goes to OpenBLAS's packing sgemm, so the cost of a pass jumps past 7 proposals.

`--pair`: two agents at once. The edit brief (up to max_tokens) and the fresh request (a
sixth of that) are sent together to the same model, so both decode in one batch until the
short one ends; the long one then decodes alone, with prompt lookup if the model has it
(`speculative.from_batch`) and in a batch of one if not. Its decode speed, looked-up ÷ plain,
is what taking a lone request back to the lookup gains; before `from_batch` it was 1.0 (a
request that began beside another never proposed a token).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.servers import REPO, in_process
from bench.speculative import CACHE, one
from bench.speculative import PROMPT as FRESH
from bench.stats import interleave, ratio, smoke, summary
from inference_node import blas

MODELS = ("qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b")
TASK = REPO / "bench" / "tasks" / "linecount_words"


def log(msg: str) -> None:
    print(f"bench.lookup: {msg}", file=sys.stderr, flush=True)


def params(quick: bool) -> dict[str, Any]:
    from inference_node.config import EngineConfig

    k = EngineConfig().lookup_tokens  # as a node has it
    if smoke():
        return {"repeats": 1, "warmup": 0, "max_tokens": 8, "lookup_tokens": k, "models": 1}
    if quick:
        return {"repeats": 2, "warmup": 1, "max_tokens": 160, "lookup_tokens": k, "models": 1}
    return {"repeats": 3, "warmup": 1, "max_tokens": 400, "lookup_tokens": k,
            "models": len(MODELS)}


def prompts() -> dict[str, list[dict[str, str]]]:
    """The two workloads as chat messages: the coder's brief for TASK, and a fresh function."""
    from agent_node import prompts as loop_prompts

    repo = TASK / "repo"
    shown = [(p.relative_to(repo).as_posix(), p.read_text())
             for p in sorted(repo.glob("*.py"))]
    brief = loop_prompts.render(
        "loop/brief", task=(TASK / "task.md").read_text().strip(),
        files=[path for path, _ in shown], files_more=0, shown=shown, outlines=[],
        start_tests="", test_cmd="python -m pytest -q tests", asks_for_change=True,
        files_form=shown[0][0], spec=[], failures=[], round=1, again=False)
    system = loop_prompts.render("loop/coder_files_system")
    return {"edit": [{"role": "system", "content": system}, {"role": "user", "content": brief}],
            "fresh": [{"role": "user", "content": FRESH}]}


def model_folders(tmp: Path) -> dict[str, Path]:
    if smoke():
        sys.path.insert(0, str(REPO / "tests"))
        from tiny_models import write_random_chat_model

        return {"tiny-random (smoke)": write_random_chat_model(tmp / "tiny", seed=4)}
    from inference_node.install import KNOWN_MODELS, install

    CACHE.mkdir(parents=True, exist_ok=True)
    names = os.environ.get("BENCH_LOOKUP_MODELS", ",".join(MODELS)).split(",")
    return {name: install(KNOWN_MODELS[name], CACHE)[0] for name in names}


def compare(stub: Any, messages: list[dict[str, str]], p: dict[str, Any]) -> dict[str, Any]:
    """Plain and looked-up in turn on one prompt: their speeds, the speed-up, the acceptance."""
    def ask(side: str) -> Callable[[], dict[str, Any]]:
        return lambda: one(stub, side, p["max_tokens"], messages)

    samples = interleave({side: ask(side) for side in ("plain", "looked-up")}, p["repeats"],
                         warmup=p["warmup"])
    looked = samples["looked-up"]
    tps = {side: summary([s["decode_tps"] for s in runs]) for side, runs in samples.items()}
    return {
        "decode_tps": tps,
        "speedup": ratio(tps["looked-up"]["median"], tps["plain"]["median"]),
        "completion_tokens": looked[0]["tokens"] if looked else 0,
        **_proposals(looked),
        "greedy_identical": all(a["text"] == b["text"] for a, b in zip(
            samples["plain"], looked, strict=True)),
    }


def _proposals(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Over one side's runs: accepted ÷ proposed, and tokens emitted per pass of the model."""
    drafted = sum(s["drafted"] for s in runs)
    accepted = sum(s["accepted"] for s in runs)
    tokens = sum(s["tokens"] for s in runs)
    return {"acceptance_rate": round(accepted / drafted, 3) if drafted else 0.0,
            "tokens_per_pass": round(tokens / max(1, tokens - accepted), 3)}


def run(quick: bool) -> dict[str, Any]:
    from inference_node.config import ModelEntry

    t_start = time.monotonic()
    p = params(quick)
    work = prompts()
    out: dict[str, Any] = {"params": p, "models": {}}
    with tempfile.TemporaryDirectory() as d:
        folders = list(model_folders(Path(d)).items())[:p["models"]]
        for name, folder in folders:  # one model (two copies) in memory at a time
            models = [ModelEntry(name="plain", path=str(folder), prompt_lookup=False),
                      ModelEntry(name="looked-up", path=str(folder), prompt_lookup=True)]
            with in_process(models, lookup_tokens=p["lookup_tokens"]) as (_, stub):
                out["models"][name] = {}
                for label, messages in work.items():
                    log(f"{name}, {label}: {p['repeats']} runs a side of up to "
                        f"{p['max_tokens']} tokens")
                    row = compare(stub, messages, p)
                    log(f"{name}, {label}: {row['speedup']:.2f}x, "
                        f"{row['tokens_per_pass']:.2f} tokens a pass")
                    out["models"][name][label] = row
    out["wall_s"] = round(time.monotonic() - t_start, 1)
    return out


def run_spans(spans: list[int], quick: bool) -> dict[str, Any]:
    """`engine.lookup_tokens` side by side (see the module docstring): per model and prompt,
    each value's decode speed, its ratio to the first value's, and its acceptance."""
    from inference_node.config import ModelEntry

    t_start = time.monotonic()
    p = params(quick)
    work = prompts()
    out: dict[str, Any] = {"params": {**p, "lookup_tokens": spans}, "models": {}}
    with tempfile.TemporaryDirectory() as d:
        for name, folder in list(model_folders(Path(d)).items())[:p["models"]]:
            entry = ModelEntry(name="looked-up", path=str(folder), prompt_lookup=True)
            with ExitStack() as servers:  # one copy of the model per value, this model only
                stubs = {k: servers.enter_context(in_process([entry], lookup_tokens=k))[1]
                         for k in spans}
                out["models"][name] = {}
                for label, messages in work.items():
                    log(f"{name}, {label}: lookup_tokens {spans}, {p['repeats']} runs each of "
                        f"up to {p['max_tokens']} tokens")
                    row = _spans_row(stubs, messages, p)
                    log(f"{name}, {label}: " + ", ".join(
                        f"{k}: {r:.2f}x" for k, r in row["ratio_to_first"].items()))
                    out["models"][name][label] = row
    out["wall_s"] = round(time.monotonic() - t_start, 1)
    return out


def _spans_row(stubs: dict[int, Any], messages: list[dict[str, str]],
               p: dict[str, Any]) -> dict[str, Any]:
    def ask(stub: Any) -> Callable[[], dict[str, Any]]:
        return lambda: one(stub, "looked-up", p["max_tokens"], messages)

    samples = interleave({str(k): ask(stub) for k, stub in stubs.items()}, p["repeats"],
                         warmup=p["warmup"])
    rows: dict[str, dict[str, Any]] = {
        k: {"decode_tps": summary([s["decode_tps"] for s in runs]), **_proposals(runs)}
        for k, runs in samples.items()}
    first = next(iter(rows))
    texts = [s["text"] for runs in samples.values() for s in runs]
    return {"lookup_tokens": rows,
            "ratio_to_first": {k: ratio(r["decode_tps"]["median"],
                                        rows[first]["decode_tps"]["median"])
                               for k, r in rows.items()},
            "completion_tokens": samples[first][0]["tokens"] if samples[first] else 0,
            "greedy_identical": len(set(texts)) <= 1}


def run_pair(quick: bool) -> dict[str, Any]:
    """`--pair` (see the module docstring), on the first model: the long reply's speed."""
    import threading

    from inference_node.config import ModelEntry

    t_start = time.monotonic()
    p = params(quick)
    work = prompts()
    short = max(2, p["max_tokens"] // 6)
    out: dict[str, Any] = {"params": {**p, "short_max_tokens": short}, "models": {}}

    def pair(stub: Any, side: str) -> Callable[[], dict[str, Any]]:
        def both() -> dict[str, Any]:
            other = threading.Thread(target=one, args=(stub, side, short, work["fresh"]))
            other.start()
            got = one(stub, side, p["max_tokens"], work["edit"])
            other.join()
            return got
        return both

    with tempfile.TemporaryDirectory() as d:
        name, folder = next(iter(model_folders(Path(d)).items()))
        models = [ModelEntry(name="plain", path=str(folder), prompt_lookup=False),
                  ModelEntry(name="looked-up", path=str(folder), prompt_lookup=True)]
        with in_process(models, lookup_tokens=p["lookup_tokens"]) as (_, stub):
            log(f"{name}: edit (up to {p['max_tokens']} tokens) beside fresh (up to {short}), "
                f"{p['repeats']} pairs a side")
            samples = interleave({side: pair(stub, side) for side in ("plain", "looked-up")},
                                 p["repeats"], warmup=p["warmup"])
    tps = {side: summary([s["decode_tps"] for s in runs]) for side, runs in samples.items()}
    looked = samples["looked-up"]
    row = {"decode_tps": tps, "speedup": ratio(tps["looked-up"]["median"],
                                               tps["plain"]["median"]),
           "completion_tokens": looked[0]["tokens"] if looked else 0,
           "proposed": sum(s["drafted"] for s in looked),
           "accepted": sum(s["accepted"] for s in looked),
           "greedy_identical": all(a["text"] == b["text"] for a, b in zip(
               samples["plain"], looked, strict=True))}
    log(f"{name}: the long reply {row['speedup']:.2f}x with the lookup taking it back")
    out["models"][name] = {"pair": row}
    out["wall_s"] = round(time.monotonic() - t_start, 1)
    return out


def _spans_arg(argv: list[str]) -> list[int]:
    given = argv[argv.index("--spans") + 1] if argv.index("--spans") + 1 < len(argv) else ""
    try:
        spans = [int(k) for k in given.split(",")]
    except ValueError:
        spans = []
    if len(spans) < 2 or any(not 1 <= k <= 16 for k in spans):
        sys.exit(f"bench.lookup: --spans takes two or more values of engine.lookup_tokens "
                 f"(1 to 16) separated by commas, such as --spans 5,7; not {given!r}")
    return spans


if __name__ == "__main__":
    blas.reexec_with_openblas(sys.argv[1:], module=__spec__.name)  # timed as `make bench` times it
    quick = "--quick" in sys.argv
    if "--spans" in sys.argv:
        print(json.dumps(run_spans(_spans_arg(sys.argv), quick), indent=1))
    elif "--pair" in sys.argv:
        print(json.dumps(run_pair(quick), indent=1))
    else:
        print(json.dumps(run(quick), indent=1))
