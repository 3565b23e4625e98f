"""MLX on a CPU, with and without the project's two workarounds, side by side, same weights.

    .venv/bin/python -m bench.cpu [--quick]

1. The gemv forwarder (inference_node/gemv_forward.c, preloaded ahead of OpenBLAS by
   inference_node/blas.py): MLX does decode's one-row products with cblas_sgemm, which Debian
   12's OpenBLAS (0.3.21) runs at a third of sgemv's speed; the forwarder sends them to sgemv.
2. Its small-rows kernel: a batch of 2 to 8 streams decodes with 2 to 8 rows, which OpenBLAS
   packs the same way; the kernel streams the weights once (x86-64 with AVX2 and FMA).
3. Prefill attention through numpy (inference_node/cpu_attention.py, the engine's default on a
   CPU): MLX's CPU `exp` costs about 25 ns an element here, and long-context prefill is mostly
   softmax.

Four sides, each its own process (a preload is fixed when a process starts), alternating:
`mlx` (OpenBLAS alone, MLX's attention), `gemv` (the forwarder ahead of it, one-row products
only: STUDIO_CODER_SMALL_ROWS=0), `rows` (the forwarder with its small-rows kernel), and
`gemv_numpy` (all of it and numpy attention, as the engine runs). Each loads SmolLM2 as the
engine serves it (float32; a tiny random model under BENCH_SMOKE), prefills a short and a long
context in 512-token steps and decodes greedily from each; then decodes batches of 2, 4 and 8
streams from a 64-token prompt each. Targets: decode at least 1.3x with the forwarder at both
contexts, with the same tokens; prefill at the long context at least 1.3x with numpy
attention; batched decode at least 1.3x with the small-rows kernel at 2, 4 and 8 streams, with
the same tokens. (A bare one-row product measured 3.1x; decode also runs attention, argmax and
MLX's own overhead.)
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
decode_tokens, batches = int(sys.argv[3]), json.loads(sys.argv[6])
if sys.argv[5] == "numpy":
    from inference_node import cpu_attention
    assert cpu_attention.install()
model, _ = mlx_compat.load_model(path, lazy=True)
if dequantizes_on_load(True):  # as the engine serves it on a CPU: float32
    model = mlx_compat.dequantize_model(model)
mlx_compat.evaluate(model)


def run(ids, step):  # prefill ids (streams x tokens) in steps, decode each stream greedily
    cache = make_prompt_cache(model)
    t0 = time.perf_counter()
    for i in range(0, ids.shape[1], step):
        logits = model(ids[:, i:i + step], cache=cache)
        mx.eval(logits)
    prefill_s = time.perf_counter() - t0
    token = mx.argmax(logits[:, -1, :], axis=-1, keepdims=True)
    tokens = []
    t0 = time.perf_counter()
    for _ in range(decode_tokens):
        logits = model(token, cache=cache)
        token = mx.argmax(logits[:, -1, :], axis=-1, keepdims=True)
        mx.eval(token)
        tokens.append(token[:, 0].tolist())
    return prefill_s, time.perf_counter() - t0, tokens


out = {}
for ctx in contexts:
    prefill_s, decode_s, tokens = run(mx.array([[(i * 7919) % 1000 + 100 for i in range(ctx)]]),
                                      512)
    out[str(ctx)] = {"prefill_tps": ctx / prefill_s, "decode_tps": decode_tokens / decode_s,
                     "tokens": [t for (t,) in tokens]}
batched = {}
for b in batches:  # b streams, different 64-token prompts, prefilled and decoded together
    _, decode_s, tokens = run(mx.array([[(i * 7919 + s * 131) % 1000 + 100 for i in range(64)]
                                        for s in range(b)]), 64)
    batched[str(b)] = {"decode_tps": b * decode_tokens / decode_s, "tokens": tokens}
counts = {"forwarded_calls": None, "small_rows_calls": None}
if forwarder:
    lib = ctypes.CDLL(forwarder)
    counts = {"forwarded_calls": ctypes.c_ulong.in_dll(lib, "studio_gemv_forwarded").value,
              "small_rows_calls": ctypes.c_ulong.in_dll(lib, "studio_small_rows").value}
print(json.dumps({"contexts": out, "batched": batched, **counts}))
"""


# side: (the forwarder preloaded, its small-rows kernel on, attention)
SIDES = {"mlx": (False, False, "mlx"), "gemv": (True, False, "mlx"),
         "rows": (True, True, "mlx"), "gemv_numpy": (True, True, "numpy")}


def _side(path: Path, side: str, forwarder: str, contexts: list[int], decode_tokens: int,
          batches: list[int], lib: str) -> dict[str, Any]:
    forwarded, small_rows, attention = SIDES[side]
    env = blas.without_preload()
    env["LD_PRELOAD"] = " ".join([forwarder, lib] if forwarded else [lib])
    env["STUDIO_CODER_SMALL_ROWS"] = "1" if small_rows else "0"
    env.setdefault("OPENBLAS_NUM_THREADS", "1")  # as the tests run it; see BENCHMARKS.md
    done = subprocess.run([sys.executable, "-c", SIDE, str(path), json.dumps(contexts),
                           str(decode_tokens), forwarder if forwarded else "", attention,
                           json.dumps(batches)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"the {side} side failed:\n{done.stderr[-2000:]}")
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
                                        (3, [64, 2048], 24) if quick else (5, [64, 4096], 48))
    batches = [2] if tiny else [2, 4, 8]
    with tempfile.TemporaryDirectory() as d:
        path, info = prepare_model(Path(d), tiny=tiny)
        rows: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
        for i in range(repeats):
            order = list(rows) if i % 2 == 0 else list(reversed(rows))
            for side in order:
                rows[side].append(_side(path, side, forwarder, contexts, decode_tokens, batches,
                                        lib))

    def same(a: str, b: str, ctx: str, part: str = "contexts") -> bool:
        return all(r[part][ctx]["tokens"] == rows[a][0][part][ctx]["tokens"] for r in rows[b])

    per_context: dict[str, Any] = {}
    for ctx in map(str, contexts):
        stats = {side: {k: summary([r["contexts"][ctx][k] for r in rs])
                        for k in ("prefill_tps", "decode_tps")} for side, rs in rows.items()}

        def med(side: str, key: str) -> float:
            return stats[side][key]["median"]  # noqa: B023 - used within this iteration

        per_context[ctx] = {
            **stats,
            "decode_ratio_gemv": ratio(med("gemv", "decode_tps"), med("mlx", "decode_tps")),
            "prefill_ratio_numpy_attention": ratio(med("gemv_numpy", "prefill_tps"),
                                                   med("gemv", "prefill_tps")),
            "decode_ratio_both": ratio(med("gemv_numpy", "decode_tps"), med("mlx", "decode_tps")),
            "prefill_ratio_both": ratio(med("gemv_numpy", "prefill_tps"),
                                        med("mlx", "prefill_tps")),
            "same_tokens_gemv": same("mlx", "gemv", ctx),
            "same_tokens_numpy_attention": same("mlx", "gemv_numpy", ctx),
        }
    per_batch: dict[str, Any] = {}
    for b in map(str, batches):
        stats = {side: summary([r["batched"][b]["decode_tps"] for r in rs])
                 for side, rs in rows.items()}
        per_batch[b] = {
            **stats,
            "decode_ratio_small_rows": ratio(stats["rows"]["median"], stats["gemv"]["median"]),
            "decode_ratio_all": ratio(stats["gemv_numpy"]["median"], stats["mlx"]["median"]),
            "same_tokens_small_rows": same("gemv", "rows", b, "batched"),
        }
    long = per_context[str(contexts[-1])]
    return {
        "model": info, "openblas": lib, "repeats": repeats, "contexts": contexts,
        "decode_tokens": decode_tokens, "threads": os.environ.get("OPENBLAS_NUM_THREADS", "1"),
        "per_context": per_context, "batches": batches, "per_batch": per_batch,
        "forwarded_calls": rows["gemv"][0]["forwarded_calls"],
        "small_rows_calls": {side: rows[side][0]["small_rows_calls"] for side in ("gemv", "rows")},
        "targets": {
            "gemv_decode_ratio_ge_1.3": all(c["decode_ratio_gemv"] >= 1.3
                                            for c in per_context.values()),
            "gemv_same_tokens": all(c["same_tokens_gemv"] for c in per_context.values()),
            "numpy_attention_long_prefill_ratio_ge_1.3":
                long["prefill_ratio_numpy_attention"] >= 1.3,
            "small_rows_batch_decode_ratio_ge_1.3": all(b["decode_ratio_small_rows"] >= 1.3
                                                        for b in per_batch.values()),
            "small_rows_same_tokens": all(b["same_tokens_small_rows"]
                                          for b in per_batch.values()),
        },
    }


if __name__ == "__main__":
    print(json.dumps(run("--quick" in sys.argv), indent=1))
