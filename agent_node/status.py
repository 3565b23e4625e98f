"""`agent-node status [--json] [--config FILE]`: tunnel, inference health, models, memory.

Exit 0 when the inference node answers, 3 when it (or the tunnel to it) cannot be reached,
2 for a bad config file.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from agent_node.config import DEFAULT_CONFIG, AgentConfig, ConfigError, load_default_config
from agent_node.exceptions import InferenceError, InferenceUnavailable, TunnelFailed

STATES = {0: "unloaded", 1: "loading", 2: "loaded"}


def _gib(n: int) -> str:
    """Bytes in GiB (2**30), as the inference node counts them; MiB under a tenth of one."""
    if n < 2**30 / 10:
        return f"{n / 2**20:.1f} MiB"
    return f"{n / 2**30:.1f} GiB"


_config = load_default_config


def _what_to_check(cfg: AgentConfig) -> str:
    if cfg.tunnel.enabled:
        t = cfg.tunnel
        return (f"check that sshd runs on {t.host}:{t.port} and accepts {t.user} with "
                f"{t.identity_file}, that {t.known_hosts} holds its host key, and that "
                f"`inference-node serve` listens on {t.remote_host}:{t.remote_port} there "
                f"([tunnel] in {cfg.source})")
    return (f"check that `inference-node serve` is running and listening on "
            f"{cfg.inference.target} ([inference] target in {cfg.source})")


def gather(cfg: AgentConfig) -> tuple[dict[str, Any], int]:
    from agent_node.client import connect

    out: dict[str, Any] = {"config": cfg.source, "target": cfg.inference.target,
                           "tunnel": None, "health": None, "models": [], "memory": None}
    try:
        client = connect(cfg)
    except TunnelFailed as e:
        out["tunnel"] = {"state": "failed", "why": e.why}
        out["error"] = f"{e}"
        return out, 3
    with client:
        out["target"] = client.target
        timeout = cfg.inference.connect_timeout_s
        if client.tunnel is not None and client.tunnel.status().state != "up":
            st = client.tunnel.status()
            out["tunnel"] = st.to_dict()
            out["error"] = st.describe()
            return out, 3
        try:
            out["health"] = client.health(timeout)
            out["models"] = [
                {"name": m.name, "role": m.role, "state": STATES.get(m.state, str(m.state)),
                 "weights_bytes": m.weights_bytes, "overhead_bytes": m.overhead_bytes,
                 "resident_bytes": m.resident_bytes, "estimated_bytes": m.estimated_bytes,
                 "context": m.context_length, "pinned": m.pinned, "in_flight": m.in_flight}
                for m in client.list_models(timeout)
            ]
            mem = client.memory(timeout)
            out["memory"] = {
                "budget_bytes": mem.budget_bytes, "budget_source": mem.budget_source,
                "committed_bytes": mem.committed_bytes, "weights_bytes": mem.weights_bytes,
                "overhead_bytes": mem.overhead_bytes,
                "reserved_bytes": mem.reserved_bytes, "mlx_active_bytes": mem.mlx_active_bytes,
                "system_available_bytes": mem.system_available_bytes,
                "queue_depth": mem.queue_depth, "queue_limit": mem.queue_limit,
                "open_streams": mem.open_streams, "stream_limit": mem.stream_limit,
                "policy": mem.policy,
            }
            code = 0
        except InferenceUnavailable as e:
            out["error"] = str(e)
            code = 3
        except InferenceError as e:
            out["error"] = str(e)
            code = 1
        finally:
            if client.tunnel is not None:
                out["tunnel"] = client.tunnel.status().to_dict()
    return out, code


def render(out: dict[str, Any]) -> str:
    lines = [f"config   {out['config']}"]
    t = out.get("tunnel")
    lines.append(f"tunnel   {t.get('summary') or t['state'] + ': ' + t.get('why', '')}"
                 if t else f"tunnel   off (direct to {out['target']})")
    lines.append(f"health   {out['health'] or 'unreachable'}")
    for m in out["models"]:
        lines.append(f"model    {m['name']:<24} {m['role']:<7} {m['state']:<9} "
                     f"weights {_gib(m['weights_bytes'])} + overhead {_gib(m['overhead_bytes'])}"
                     + (" pinned" if m["pinned"] else ""))
    mem = out.get("memory")
    if mem:
        lines.append(f"memory   {_gib(mem['committed_bytes'])} of {_gib(mem['budget_bytes'])} "
                     f"committed ({mem['budget_source']}); weights {_gib(mem['weights_bytes'])}"
                     f" + overhead {_gib(mem['overhead_bytes'])}, reserved "
                     f"{_gib(mem['reserved_bytes'])}; system available "
                     f"{_gib(mem['system_available_bytes'])}; queue {mem['queue_depth']}/"
                     f"{mem['queue_limit']}; streams {mem['open_streams']}/"
                     f"{mem['stream_limit']}; policy {mem['policy']}")
    if out.get("error"):
        lines.append(f"error    {out['error']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agent-node status", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    parser.add_argument("--config", metavar="FILE",
                        help=f"agent-node.toml (default {DEFAULT_CONFIG} if present)")
    args = parser.parse_args(argv)
    try:
        cfg = _config(args.config)
    except ConfigError as e:
        print(f"agent-node status: {e}", file=sys.stderr)
        return 2
    out, code = gather(cfg)
    if code == 3:
        out["check"] = _what_to_check(cfg)
    if args.json:
        print(json.dumps(out))
    else:
        print(render(out))
    if code == 3:
        print(f"agent-node status: the inference node is unreachable; {out['check']}",
              file=sys.stderr)
    return code
