"""Speculative decoding: one stream's decode speed with a draft model ÷ without, same server.

    .venv/bin/python -m bench.speculative [--quick]     # JSON on stdout, progress on stderr

Our gRPC server lists the target model twice, as "plain" and as "drafted" (`draft = ` the
draft model in [[models]]), and the draft model itself; it holds one copy of the target at a
time (plain's runs, then it is unloaded and drafted's run: 1.5B + 0.5B is 8.4 GB as float32),
so a busy patch can weigh on one side more than the other, which the spread shows. One stream
at a time, greedy, prompt cache off, after a warm-up: decode tokens/s ((tokens - 1) / (last
token - first token), client side), the draft's acceptance rate (accepted ÷ proposed, from
Usage), and whether the drafted reply was token for token the plain one (it must be).

Target `speculative_decode_speedup_ge_1.3`: Qwen2.5-Coder-1.5B with the 0.5B drafting (the
default; installed with `inference-node install`, 6 GB + 2.4 GB as float32 on a CPU).
BENCH_SPEC_MODELS=target,draft picks others from the install list (the same model twice
measures the machinery's cost at full acceptance, not a speed-up). BENCH_SMOKE=1: two tiny
random models with one tokenizer, one repeat, a few tokens.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.servers import REPO, in_process
from bench.stats import ratio, smoke, summary
from inference_node import blas

CACHE = REPO / ".home" / "test-models"
MODELS = ("qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b")  # target, draft
PROMPT = ("Write a Python function `merge_intervals(intervals)` that merges overlapping "
          "closed intervals given as (start, end) tuples and returns them sorted. Include a "
          "docstring and handle the empty list.")


def log(msg: str) -> None:
    print(f"bench.speculative: {msg}", file=sys.stderr, flush=True)


def params(quick: bool) -> dict[str, int]:
    if smoke():
        return {"repeats": 1, "warmup": 0, "max_tokens": 8, "draft_tokens": 3}
    if quick:
        return {"repeats": 2, "warmup": 1, "max_tokens": 64, "draft_tokens": 3}
    return {"repeats": 5, "warmup": 1, "max_tokens": 160, "draft_tokens": 3}


def model_folders(tmp: Path) -> tuple[dict[str, str], Path, Path]:
    """({"target": name, "draft": name}, target folder, draft folder)."""
    if smoke():
        sys.path.insert(0, str(REPO / "tests"))
        from tiny_models import write_random_chat_model

        return ({"target": "tiny-random (smoke)", "draft": "tiny-random-other (smoke)"},
                write_random_chat_model(tmp / "target", seed=4),
                write_random_chat_model(tmp / "draft", seed=5))
    from inference_node.install import KNOWN_MODELS, install

    CACHE.mkdir(parents=True, exist_ok=True)
    target, draft = os.environ.get("BENCH_SPEC_MODELS", ",".join(MODELS)).split(",")
    return ({"target": target, "draft": draft}, install(KNOWN_MODELS[target], CACHE)[0],
            install(KNOWN_MODELS[draft], CACHE)[0])


def one(stub: Any, model: str, max_tokens: int,
        messages: list[dict[str, str]] | None = None) -> dict[str, Any]:
    """One greedy reply of `model` to `messages` (default: PROMPT), timed client side."""
    from inference_node.api import pb

    request = pb.ChatRequest(model=model, max_tokens=max_tokens, messages=[
        pb.Message(role=m["role"], text=m["content"])
        for m in messages or [{"role": "user", "content": PROMPT}]])
    t_first = t_last = 0.0
    text, done = "", None
    for ev in stub.Chat(request, timeout=3600):
        kind = ev.WhichOneof("event")
        if kind == "delta":
            t_last = time.perf_counter()
            t_first = t_first or t_last
            text += ev.delta.text
        elif kind == "done":
            done = ev.done
    assert done is not None
    n = done.usage.completion_tokens
    return {"text": text, "tokens": n,
            "decode_tps": (n - 1) / (t_last - t_first) if n > 1 and t_last > t_first else 0.0,
            "drafted": done.usage.draft_tokens, "accepted": done.usage.accepted_draft_tokens}


def run(quick: bool) -> dict[str, Any]:
    from inference_node.config import ModelEntry

    t_start = time.monotonic()
    p = params(quick)
    with tempfile.TemporaryDirectory() as d:
        names, target, draft = model_folders(Path(d))
        models = [ModelEntry(name="plain", path=str(target), prompt_lookup=False),
                  ModelEntry(name="drafted", path=str(target), draft="draft"),
                  ModelEntry(name="draft", path=str(draft))]
        with in_process(models, draft_tokens=p["draft_tokens"]) as (server, stub):
            log(f"{names['target']} with and without {names['draft']} drafting, "
                f"{p['repeats']} runs of {p['max_tokens']} tokens")
            samples: dict[str, list[dict[str, Any]]] = {}
            for side in ("plain", "drafted"):  # one copy of the target at a time
                runs = [one(stub, side, p["max_tokens"])
                        for _ in range(p["warmup"] + p["repeats"])]
                samples[side] = runs[p["warmup"]:]
                server.engine.unload(side)
    drafted = sum(s["drafted"] for s in samples["drafted"])
    accepted = sum(s["accepted"] for s in samples["drafted"])
    tps = {side: summary([s["decode_tps"] for s in runs]) for side, runs in samples.items()}
    out: dict[str, Any] = {
        "models": names, "params": p, "decode_tps": tps,
        "speedup": ratio(tps["drafted"]["median"], tps["plain"]["median"]),
        "acceptance_rate": round(accepted / drafted, 3) if drafted else 0.0,
        "tokens_per_target_pass": round(
            sum(s["tokens"] for s in samples["drafted"])
            / max(1, sum(s["tokens"] for s in samples["drafted"]) - accepted), 3),
        "greedy_identical": all(a["text"] == b["text"]
                                for a, b in zip(samples["plain"], samples["drafted"],
                                                strict=True)),
        "wall_s": round(time.monotonic() - t_start, 1),
    }
    if (names["target"], names["draft"]) == MODELS:  # the target is set for this pair only
        out["targets"] = {"speculative_decode_speedup_ge_1.3": out["speedup"] >= 1.3}
    return out


if __name__ == "__main__":
    blas.reexec_with_openblas(sys.argv[1:], module=__spec__.name)  # timed as `make bench` times it
    print(json.dumps(run("--quick" in sys.argv), indent=1))
