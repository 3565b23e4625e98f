"""`inference-node models [--config FILE] [--json]`: the catalog, with footprints, before loading.

It reads the config and the model folders only; it loads nothing. "loaded?" comes from a running
server when one answers on the configured port (a one-second health probe), else "-".
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from inference_node.config import load_config
from inference_node.footprint import dequantizes_on_load, estimate
from inference_node.machine import GiB
from inference_node.models import Catalog


def _loaded_names(host: str, port: int) -> set[str] | None:
    import grpc

    from inference_node.api import pb, rpc

    try:
        with grpc.insecure_channel(f"{host}:{port}") as ch:
            reply = rpc.InferenceStub(ch).ListModels(pb.ListModelsRequest(), timeout=1.0)
    except grpc.RpcError:
        return None
    return {m.name for m in reply.models if m.state == pb.ModelInfo.LOADED}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="inference-node models")
    p.add_argument("--config", type=Path)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    cfg = load_config(args.config)
    catalog = Catalog.from_config(cfg)
    loaded = _loaded_names(cfg.server.host, cfg.server.port)
    overhead = int(cfg.memory.overhead_mb * 1024 * 1024)
    dequantize = dequantizes_on_load(cfg.engine.dequantize_on_cpu)
    rows: list[dict[str, Any]] = []
    for m in catalog.models.values():
        fp = estimate(m.path, overhead, dequantize=dequantize and not m.is_vision)
        rows.append({
            "name": m.name, "role": m.role, "path": str(m.path), "pinned": m.pinned,
            "context": m.context, "weights_bytes": fp.weights_bytes,
            "kv_bytes_per_token": fp.kv_per_token,
            "footprint_bytes": fp.weights_bytes + fp.overhead_bytes,
            "kv_at_context_bytes": fp.kv_per_token * m.context,
            "loaded": None if loaded is None else m.name in loaded,
        })
    if args.json:
        print(json.dumps({"models": rows, "config": cfg.source}))
        return 0
    print(f"{'name':<28} {'role':<7} {'weights':>10} {'KV/token':>10} {'context':>8} "
          f"{'KV@ctx':>10} {'pinned':>6} {'loaded':>6}")
    for r in rows:
        state = "-" if r["loaded"] is None else ("yes" if r["loaded"] else "no")
        print(f"{r['name']:<28} {r['role']:<7} {r['weights_bytes'] / GiB:>6.2f} GiB "
              f"{r['kv_bytes_per_token'] / 1024:>6.1f} KiB {r['context']:>8} "
              f"{r['kv_at_context_bytes'] / GiB:>6.2f} GiB {str(r['pinned']).lower():>6} "
              f"{state:>6}")
    print(f"(catalog from {cfg.source})", file=sys.stderr)
    return 0
