"""Bridge benchmark: the OpenAI SDK through `agent-node bridge` vs straight at `mlx_lm.server`.

bridge:     SDK → agent-node bridge (HTTP/SSE) → gRPC → inference-node serve (engine thread)
mlx_lm:     SDK → mlx_lm.server (HTTP/SSE), the same weights (see Model below)
grpc:       agent_node.client straight to the node, no bridge: what the HTTP hop itself costs

Each side runs in its own process on a free loopback port, as it would in use; the SDK runs
here. Model: SmolLM2-135M-Instruct (the embedded default, imported from the GGUF); the node
dequantizes it to float32 at load on a machine without Metal, so mlx_lm.server is then given the
same float32 weights (bench.servers.mlx_server_folder). Each repeat
streams one greedy request to each side, alternating which goes first (interleaved, so a busy
machine weighs on both alike), after a warm-up request each. Every repeat uses a prompt of its
own (from its first words), the same on both sides, so neither side reuses a prompt cache.
Measured on the client: time to first content token, and decode tokens/s = (completion tokens
- 1) / (last token - first token). Reported: medians and bridge/mlx_lm ratios. Target: on par
or better (ttft ratio <= ~1.1, decode ratio >= ~0.9).

    python -m bench.bridge [--quick]     # prints a summary on stderr, JSON on stdout
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import openai

from agent_node.client import Client
from agent_node.config import AgentConfig
from bench.servers import dequantizes, engine_toml, mlx_server_folder, prepare_model
from bench.stats import smoke
from inference_node import blas
from studio_common.net import free_port

REPO = Path(__file__).resolve().parent.parent
STORE = REPO / ".home" / "test-models"
RESULTS = Path(__file__).resolve().parent / "results" / "bridge.json"
TOKEN = "bench-bridge"  # the bridge requires one; mlx_lm.server ignores it
# A system turn that differs from its first words on: mlx_lm.server's prompt cache would
# otherwise reuse the shared prefix (the template's default system prompt) and time less prefill.
SYSTEM = "Session {i}: you are a helpful assistant who writes vivid, plain prose."
PROMPT = "Write a short story, about {n} sentences, about a lighthouse keeper and a message."


def _wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}:\n"
                               f"{log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s; see {log}")


@contextmanager
def _process(args: list[str], log: Path, *, mlx: bool = False
             ) -> Iterator[subprocess.Popen[bytes]]:
    """A server in the background, stopped when the block ends; nothing waits for it here, so
    servers started one after another load their models at the same time."""
    # MLX processes get OpenBLAS preloaded (inference_node/blas.py), the bridge does not.
    env = blas.with_preload() if mlx else blas.without_preload()
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env,
                                start_new_session=True)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def _sides(model_dir: Path, tmp: Path) -> Iterator[dict[str, str]]:
    """Base URLs of the bridge (in front of inference-node serve) and of mlx_lm.server."""
    grpc_port, bridge_port, mlx_port = free_port(), free_port(), free_port()
    node_cfg = tmp / "inference-node.toml"
    node_cfg.write_text(
        f'{engine_toml()}[server]\nhost = "127.0.0.1"\nport = {grpc_port}\n\n'
        "[memory]\nbudget_gb = 8.0\nfloor_gb = 0.0\n\n"
        f'[[models]]\nname = "smollm2"\npath = "{model_dir}"\n')
    agent_cfg = tmp / "agent-node.toml"
    agent_cfg.write_text(f'[inference]\ntarget = "127.0.0.1:{grpc_port}"\n\n'
                         f'[bridge]\nport = {bridge_port}\ntoken = "{TOKEN}"\n')
    py = sys.executable
    node = [py, "-m", "inference_node.cli", "serve", "--config", str(node_cfg)]
    bridge = [py, "-m", "agent_node.cli", "bridge", "--config", str(agent_cfg)]
    mlx = [py, "-m", "mlx_lm", "server", "--model", str(mlx_server_folder(model_dir)),
           "--host", "127.0.0.1",
           "--port", str(mlx_port), "--log-level", "WARNING"]
    bridge_url = f"http://127.0.0.1:{bridge_port}"
    mlx_url = f"http://127.0.0.1:{mlx_port}"
    # The node has no HTTP; the bridge's /health answers 200 only once the node serves.
    with _process(node, tmp / "node.log", mlx=True), \
            _process(bridge, tmp / "bridge.log") as bridge_proc, \
            _process(mlx, tmp / "mlx_lm.log", mlx=True) as mlx_proc:
        _wait_http(f"{bridge_url}/health", bridge_proc, tmp / "bridge.log", 180)
        _wait_http(f"{mlx_url}/health", mlx_proc, tmp / "mlx_lm.log", 180)
        yield {"bridge": f"{bridge_url}/v1", "mlx_lm": f"{mlx_url}/v1",
               "grpc": f"127.0.0.1:{grpc_port}"}


def _messages(i: int | str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM.format(i=i)},
            {"role": "user", "content": PROMPT.format(n=5)}]


def _timing(t0: float, first: float, last: float, tokens: int) -> dict[str, float]:
    decode_s = last - first
    return {"ttft_s": first - t0, "tokens": tokens,
            "decode_tps": (tokens - 1) / decode_s if decode_s > 0 and tokens > 1 else 0.0}


def _grpc_once(client: Client, i: int | str, max_tokens: int) -> dict[str, float]:
    t0 = time.perf_counter()
    first = last = 0.0
    tokens = 0
    for ev in client.model().stream(_messages(i), max_tokens=max_tokens, temperature=0.0):
        kind = ev.WhichOneof("event")
        if kind == "delta" and ev.delta.text:
            now = time.perf_counter()
            first = first or now
            last = now
        elif kind == "done":
            tokens = ev.done.usage.completion_tokens
    return _timing(t0, first, last, tokens)


def _stream_once(sdk: openai.OpenAI, model: str, i: int | str, max_tokens: int
                 ) -> dict[str, float]:
    messages = _messages(i)
    t0 = time.perf_counter()
    first = last = 0.0
    chunks = 0
    usage = None
    stream = sdk.chat.completions.create(
        model=model, messages=messages, stream=True,  # type: ignore[call-overload]
        max_tokens=max_tokens, temperature=0.0, stream_options={"include_usage": True})
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        if chunk.choices and chunk.choices[0].delta.content:
            now = time.perf_counter()
            first = first or now
            last = now
            chunks += 1
    return _timing(t0, first, last, usage.completion_tokens if usage is not None else chunks)


def _median(rows: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def run(quick: bool) -> dict[str, Any]:
    from inference_node.gguf import ensure_default_model

    repeats, max_tokens, warmup_tokens = (1, 4, 2) if smoke() else (
        5 if quick else 10, 64 if quick else 256, 16)
    STORE.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[dict[str, float]]] = {"bridge": [], "mlx_lm": [], "grpc": []}
    with tempfile.TemporaryDirectory(prefix="bench-bridge-") as tmp:
        # the smoke run: a tiny scripted model, which loads in no time on all three sides
        model_dir = prepare_model(Path(tmp))[0] if smoke() else ensure_default_model(STORE)
        _measure(model_dir, Path(tmp), rows, repeats, max_tokens, warmup_tokens)
    med = {side: {"ttft_s": _median(r, "ttft_s"), "decode_tps": _median(r, "decode_tps"),
                  "tokens": _median(r, "tokens")} for side, r in rows.items()}
    return {
        "machine": {"cpus": os.cpu_count(), "platform": sys.platform},
        "model": "tiny-chain (smoke)" if smoke() else
                 "SmolLM2-135M-Instruct (GGUF import)" + (
                     ", dequantized to float32 on both sides" if dequantizes() else ""),
        "repeats": repeats, "max_tokens": max_tokens, "quick": quick,
        "median": med,
        "ratio_bridge_over_mlx_lm": {
            "ttft": med["bridge"]["ttft_s"] / med["mlx_lm"]["ttft_s"],
            "decode_tps": med["bridge"]["decode_tps"] / med["mlx_lm"]["decode_tps"],
        },
        "bridge_hop_ttft_s": med["bridge"]["ttft_s"] - med["grpc"]["ttft_s"],
        "runs": rows,
    }


def _measure(model_dir: Path, tmp: Path, rows: dict[str, list[dict[str, float]]],
             repeats: int, max_tokens: int, warmup_tokens: int) -> None:
    with _sides(model_dir, tmp) as urls:
        cfg = AgentConfig()
        cfg.inference.target = urls.pop("grpc")
        cfg.inference.coder = ["smollm2"]
        sdks = {side: openai.OpenAI(base_url=url, api_key=TOKEN, max_retries=0, timeout=300)
                for side, url in urls.items()}
        models = {"bridge": "smollm2", "mlx_lm": str(mlx_server_folder(model_dir))}
        with Client(cfg) as client:

            def once(side: str, i: int | str, n: int) -> dict[str, float]:
                if side == "grpc":
                    return _grpc_once(client, i, n)
                return _stream_once(sdks[side], models[side], i, n)

            for side in rows:  # warm-up: load the model, compile, open connections
                once(side, "warm-up", warmup_tokens)
            for i in range(repeats):
                order = list(rows) if i % 2 == 0 else list(reversed(rows))
                for side in order:
                    rows[side].append(once(side, i, max_tokens))
        for sdk in sdks.values():
            sdk.close()


def _summary(res: dict[str, Any]) -> str:
    m, r = res["median"], res["ratio_bridge_over_mlx_lm"]
    lines = [f"bridge benchmark, {res['repeats']} interleaved repeats, "
             f"max_tokens {res['max_tokens']}:"]
    for side in ("bridge", "mlx_lm", "grpc"):
        lines.append(f"  {side:<7} ttft {m[side]['ttft_s'] * 1000:7.1f} ms   decode "
                     f"{m[side]['decode_tps']:7.1f} tok/s   ({m[side]['tokens']:.0f} tokens)")
    lines.append(f"  ratio   ttft {r['ttft']:.2f}x   decode {r['decode_tps']:.2f}x "
                 "(bridge / mlx_lm; ttft lower is better, decode higher is better)")
    lines.append(f"  the HTTP hop adds {res['bridge_hop_ttft_s'] * 1000:.1f} ms to ttft "
                 "(bridge - grpc)")
    return "\n".join(lines)


if __name__ == "__main__":
    res = run("--quick" in sys.argv)
    print(_summary(res), file=sys.stderr)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))
