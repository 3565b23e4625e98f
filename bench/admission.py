"""Admission benchmark: the cost of one decision, and a mixed workload with and without it.

1. decision time: median of many `reserve` + `release` pairs (the per-request path) and of
   `admit_load` decisions that pick an eviction victim, with the real system-memory reading
   (psutil) and with the watchdog's cached reading. Target < 1 ms.
2. mixed workload: 4 tiny random-weight llama models, a budget that holds 2 of them; a
   sequence of requests spread over the 4 (skewed: two hot, two cold). Each request makes sure
   its model is loaded (real `mlx_lm` load + eval of the weights; under admission, evicting the
   LRU idle model first), reserves KV, runs 8 decode steps on a real KV cache, releases.
   Baseline: the same sequence with no admission, all 4 models staying resident. Reported:
   requests/s, loads done, and peak MLX memory against the budget.
"""

from __future__ import annotations

import gc
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import mlx.core as mx

from bench.stats import smoke
from inference_node.admission import GB, Admission
from inference_node.config import MemoryConfig
from inference_node.footprint import estimate

MB = 1 << 20


def _median_us(fn: Any, n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def decision_times(n: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for label, watchdog in (("psutil reading", False), ("watchdog cached", True)):
        adm = Admission(MemoryConfig(budget_gb=10.0, overhead_mb=0, floor_gb=0.0), "bench")
        if watchdog:
            adm.start()
        for i in range(6):
            adm.admit_load(f"m{i}", GB, pinned=False)
            adm.loaded(f"m{i}", GB, 0)
        out[f"reserve_release_us ({label})"] = _median_us(
            lambda adm=adm: adm.release(adm.reserve("m0", 1000, 1000, 64 * 1024)), n)

        def admit_with_eviction(adm: Admission = adm) -> None:
            victims = adm.admit_load("new", 3 * GB, pinned=False)
            for v in victims:
                adm.unloaded(v)
            adm.loaded("new", 3 * GB, 0)
            adm.unloaded("new")
            for v in victims:  # put the ledger back for the next round
                adm.admit_load(v, GB, pinned=False)
                adm.loaded(v, GB, 0)

        out[f"admit_load_evicting_us ({label}, includes restoring the ledger)"] = _median_us(
            admit_with_eviction, max(n // 4, min(n, 50)))
        adm.stop()
    return out


def _tiny_model(path: Path, seed: int) -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from tiny_models import write_random_llama

    mx.random.seed(seed)
    return write_random_llama(path, hidden_size=384, intermediate_size=1024,
                              num_attention_heads=6, vocab_size=8192)


def _serve(model: Any, steps: int = 8) -> None:
    from mlx_lm.models.cache import make_prompt_cache

    cache = make_prompt_cache(model)
    y = mx.zeros((1, 16), dtype=mx.int32)
    for _ in range(steps):
        logits = model(y, cache=cache)
        y = mx.argmax(logits[:, -1:, :], axis=-1).astype(mx.int32)
        mx.eval(y)


def mixed_workload(requests: int, admission: bool, dirs: list[Path],
                   budget: int) -> dict[str, float]:
    from mlx_lm.utils import load_model

    rng = random.Random(0)
    names = [d.name for d in dirs]
    seq = rng.choices(names, weights=[4, 3, 1, 1], k=requests)
    fps = {d.name: estimate(d, 2 * MB) for d in dirs}
    adm = Admission(MemoryConfig(overhead_mb=2, floor_gb=0.0), "bench", budget_bytes=budget)
    resident: dict[str, Any] = {}
    gc.collect()
    mx.clear_cache()
    mx.reset_peak_memory()
    base = mx.get_active_memory()
    loads = 0
    t0 = time.perf_counter()
    for name in seq:
        if name not in resident:
            if admission:
                for victim in adm.admit_load(name, fps[name].resident_bytes, pinned=False):
                    del resident[victim]
                    gc.collect()
                    mx.clear_cache()
                    adm.unloaded(victim)
            before = mx.get_active_memory()
            model, _ = load_model(dirs[names.index(name)])
            mx.eval(model.parameters())
            resident[name] = model
            del model
            loads += 1
            if admission:
                adm.loaded(name, fps[name].resident_bytes, mx.get_active_memory() - before)
        r = adm.reserve(name, 16, 8, fps[name].kv_per_token) if admission else None
        _serve(resident[name])
        if r is not None:
            adm.release(r)
    elapsed = time.perf_counter() - t0
    peak = mx.get_peak_memory() - base
    resident.clear()
    gc.collect()
    mx.clear_cache()
    return {"requests_per_s": requests / elapsed, "loads": loads,
            "peak_mb": peak / MB, "budget_mb": budget / MB}


def run(quick: bool) -> dict:
    n, requests, rounds = (20, 4, 1) if smoke() else (300, 40, 2) if quick else (3000, 200, 2)
    result: dict[str, Any] = {"decision": decision_times(n)}
    with tempfile.TemporaryDirectory() as tmp:
        dirs = [_tiny_model(Path(tmp) / f"m{i}", i) for i in range(4)]
        one = estimate(dirs[0], 2 * MB).resident_bytes
        budget = int(one * 2.5)  # holds 2 of the 4 models (with room for KV), not 3
        _serve_warm = mixed_workload(4, False, dirs, budget)  # warm MLX up, not reported
        del _serve_warm
        # Interleaved rounds, best of each: the machine may be busy with other work.
        runs: dict[str, list[dict[str, float]]] = {"with_admission": [], "no_admission": []}
        for _ in range(rounds):
            runs["no_admission"].append(mixed_workload(requests, False, dirs, budget))
            runs["with_admission"].append(mixed_workload(requests, True, dirs, budget))
        result["workload"] = {
            "simulated": "real tiny-model loads (mlx_lm load_model + eval, "
                         f"{one / MB:.1f} MB each) and 8 real decode steps per request; "
                         f"one thread; best of {rounds} interleaved rounds",
            **{k: max(v, key=lambda r: r["requests_per_s"]) for k, v in runs.items()},
        }
    w = result["workload"]
    w["throughput_ratio"] = (w["with_admission"]["requests_per_s"]
                             / w["no_admission"]["requests_per_s"])
    return result


if __name__ == "__main__":
    print(json.dumps(run("--quick" in sys.argv), indent=2))
