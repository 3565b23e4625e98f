"""Decode with and without the gemv forwarder, side by side, on the same weights.

    .venv/bin/python -m bench.gemv [--quick]

MLX's CPU backend does decode's one-row products with cblas_sgemm; Debian 12's OpenBLAS (0.3.21)
packs the whole weight matrix for each, at about a third of sgemv's speed. The forwarder
(inference_node/gemv_forward.c, preloaded ahead of OpenBLAS by inference_node/blas.py) sends
those calls to sgemv. Each side is its own process, since a preload is fixed when a process
starts: OpenBLAS alone, then the forwarder ahead of it, alternating. Each loads SmolLM2 as the
engine serves it (float32; a tiny random model under BENCH_SMOKE), prefills a short and a long
context and decodes greedily from each. Target: decode at least 1.3x at both contexts with the
forwarder, the same tokens, and prefill (many rows, never forwarded) about even. (A bare
one-row product measured 3.1x; decode also runs attention, argmax and MLX's own overhead.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.servers import REPO, prepare_model
from bench.stats import ratio, smoke, summary
from inference_node import blas

# One side: load, then per context prefill in 512-token chunks and decode greedily.
SIDE = r"""
import ctypes, json, sys, time
import mlx.core as mx
from mlx_lm.models.cache import make_prompt_cache
from inference_node import mlx_compat
from inference_node.footprint import dequantizes_on_load

path, contexts, forwarder = sys.argv[1], json.loads(sys.argv[2]), sys.argv[4]
decode_tokens = int(sys.argv[3])
model, _ = mlx_compat.load_model(path, lazy=True)
if dequantizes_on_load(True):  # as the engine serves it on a CPU: float32
    model = mlx_compat.dequantize_model(model)
mlx_compat.evaluate(model)
out = {}
for ctx in contexts:
    cache = make_prompt_cache(model)
    ids = mx.array([[(i * 7919) % 1000 + 100 for i in range(ctx)]])
    t0 = time.perf_counter()
    for i in range(0, ctx, 512):
        logits = model(ids[:, i:i + 512], cache=cache)
        mx.eval(logits)
    prefill_s = time.perf_counter() - t0
    token = mx.argmax(logits[:, -1, :], axis=-1, keepdims=True)
    tokens = []
    t0 = time.perf_counter()
    for _ in range(decode_tokens):
        logits = model(token, cache=cache)
        token = mx.argmax(logits[:, -1, :], axis=-1, keepdims=True)
        mx.eval(token)
        tokens.append(token.item())
    decode_s = time.perf_counter() - t0
    out[str(ctx)] = {"prefill_tps": ctx / prefill_s, "decode_tps": decode_tokens / decode_s,
                     "tokens": tokens}
forwarded = None
if forwarder:
    forwarded = ctypes.c_ulong.in_dll(ctypes.CDLL(forwarder), "studio_gemv_forwarded").value
print(json.dumps({"contexts": out, "forwarded_calls": forwarded}))
"""


def _side(path: Path, forwarder: str | None, contexts: list[int], decode_tokens: int,
          lib: str) -> dict[str, Any]:
    env = blas.without_preload()
    env["LD_PRELOAD"] = " ".join(p for p in (forwarder, lib) if p)
    env.setdefault("OPENBLAS_NUM_THREADS", "1")  # as the tests run it; see BENCHMARKS.md
    done = subprocess.run([sys.executable, "-c", SIDE, str(path), json.dumps(contexts),
                           str(decode_tokens), forwarder or ""], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"the {'forwarded' if forwarder else 'plain'} side failed:\n"
                           f"{done.stderr[-2000:]}")
    return json.loads(done.stdout)


def run(quick: bool) -> dict[str, Any]:
    lib = blas.openblas()
    if lib is None:
        return {"skipped": "no OpenBLAS here (Debian: libopenblas0-pthread); nothing to forward"}
    forwarder = blas.forwarder()
    if forwarder is None:
        return {"skipped": f"the forwarder cannot be built: {blas.forwarder_problem()}"}
    tiny = smoke()
    repeats, contexts, decode_tokens = ((1, [16, 64], 4) if tiny else
                                        (3, [64, 1024], 24) if quick else (5, [64, 2048], 48))
    with tempfile.TemporaryDirectory() as d:
        path, info = prepare_model(Path(d), tiny=tiny)
        rows: dict[str, list[dict[str, Any]]] = {"openblas": [], "forwarder": []}
        for i in range(repeats):
            order = list(rows) if i % 2 == 0 else list(reversed(rows))
            for side in order:
                rows[side].append(_side(path, forwarder if side == "forwarder" else None,
                                        contexts, decode_tokens, lib))
    per_context: dict[str, Any] = {}
    for ctx in map(str, contexts):
        stats = {side: {k: summary([r["contexts"][ctx][k] for r in rs])
                        for k in ("prefill_tps", "decode_tps")} for side, rs in rows.items()}
        per_context[ctx] = {
            **stats,
            "decode_ratio": ratio(stats["forwarder"]["decode_tps"]["median"],
                                  stats["openblas"]["decode_tps"]["median"]),
            "prefill_ratio": ratio(stats["forwarder"]["prefill_tps"]["median"],
                                   stats["openblas"]["prefill_tps"]["median"]),
            "same_tokens": all(r["contexts"][ctx]["tokens"]
                               == rows["openblas"][0]["contexts"][ctx]["tokens"]
                               for rs in rows.values() for r in rs),
        }
    return {
        "model": info, "openblas": lib, "repeats": repeats, "contexts": contexts,
        "decode_tokens": decode_tokens, "threads": os.environ.get("OPENBLAS_NUM_THREADS", "1"),
        "per_context": per_context,
        "forwarded_calls": rows["forwarder"][0]["forwarded_calls"],
        "targets": {"decode_ratio_ge_1.3": all(c["decode_ratio"] >= 1.3
                                               for c in per_context.values()),
                    "same_tokens": all(c["same_tokens"] for c in per_context.values())},
    }


if __name__ == "__main__":
    print(json.dumps(run("--quick" in sys.argv), indent=1))
