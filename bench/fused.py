"""Fused projections (engine.fuse_projections, inference_node/fused.py): one decode step, fused
against plain, on the same weights in one process.

    .venv/bin/python -m bench.fused [--quick]   # JSON on stdout, progress on stderr

For each model (SmolLM2-135M, and the Qwen2.5-Coder 0.5B and 1.5B as bench/coder_models.py
installs them; not in --quick), two copies are loaded as the engine loads them on a CPU
(float32), one of them fused. For 1, 2, 4 and 8 streams after a 144-token prompt each, the
two run one decode step at a time, alternating in blocks (A B, B A, ...), and each step is
timed. The ratio is plain's median step over fused's.
The first prompt's logits of both copies are compared too: the fusion must not change them.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.coder_models import model_folders
from bench.servers import prepare_model
from bench.stats import ratio, smoke, summary
from inference_node import blas

LEVELS = [1, 2, 4, 8]
PROMPT = 144


def log(msg: str) -> None:
    print(f"bench.fused: {msg}", file=sys.stderr, flush=True)


def vocab_size(model: Any) -> int:
    return int(model.model.embed_tokens.weight.shape[0])


def step_fn(model: Any, streams: int) -> Callable[[], None]:
    """One decode step for `streams` rows on a PROMPT-token KV cache, rewound each time."""
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache

    cache = make_prompt_cache(model)
    vocab = vocab_size(model)
    prompt = mx.array([[(100 + i + j) % vocab for j in range(PROMPT)] for i in range(streams)])
    mx.eval(model(prompt, cache=cache))
    token = mx.array([[5]] * streams)

    def step() -> None:
        for c in cache:
            c.offset = PROMPT
        mx.eval(model(token, cache=cache))
    return step


def compare(path: Path, blocks: int, per_block: int) -> dict[str, Any]:
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache

    from inference_node import cpu_attention, fused, mlx_compat

    cpu_attention.install()
    plain, _ = mlx_compat.load(path, dequantize=True)
    model, _ = mlx_compat.load(path, dequantize=True)
    groups = fused.fuse_projections(model)
    x = mx.array([[(100 + j) % vocab_size(plain) for j in range(40)]] * 2)
    a, b = plain(x, cache=make_prompt_cache(plain)), model(x, cache=make_prompt_cache(model))
    finite = mx.isfinite(a) & mx.isfinite(b)  # a scripted model's logits hold -inf
    out: dict[str, Any] = {
        "fused_groups": groups,
        "logits_max_abs_diff": float(mx.where(finite, mx.abs(a - b), 0).max().item()),
        "same_infinities": bool((mx.isfinite(a) == mx.isfinite(b)).all().item()),
        "greedy_same": bool((a.argmax(-1) == b.argmax(-1)).all().item())}
    for n in LEVELS:
        log(f"fused: {path.name}, {n} stream(s), {blocks} blocks of {per_block} steps a side")
        steps = {"plain": step_fn(plain, n), "fused": step_fn(model, n)}
        times: dict[str, list[float]] = {"plain": [], "fused": []}
        for i in range(blocks):
            for side in (("plain", "fused") if i % 2 == 0 else ("fused", "plain")):
                steps[side]()  # the other side's step just ran: one unmeasured step first
                for _ in range(per_block):
                    t = time.perf_counter()
                    steps[side]()
                    times[side].append(time.perf_counter() - t)
        row: dict[str, Any] = {side: summary([1000 * t for t in v], 2)  # ms
                               for side, v in times.items()}
        row["speedup"] = round(ratio(row["plain"]["median"], row["fused"]["median"]), 3)
        out[str(n)] = row
    del plain, model
    mx.clear_cache()
    return out


def run(quick: bool) -> dict[str, Any]:
    blocks, per_block = (2, 2) if smoke() else (8, 4) if quick else (24, 4)
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory() as d:
        smollm, info = prepare_model(Path(d))
        paths = {info["name"]: smollm}
        if not (smoke() or quick):
            paths.update(model_folders(Path(d)))
        results = {name: compare(path, blocks, per_block) for name, path in paths.items()}
    return {"levels": LEVELS, "prompt_tokens": PROMPT, "blocks": blocks,
            "steps_per_block": per_block, "models": results,
            "wall_s": round(time.monotonic() - t_start, 1)}


if __name__ == "__main__":
    blas.reexec_with_openblas(sys.argv[1:], module=__spec__.name)  # timed as `make bench` times it
    print(json.dumps(run("--quick" in sys.argv), indent=2))
