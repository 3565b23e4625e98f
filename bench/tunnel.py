"""Direct vs through the SSH tunnel: time to first token, decode tokens/s, recovery time.

    .venv/bin/python -m bench.tunnel [--quick]

Interleaved runs (direct, tunnel, direct, ...) after a warm-up, on SmolLM2 when it can be
imported (else a tiny chain model), a real sshd on loopback. Targets: tunnel/direct decode
ratio >= 0.95; tunnel back < 3 s after sshd restarts.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))


def _models(tmp: Path, tiny: bool) -> tuple[list[dict], str]:
    if not tiny:
        try:
            from inference_node.gguf import ensure_default_model

            cache = REPO / ".home" / "test-models"
            cache.mkdir(parents=True, exist_ok=True)
            return [{"name": "smollm2", "path": str(ensure_default_model(cache))}], "smollm2"
        except Exception as e:  # noqa: BLE001 - fall back to the tiny model, and say so
            print(f"bench.tunnel: SmolLM2 unavailable ({e}); using a tiny chain model",
                  file=sys.stderr)
    from tiny_models import build_chain_model

    path = build_chain_model(tmp / "loop", ["a", "b", "c", "d", "e", "f", "a"], context=8192)
    return [{"name": "loop", "path": str(path)}], "loop"


def _one(model, max_tokens: int) -> tuple[float, float]:
    t0 = time.monotonic()
    ttft = 0.0
    tokens = 0
    t_first = 0.0
    for ev in model.stream([{"role": "user", "content": "Write a short story about a cat."}],
                           max_tokens=max_tokens):
        if ev.WhichOneof("event") == "delta":
            if not ttft:
                t_first = time.monotonic()
                ttft = t_first - t0
            tokens += 1
        elif ev.WhichOneof("event") == "done":
            tokens = ev.done.usage.completion_tokens or tokens
    decode = (tokens - 1) / (time.monotonic() - t_first) if tokens > 1 else 0.0
    return ttft, decode


def _wait_for(tunnel, state: str, limit_s: float = 60.0) -> None:
    """Until the tunnel is in `state`; an error naming where it is instead, never a hang."""
    deadline = time.monotonic() + limit_s
    while (status := tunnel.status()).state != state:
        if status.state == "failed" or time.monotonic() > deadline:
            raise RuntimeError(f"waited for the tunnel to be {state}: {status.describe()}")
        time.sleep(0.01)


def run(quick: bool) -> dict:
    from conftest import running_server  # sets STUDIO_CODER_HOME for the model store
    from sshd import Sshd

    from agent_node.client import Client, GrpcModel, connect
    from agent_node.config import AgentConfig
    from bench.stats import smoke

    repeats, max_tokens = (1, 4) if smoke() else (5, 32) if quick else (8, 128)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        models, name = _models(tmp, tiny=smoke())
        with running_server(models) as (_, target), Sshd(tmp) as sshd:
            direct_cfg = AgentConfig()
            direct_cfg.inference.target = target
            tunnel_cfg = AgentConfig(tunnel=sshd.tunnel_section(
                int(target.rsplit(":", 1)[1]), probe_interval_s=2.0, probe_timeout_s=1.0,
                backoff_start_s=1.0, backoff_max_s=30.0))
            with Client(direct_cfg) as direct, connect(tunnel_cfg) as tunneled:
                dm, tm = GrpcModel(direct, [name]), GrpcModel(tunneled, [name])
                _one(dm, max_tokens)
                _one(tm, max_tokens)  # warm-up
                rows: dict[str, list[tuple[float, float]]] = {"direct": [], "tunnel": []}
                for _ in range(repeats):
                    rows["direct"].append(_one(dm, max_tokens))
                    rows["tunnel"].append(_one(tm, max_tokens))
                assert tunneled.tunnel is not None
                sshd.kill()
                _wait_for(tunneled.tunnel, "rebuilding")
                time.sleep(1.0)  # sshd stays down a second, as after a crash
                sshd.start()
                t_back = time.monotonic()
                _wait_for(tunneled.tunnel, "up")
                up_s = time.monotonic() - t_back
                _one(tm, 8)
                first_call_s = time.monotonic() - t_back

    def med(key: str, i: int) -> float:
        return statistics.median(r[i] for r in rows[key])

    result = {
        "model": name,
        "repeats": repeats,
        "max_tokens": max_tokens,
        "ttft_s": {"direct": med("direct", 0), "tunnel": med("tunnel", 0)},
        "decode_tps": {"direct": med("direct", 1), "tunnel": med("tunnel", 1)},
        "recovery_s": {"tunnel_up_after_sshd_restart": up_s,
                       "first_call_done_after_sshd_restart": first_call_s},
    }
    tps, ttft = result["decode_tps"], result["ttft_s"]
    result["decode_ratio"] = tps["tunnel"] / max(1e-9, tps["direct"])
    # What the tunnel adds, independent of the model's speed: per stream and per token.
    result["ttft_added_ms"] = 1000 * (ttft["tunnel"] - ttft["direct"])
    result["added_ms_per_token"] = 1000 / max(1e-9, tps["tunnel"]) - 1000 / max(1e-9, tps["direct"])
    result["targets"] = {"decode_ratio_ge_0.95": result["decode_ratio"] >= 0.95,
                         "recovery_lt_3s": first_call_s < 3.0}
    return result


if __name__ == "__main__":
    print(json.dumps(run("--quick" in sys.argv), indent=2))
