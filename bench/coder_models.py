"""The real coder models on this machine: our gRPC server vs mlx-lm in process, same folder.

    .venv/bin/python -m bench.coder_models [--quick]     # JSON on stdout, progress on stderr

For Qwen2.5-Coder-0.5B and 1.5B (installed with `inference-node install`, the download cached
per machine): time to first token, prefill tokens/s (prompt tokens / time to first token, on a
~1000-token prompt; 300 in quick mode), decode tokens/s ((tokens - 1) / (last - first token))
and resident memory (the peak RSS of the process holding the model: the server, or the child
running mlx-lm). Both sides run the weights as the engine serves them here: without Metal it
dequantizes them to float32 at load (engine.dequantize_on_cpu), and the in-process side does the
same with mlx_lm.utils.dequantize_model. Greedy, prompt cache off.

The two sides hold the model one after the other, never both at once (the 1.5B is 7.1 GB as
float32), so for each model the server runs its repeats, then mlx-lm its own; a busy patch can
weigh on one side more than the other, which the spread shows. BENCH_CODER_MODELS=a,b picks
the models (default both; on a machine with less than ~20 GB free run them one at a time:
the 1.5B server peaks at 8.4 GB). BENCH_SMOKE=1: a tiny scripted
model stands in for both, one repeat, a few tokens.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.servers import (
    PY,
    REPO,
    engine_toml,
    free_port,
    load_model,
    process,
    server_env,
    wait_grpc,
)
from bench.stats import ratio, smoke, summary
from inference_node import blas

CACHE = REPO / ".home" / "test-models"
MODELS = ("qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b")
FILLER = ("def handler_{i}(event, context):\n    # route {i}: validate the payload, then store "
          "it\n    payload = json.loads(event['body'])\n"
          "    return store(payload, table='t{t}')\n\n")
ASK = "Explain in two sentences what these handlers have in common."


def log(msg: str) -> None:
    print(f"bench.coder_models: {msg}", file=sys.stderr, flush=True)


def params(quick: bool) -> dict[str, int]:
    if smoke():
        return {"repeats": 1, "warmup": 0, "prompt_tokens": 40, "max_tokens": 4}
    if quick:
        return {"repeats": 1, "warmup": 1, "prompt_tokens": 300, "max_tokens": 16}
    return {"repeats": 3, "warmup": 1, "prompt_tokens": 1000, "max_tokens": 64}


def messages(tokenizer: Any, n: int) -> list[dict[str, str]]:
    """One user turn of about `n` tokens of code, in the model's own tokens."""
    text, i = "", 0
    while len(tokenizer.encode(text)) < n:
        text += FILLER.format(i=i, t=i % 7)
        i += 1
    return [{"role": "user", "content": f"{text}\n{ASK}"}]


def _sample(t0: float, t_first: float, t_last: float, tokens: int, prompt_tokens: int
            ) -> dict[str, float]:
    ttft = t_first - t0
    return {"ttft_s": ttft, "prefill_tps": prompt_tokens / ttft if ttft > 0 else 0.0,
            "decode_tps": (tokens - 1) / (t_last - t_first) if tokens > 1 else 0.0,
            "tokens": tokens, "prompt_tokens": prompt_tokens}


def _summarise(samples: list[dict[str, float]]) -> dict[str, Any]:
    keys = ("ttft_s", "prefill_tps", "decode_tps", "tokens", "prompt_tokens")
    return {k: summary([s[k] for s in samples]) for k in keys}


# ------------------------------------------------------------------ mlx-lm in process


def in_process_side(folder: str, p: dict[str, int]) -> dict[str, Any]:
    """Runs in a child process: load as the engine does, generate, report samples and RSS."""
    from mlx_lm import stream_generate
    from mlx_lm.sample_utils import make_sampler

    t_load = time.perf_counter()
    model, tokenizer = load_model(Path(folder))
    load_s = time.perf_counter() - t_load
    msgs = messages(tokenizer, p["prompt_tokens"])
    samples = []
    for i in range(p["warmup"] + p["repeats"]):
        t0 = time.perf_counter()
        prompt = tokenizer.apply_chat_template(msgs, add_generation_prompt=True)
        t_first = t_last = 0.0
        tokens = 0
        for _ in stream_generate(model, tokenizer, prompt, max_tokens=p["max_tokens"],
                                 sampler=make_sampler(0.0)):
            t_last = time.perf_counter()
            t_first = t_first or t_last
            tokens += 1
        if i >= p["warmup"]:
            samples.append(_sample(t0, t_first, t_last, tokens, len(prompt)))
    return {"samples": samples, "load_s": load_s,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_in_process(folder: Path, p: dict[str, int]) -> dict[str, Any]:
    code = ("import json, sys; from inference_node import blas; blas.drop_from_environ(); "
            "from bench.coder_models import in_process_side; "
            "print(json.dumps(in_process_side(sys.argv[1], json.loads(sys.argv[2]))))")
    done = subprocess.run([PY, "-c", code, str(folder), json.dumps(p)], cwd=REPO, env=server_env(),
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"mlx-lm in process failed: {done.stderr[-1500:]}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    return {**_summarise(out["samples"]), "load_s": out["load_s"],
            "peak_rss_mb": out["peak_rss_mb"]}


# ------------------------------------------------------------------ our gRPC server


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_grpc(folder: Path, p: dict[str, int], tmp: Path) -> dict[str, Any]:
    import grpc
    from mlx_lm.tokenizer_utils import load as load_tokenizer

    from inference_node.api import pb, rpc

    port = free_port()
    conf = tmp / "inference-node.toml"
    conf.write_text(f"{engine_toml(prompt_cache=False)}[memory]\nbudget_gb = 12.0\n"
                    f'floor_gb = 0.0\n\n[[models]]\nname = "m"\npath = "{folder}"\n')
    msgs = messages(load_tokenizer(folder), p["prompt_tokens"])
    request = pb.ChatRequest(model="m", max_tokens=p["max_tokens"],
                             messages=[pb.Message(role=m["role"], text=m["content"])
                                       for m in msgs])
    cmd = [PY, "-m", "inference_node.cli", "serve", "--config", str(conf), "--port", str(port)]
    samples, server_prefill = [], []
    with process(cmd, tmp / "grpc-server.log") as proc:
        target = f"127.0.0.1:{port}"
        wait_grpc(target, proc, tmp / "grpc-server.log")
        with grpc.insecure_channel(target) as ch:
            stub = rpc.InferenceStub(ch)
            t_load = time.perf_counter()
            stub.LoadModel(pb.LoadModelRequest(name="m"), timeout=1800)
            load_s = time.perf_counter() - t_load
            for i in range(p["warmup"] + p["repeats"]):
                t0 = time.perf_counter()
                t_first = t_last = 0.0
                tokens = prompt_tokens = 0
                for ev in stub.Chat(request, timeout=1800):
                    kind = ev.WhichOneof("event")
                    if kind == "admitted":
                        prompt_tokens = ev.admitted.prompt_tokens
                    elif kind == "delta":
                        t_last = time.perf_counter()
                        t_first = t_first or t_last
                    elif kind == "done":
                        tokens = ev.done.usage.completion_tokens
                        if i >= p["warmup"]:
                            server_prefill.append(ev.done.timings.prefill_tokens_per_second)
                if i >= p["warmup"]:
                    samples.append(_sample(t0, t_first, t_last, tokens, prompt_tokens))
        peak = _peak_rss_mb(proc.pid)
    return {**_summarise(samples), "load_s": load_s, "peak_rss_mb": peak,
            "server_reported_prefill_tps": summary(server_prefill)}


# ------------------------------------------------------------------ the benchmark


def model_folders(tmp: Path) -> dict[str, Path]:
    if smoke():
        sys.path.insert(0, str(REPO / "tests"))
        from tiny_models import build_chain_model

        path = build_chain_model(tmp / "tiny", ["a", "b", "c", "d", "e", "f", "a"], context=4096)
        return {"tiny-chain (smoke)": path}
    from inference_node.install import KNOWN_MODELS, install

    CACHE.mkdir(parents=True, exist_ok=True)
    names = os.environ.get("BENCH_CODER_MODELS", ",".join(MODELS)).split(",")
    return {name: install(KNOWN_MODELS[name], CACHE)[0] for name in names if name}


def run(quick: bool) -> dict[str, Any]:
    t_start = time.monotonic()
    p = params(quick)
    out: dict[str, Any] = {"params": p, "models": {}}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for name, folder in model_folders(tmp).items():
            log(f"{name}: our gRPC server ({p['repeats']} runs, ~{p['prompt_tokens']}-token "
                "prompt)")
            grpc_side = run_grpc(folder, p, tmp)
            log(f"{name}: mlx-lm in process")
            local = run_in_process(folder, p)
            out["models"][name] = {
                "grpc": grpc_side, "in_process": local,
                "ratio_grpc_over_in_process": {
                    k: ratio(grpc_side[k]["median"], local[k]["median"])
                    for k in ("prefill_tps", "decode_tps", "ttft_s")},
            }
    out["wall_s"] = round(time.monotonic() - t_start, 1)
    return out


if __name__ == "__main__":
    blas.reexec_with_openblas(sys.argv[1:], module=__spec__.name)  # timed as `make bench` times it
    print(json.dumps(run("--quick" in sys.argv), indent=1))
