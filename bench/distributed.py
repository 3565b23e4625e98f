"""One model on 1 rank against 2 ranks (`serve --ranks 2`, ring backend on loopback), and what
the ranks' communication costs per token, measured here and predicted for Thunderbolt 5.

    .venv/bin/python -m bench.distributed [--quick]

Three parts, in one run:

1. Serving: the same model, the same prompts, interleaved (1 rank, 2 ranks, 2 ranks, 1 rank,
   ...) after a warm-up: prefill tokens/s and decode tokens/s from each request's own timings.
2. Collectives: a 2-rank mlx.launch job times `all_sum` on the ring over loopback for message
   sizes from one token id to megabytes, and fits latency + size / bandwidth.
3. Per token: a tensor split costs 2 all-reduces of one hidden vector per layer, plus the
   sampled token taken from rank 0 and the step's control frame. The probe times exactly that
   chain for the served model (the communication each token pays here); at Thunderbolt 5's
   stated 80 Gb/s the same bytes give the bandwidth part of the cost there. The latency part is
   the number of collectives times the link's per-collective latency, which this machine cannot
   measure for JACCL's RDMA: it is given per microsecond of latency.
4. Idle CPU: the cores each process of the idle 2-rank node uses (launcher, rank 0, rank 1),
   and the same 2 sleeping ranks under mlx.launch as shipped and under our launcher.py.

The full run serves Qwen2.5-Coder-0.5B when it is installed (qwen2, 24 layers, hidden 896), else
a random-weight llama of its shape; --quick a smaller random llama; BENCH_SMOKE a tiny one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from inference_node.distributed.supervisor import mlx_launch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

TB5_GBIT_S = 80.0  # Thunderbolt 5's stated bandwidth each way (120 Gb/s with Bandwidth Boost)
FRAME_BYTES = 1024  # inference_node.distributed.control.FRAME
PROBE_SIZES = [4, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304]
# For the prediction beside the measured model: a 32B-class coder (Qwen2.5-Coder-32B's shape).
LARGE = {"name": "Qwen2.5-Coder-32B shape", "layers": 64, "hidden": 5120}


def _model(tmp: Path, size: str) -> tuple[Path, str]:
    """smoke: a tiny llama; quick: a small one; full: Qwen2.5-Coder-0.5B if installed, else a
    random llama of its shape (24 layers, hidden 896: 1.4 GB as float32)."""
    from tiny_models import write_random_chat_model

    if size == "full":
        from studio_common.paths import studio_home

        for base in (studio_home() / "models",
                     Path("~/.local/share/studio-coder/models").expanduser()):
            qwen = base / "qwen2.5-coder-0.5b"
            if (qwen / "config.json").is_file():
                return qwen, "qwen2.5-coder-0.5b"
        shape = {"hidden_size": 896, "num_attention_heads": 14, "num_key_value_heads": 2,
                 "num_hidden_layers": 24, "intermediate_size": 4864}
        return (write_random_chat_model(tmp / "mid", "llama", seed=3, **shape),
                "random llama, Qwen2.5-0.5B's shape (24 layers, hidden 896)")
    if size == "quick":
        shape = {"hidden_size": 512, "num_attention_heads": 8, "num_key_value_heads": 4,
                 "num_hidden_layers": 12, "intermediate_size": 1536}
        return (write_random_chat_model(tmp / "small", "llama", seed=3, **shape),
                "random llama (12 layers, hidden 512)")
    return (write_random_chat_model(tmp / "tiny", "llama", seed=3),
            "random llama (4 layers, hidden 256)")


def _request(stub: Any, prompt: str, max_tokens: int) -> dict[str, float]:
    from inference_node.api import pb

    request = pb.ChatRequest(model="m", messages=[pb.Message(role="user", text=prompt)],
                             max_tokens=max_tokens)
    done = None
    for ev in stub.Chat(request, timeout=1800):
        if ev.WhichOneof("event") == "done":
            done = ev.done
    assert done is not None
    t = done.timings
    return {"prefill_tps": t.prefill_tokens_per_second, "decode_tps": t.decode_tokens_per_second,
            "ttft_s": t.time_to_first_token_seconds, "prompt_tokens": done.usage.prompt_tokens,
            "completion_tokens": done.usage.completion_tokens}


# ---------------------------------------------------------------- collectives on the ring


def probe(out: str, iterations: int, layers: int, hidden: int) -> None:
    """Run under mlx.launch: rank 0 writes each size's median all_sum time to `out`, and the
    median time of one token's worth of collectives for a tensor split of (layers, hidden)."""
    import statistics

    import mlx.core as mx

    group = mx.distributed.init(strict=True, backend="ring")

    def timed(fn: Any) -> float:
        fn()  # warm-up
        times = []
        for _ in range(iterations):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    rows = {}
    for size in PROBE_SIZES:
        x = mx.ones((size // 4,), dtype=mx.float32)
        rows[size] = timed(lambda x=x: mx.eval(mx.distributed.all_sum(x, stream=mx.cpu)))

    def token() -> None:  # each all-reduce waits for the one before, as the layers do
        h = mx.ones((1, hidden), dtype=mx.float32)
        for _ in range(2 * layers):
            h = mx.distributed.all_sum(h, stream=mx.cpu) * 0.5
        mx.eval(h)
        mx.eval(mx.distributed.all_sum(mx.zeros((1,), dtype=mx.int32), stream=mx.cpu))
        mx.eval(mx.distributed.all_sum(mx.zeros((FRAME_BYTES,), dtype=mx.uint8), stream=mx.cpu))

    if group.rank() == 0:
        Path(out).write_text(json.dumps({"sizes": rows, "token_s": timed(token)}))
    else:
        timed(token)


def measure_ring(iterations: int, layers: int, hidden: int) -> dict[str, Any]:
    from distributed_nodes import free_port_block

    from inference_node import blas

    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "probe.json"
        subprocess.run([*LAUNCHERS["launcher.py"], "--backend", "ring", "-n", "2",
                        "--starting-port", str(free_port_block(2)), "--python", sys.executable,
                        "--", "-m", "bench.distributed", "probe", str(out), str(iterations),
                        str(layers), str(hidden)],
                       cwd=REPO, check=True, timeout=600, stdin=subprocess.PIPE,
                       capture_output=True, env=blas.with_preload())
        probed = json.loads(out.read_text())
        rows = {int(k): v for k, v in probed["sizes"].items()}
    # t = latency + bytes / bandwidth: the latency from the small messages (the best of
    # their medians: on a busy machine a round trip also waits for both ranks to be scheduled),
    # the bandwidth from the slope over the large ones.
    small = [t for size, t in rows.items() if size <= 16384]
    large = sorted((size, t) for size, t in rows.items() if size >= 262144)
    xs, ys = [x for x, _ in large], [y for _, y in large]
    mx_, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx_) * (y - my) for x, y in large) / sum((x - mx_) ** 2 for x in xs)
    if slope > 0:
        bandwidth, how = 1 / slope, "the slope over the large messages"
    else:  # the noise swamped the sizes (a loaded machine, a smoke run's few iterations)
        bandwidth, how = large[-1][0] / large[-1][1], \
            "the largest message alone, latency included: a lower bound"
    return {"all_sum_s_by_bytes": {str(k): v for k, v in rows.items()},
            "latency_us": 1e6 * min(small),
            "bandwidth_gb_s": bandwidth / 1e9,
            "bandwidth_from": how,
            "token_collectives_ms": 1e3 * probed["token_s"],
            "iterations": iterations}


LAUNCHERS = {"mlx.launch as shipped": [str(Path(sys.executable).with_name("mlx.launch"))],
             "launcher.py": mlx_launch()}  # as serve runs it


def cores_used(pids: dict[str, int], seconds: float) -> dict[str, float]:
    """The cores each process kept busy over `seconds` (1.0: one core all the time)."""
    from distributed_nodes import cpu_seconds as cpu_s

    before = {name: cpu_s(pid) for name, pid in pids.items()}
    time.sleep(seconds)
    return {name: (cpu_s(pid) - before[name]) / seconds for name, pid in pids.items()}


def idle_launchers(seconds: float) -> dict[str, float]:
    """Each launcher's own cores over `seconds`, its 2 ranks asleep: the launcher alone."""
    from distributed_nodes import free_port_block

    out = {}
    for name, launcher in LAUNCHERS.items():
        proc = subprocess.Popen([*launcher, "--backend", "ring", "-n", "2", "--starting-port",
                                 str(free_port_block(2)), "--python", sys.executable, "--",
                                 "-c", f"import time; time.sleep({seconds + 60})"],
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            time.sleep(min(2.0, seconds))  # the launcher's threads and the ranks started
            out[name] = cores_used({name: proc.pid}, seconds)[name]
        finally:
            os.killpg(proc.pid, 9)
            proc.wait()
    return out


def per_token(layers: int, hidden: int, ring: dict[str, Any]) -> dict[str, Any]:
    """Communication for one decoded token of a tensor split over 2 ranks (batch of 1)."""
    collectives = 2 * layers + 2  # attention and MLP all-reduce per layer; token; control
    payload = 2 * layers * hidden * 4 + 4 + FRAME_BYTES  # float32 activations on the CPU
    tb5_bw = TB5_GBIT_S / 8 * 1e9
    return {"layers": layers, "hidden": hidden, "collectives": collectives, "bytes": payload,
            "tb5_bandwidth_ms": 1e3 * payload / tb5_bw,
            # Each microsecond of per-collective latency on the link adds this much per token.
            "ms_per_us_of_latency": collectives / 1e3,
            "loopback_model_ms": 1e3 * (collectives * ring["latency_us"] * 1e-6
                                        + payload / (ring["bandwidth_gb_s"] * 1e9))}


# ---------------------------------------------------------------- the run


def run(quick: bool) -> dict:
    import grpc
    from conftest import running_server
    from distributed_nodes import launcher_pid, rank_pids, serving_ranks

    from bench.stats import interleave, smoke, summary
    from inference_node.api import rpc

    tiny = smoke()
    size = "smoke" if tiny else "quick" if quick else "full"
    repeats, prompt_words, max_tokens = {"smoke": (1, 16, 4), "quick": (3, 128, 24),
                                         "full": (5, 512, 64)}[size]
    idle_s = {"smoke": 0.5, "quick": 3.0, "full": 5.0}[size]
    prompt = " ".join(f"w{i % 200}" for i in range(prompt_words))
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        path, label = _model(tmp, size)
        cfg = json.loads((path / "config.json").read_text())
        models = [{"name": "m", "path": str(path)}]
        engine = {"prompt_cache_mb": 0.0}  # every request prefills its whole prompt
        t0 = time.monotonic()
        with running_server(models, engine=engine) as (_, one_target), \
                serving_ranks(tmp / "two", models, engine=engine) as two:
            start_s = time.monotonic() - t0
            with grpc.insecure_channel(one_target) as c1, grpc.insecure_channel(two.target) as c2:
                s1, s2 = rpc.InferenceStub(c1), rpc.InferenceStub(c2)
                runs = interleave({"1 rank": lambda: _request(s1, prompt, max_tokens),
                                   "2 ranks": lambda: _request(s2, prompt, max_tokens)},
                                  n=repeats, warmup=1)
            ranks = {f"rank {r}": pid for r, pid in rank_pids(two.port).items()}
            time.sleep(1.5)  # idle for a heartbeat (every 1 s), which parks rank 1
            idle_node = cores_used({"launcher": launcher_pid(two.port), **ranks}, idle_s)
    launchers = idle_launchers(idle_s)
    layers, hidden = int(cfg["num_hidden_layers"]), int(cfg["hidden_size"])
    ring = measure_ring(10 if tiny else 100, layers, hidden)
    served = {name: {k: summary([r[k] for r in rows]) for k in
                     ("prefill_tps", "decode_tps", "ttft_s", "completion_tokens")}
              for name, rows in runs.items()}
    one, two_ = served["1 rank"], served["2 ranks"]
    decode_ms = {k: 1e3 / v["decode_tps"]["median"] for k, v in served.items()
                 if v["decode_tps"]["median"]}
    token = per_token(layers, hidden, ring)
    return {
        "date": time.strftime("%Y-%m-%d"), "size": size,
        "model": label, "layers": layers, "hidden": hidden,
        "prompt_tokens": runs["1 rank"][0]["prompt_tokens"], "max_tokens": max_tokens,
        "repeats": repeats, "start_two_ranks_s": start_s,
        "served": served,
        "ratio_2_over_1": {
            "decode_tps": two_["decode_tps"]["median"] / one["decode_tps"]["median"],
            "prefill_tps": two_["prefill_tps"]["median"] / one["prefill_tps"]["median"]},
        "ms_per_token": decode_ms,
        "ms_per_token_added_by_2_ranks": decode_ms.get("2 ranks", 0) - decode_ms.get("1 rank", 0),
        "ring_loopback": ring,
        "per_token": {"measured_model": {**token,
                                         "measured_ms": ring["token_collectives_ms"]},
                      "large_model": {"name": LARGE["name"],
                                      **per_token(LARGE["layers"], LARGE["hidden"], ring)}},
        "tb5_gbit_s": TB5_GBIT_S,
        "idle_cores": {"seconds": idle_s, "node": idle_node, "launchers": launchers},
        "cores": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()],
        "runs": runs,
    }


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "probe":
        probe(sys.argv[2], *map(int, sys.argv[3:6]))
    else:
        print(json.dumps(run("--quick" in sys.argv), indent=1, default=str))
