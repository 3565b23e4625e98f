"""The gemv forwarder at two revisions, side by side: a batch's decode step with each.

    .venv/bin/python -m bench.forwarder [--base REV] [--quick]

inference_node/gemv_forward.c as it is in the working tree ("current") and as it was at REV
("base"; by default the revision before its last change) are each built into a temporary folder
and preloaded ahead of OpenBLAS into processes of their own, which alternate. Each loads the
model as the engine serves it (float32, projections fused) and decodes batches of 1, 2, 4 and 8
streams with mlx-lm's BatchGenerator, as the engine does: greedy, the engine benchmark's
144-token prompt in every stream. OpenBLAS runs its default threads (one a core), as a node
does, unless OPENBLAS_NUM_THREADS says otherwise.

Reported per batch: milliseconds per decode step (median over runs), current ÷ base as a speed
ratio, and whether both sides decoded the same tokens. SmolLM2 by default;
BENCH_FORWARDER_MODEL=qwen2.5-coder-0.5b runs an installed coder instead. BENCH_SMOKE=1: a tiny
scripted model, one run, a few steps.
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

# One side: load as the engine does, then per batch size decode from the same prompt.
SIDE = r"""
import json, sys, time
from mlx_lm.generate import BatchGenerator
from inference_node import fused, mlx_compat
from inference_node.footprint import dequantizes_on_load

path, prompt = sys.argv[1], json.loads(sys.argv[2])
steps, batches = int(sys.argv[3]), json.loads(sys.argv[4])
model, _ = mlx_compat.load(path, dequantize=dequantizes_on_load(True))
fused.fuse_projections(model)
out = {}
for b in batches:
    gen = BatchGenerator(model, completion_batch_size=b, prefill_batch_size=b,
                         prefill_step_size=2048)
    uids = gen.insert([prompt] * b, max_tokens=[steps] * b)
    tokens, stamps = {uid: [] for uid in uids}, []
    while len(stamps) < steps:
        _, emitted = gen.next()
        if emitted:
            stamps.append(time.perf_counter())
            for r in emitted:
                tokens[r.uid].append(r.token)
    gen.close()
    out[str(b)] = {"ms_per_step": 1000 * (stamps[-1] - stamps[0]) / (len(stamps) - 1),
                   "tokens": [tokens[uid] for uid in uids]}
print(json.dumps(out))
"""


def log(msg: str) -> None:
    print(f"bench.forwarder: {msg}", file=sys.stderr, flush=True)


def base_revision() -> str | None:
    """The revision before the forwarder's source last changed; None without one (a shallow
    clone, or no git)."""
    done = subprocess.run(["git", "log", "-n", "2", "--format=%H", "--",
                           "inference_node/gemv_forward.c"], cwd=REPO, capture_output=True,
                          text=True)
    revs = done.stdout.split() if done.returncode == 0 else []
    return revs[1] if len(revs) == 2 else None


def build_side(cc: str, rev: str | None, where: Path) -> Path:
    """The forwarder at `rev` (None: the working tree) built into `where`."""
    source = blas.FORWARDER_SOURCE
    if rev is not None:
        done = subprocess.run(["git", "show", f"{rev}:inference_node/gemv_forward.c"],
                              cwd=REPO, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"bench.forwarder: no forwarder at {rev}: {done.stderr.strip()}")
        source = where / "gemv_forward.c"
        source.write_text(done.stdout)
    lib = where / "libgemv_forward.so"
    problem = blas.build(cc, source, lib)
    if problem:
        raise SystemExit(f"bench.forwarder: {problem}")
    return lib


def model_folder(tmp: Path) -> tuple[Path, str]:
    name = os.environ.get("BENCH_FORWARDER_MODEL")
    if not name or smoke():
        path, info = prepare_model(tmp)
        return path, info["name"]
    from bench.speculative import CACHE
    from inference_node.install import KNOWN_MODELS, install

    CACHE.mkdir(parents=True, exist_ok=True)
    return install(KNOWN_MODELS[name], CACHE)[0], name


def run(quick: bool, base: str | None = None) -> dict[str, Any]:
    lib = blas.openblas()
    cc = blas.compiler()
    if lib is None or cc is None:
        return {"skipped": "needs OpenBLAS (Debian: libopenblas0-pthread) and a C compiler"}
    base = base or base_revision()
    if base is None:
        return {"skipped": "no earlier revision of inference_node/gemv_forward.c in this "
                           "clone's history; give one with --base REV"}
    repeats, steps = (1, 4) if smoke() else (3, 24) if quick else (5, 48)
    batches = [1, 2] if smoke() else [1, 2, 4, 8]
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        path, name = model_folder(tmp)
        from bench.engine import params, prompts
        from inference_node import mlx_compat

        tokenizer = mlx_compat.load_tokenizer(path)
        prompt = tokenizer.apply_chat_template(prompts(tokenizer, params(False))["short"],
                                               add_generation_prompt=True)
        libs = {}
        for side, rev in (("base", base), ("current", None)):
            (tmp / side).mkdir()
            libs[side] = build_side(cc, rev, tmp / side)
        env = blas.without_preload()
        runs: dict[str, list[dict[str, Any]]] = {side: [] for side in libs}
        for i in range(repeats):
            for side in (list(libs) if i % 2 == 0 else list(reversed(libs))):
                log(f"run {i + 1}/{repeats}: {side}")
                env["LD_PRELOAD"] = f"{libs[side]} {lib}"
                done = subprocess.run([sys.executable, "-c", SIDE, str(path), json.dumps(prompt),
                                       str(steps), json.dumps(batches)], cwd=REPO, env=env,
                                      capture_output=True, text=True, timeout=1800)
                if done.returncode != 0:
                    raise RuntimeError(f"the {side} side failed:\n{done.stderr[-2000:]}")
                runs[side].append(json.loads(done.stdout))
    per_batch: dict[str, Any] = {}
    for b in map(str, batches):
        ms = {side: summary([r[b]["ms_per_step"] for r in rs], 1) for side, rs in runs.items()}
        per_batch[b] = {
            "ms_per_step": ms,
            "speed_ratio_current_vs_base": round(ratio(ms["base"]["median"],
                                                       ms["current"]["median"]), 3),
            "same_tokens": all(r[b]["tokens"] == runs["base"][0][b]["tokens"]
                               for rs in runs.values() for r in rs),
        }
    return {"model": name, "base": base, "repeats": repeats, "steps": steps,
            "openblas_threads": os.environ.get("OPENBLAS_NUM_THREADS", "default (one a core)"),
            "per_batch": per_batch}


def main(argv: list[str]) -> None:
    base = argv[argv.index("--base") + 1] if "--base" in argv else None
    print(json.dumps(run("--quick" in argv, base), indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
