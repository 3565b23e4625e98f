"""`inference-node plan`: do the configured models fit in memory together, before any loads?

For each model in the catalog: weights (safetensors headers), one request's KV at its configured
context, and the fixed overhead; then the total against the budget. Exit 0 if they can all be
resident together, 1 if not, 2 for a bad config.

    $ inference-node plan --config /etc/studio-coder/inference-node.toml
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from inference_node.config import ModelEntry, load_config
from inference_node.errors import InferenceError
from inference_node.footprint import Footprint, dequantizes_on_load, estimate
from inference_node.machine import default_budget, gib
from inference_node.models import model_folder, read_model_config, served_context
from studio_common.tomlconf import ConfigError

MAX_COMBINATION_MODELS = 12  # 2**12 subsets is still instant


@dataclass(frozen=True)
class PlannedModel:
    name: str
    footprint: Footprint
    context: int
    pinned: bool = False
    role: str = "coder"

    @property
    def kv_bytes(self) -> int:
        """One request's KV at the configured context."""
        return self.footprint.kv_per_token * self.context + self.footprint.kv_fixed_bytes

    @property
    def total_bytes(self) -> int:
        return self.footprint.resident_bytes + self.kv_bytes


@dataclass
class PlanResult:
    budget_bytes: int
    total_bytes: int
    fits: bool  # everything resident together, each with one request at full context
    too_big_alone: list[str]  # models that exceed the budget even alone
    pinned_bytes: int
    combinations: list[tuple[tuple[str, ...], int, bool]] = field(default_factory=list)

    def largest_fitting(self) -> list[tuple[str, ...]]:
        """Fitting sets that no other fitting set contains."""
        ok = [set(c) for c, _, fits in self.combinations if fits and c]
        return [tuple(sorted(s)) for s in ok if not any(s < other for other in ok)]


def plan(entries: list[PlannedModel], budget: int) -> PlanResult:
    """Which of `entries` fit under `budget` together; pure, so synthetic footprints work."""
    total = sum(e.total_bytes for e in entries)
    result = PlanResult(
        budget_bytes=budget, total_bytes=total, fits=total <= budget,
        too_big_alone=[e.name for e in entries if e.total_bytes > budget],
        pinned_bytes=sum(e.total_bytes for e in entries if e.pinned),
    )
    if len(entries) <= MAX_COMBINATION_MODELS:
        for n in range(1, len(entries) + 1):
            for combo in itertools.combinations(entries, n):
                size = sum(e.total_bytes for e in combo)
                result.combinations.append((tuple(e.name for e in combo), size, size <= budget))
    return result


# ---------------------------------------------------------------- the command


def planned_models(entries: list[ModelEntry], overhead_bytes: int, source: str,
                   dequantize: bool = False) -> list[PlannedModel]:
    """The entries' footprints; `dequantize`: coder models as the engine holds them when it
    expands quantized weights at load (`dequantizes_on_load`)."""
    out = []
    for e in entries:
        model_dir = model_folder(e, source)
        fp = estimate(model_dir, overhead_bytes, dequantize=dequantize and e.role != "vision")
        context = served_context(e, read_model_config(model_dir))
        out.append(PlannedModel(e.name, fp, context, e.pinned, e.role))
    return out


def _report(models: list[PlannedModel], result: PlanResult, source: str) -> str:
    lines = [f"{'model':<24} {'role':<7} {'weights':>10} {'KV/token':>10} {'context':>8} "
             f"{'KV@ctx':>10} {'total':>10}"]
    for m in models:
        fp = m.footprint
        lines.append(
            f"{m.name + (' *' if m.pinned else ''):<24} {m.role:<7} "
            f"{gib(fp.weights_bytes):>10} {fp.kv_per_token / 1024:>7.1f} KiB {m.context:>8} "
            f"{gib(m.kv_bytes):>10} {gib(m.total_bytes):>10}")
    lines.append("(* pinned; total = weights + overhead + one request's KV at its context)")
    if any(m.footprint.note.endswith("weights dequantized") for m in models):
        lines.append("weights as the engine holds them here: quantized layers expanded at load "
                     "(no Metal; engine.dequantize_on_cpu)")
    lines.append(f"budget {gib(result.budget_bytes)}: {source}")
    verdict = "fit together" if result.fits else "do NOT fit together"
    lines.append(f"all {len(models)} models: {gib(result.total_bytes)} of "
                 f"{gib(result.budget_bytes)} — {verdict}")
    for name in result.too_big_alone:
        lines.append(f"  {name} does not fit even alone")
    if not result.fits:
        over = result.total_bytes - result.budget_bytes
        lines.append(f"  over by {gib(over)}; lower a model's context, drop one, "
                     "or raise budget_gb (GiB)")
        for combo in result.largest_fitting():
            lines.append(f"  these fit together: {', '.join(combo)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="inference-node plan",
                                     description="do the configured models fit together?")
    parser.add_argument("--config", type=Path, default=None, help="inference-node.toml")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    ranks = parser.add_mutually_exclusive_group()
    ranks.add_argument("--ranks", type=int, help="plan one model across N local ranks")
    ranks.add_argument("--hostfile", type=Path, help="plan across the hosts of an mlx hostfile")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config)
        if args.ranks is not None or args.hostfile is not None:
            cfg.distributed.ranks = args.ranks or 0
            cfg.distributed.hostfile = str(args.hostfile) if args.hostfile else ""
        if cfg.distributed.enabled:  # a row per host: inference_node/distributed/planning.py
            from inference_node.distributed import cluster, planning

            hosts = cluster.from_config(cfg.distributed)
            assert hosts is not None
            return planning.main(cfg, hosts, args.json)
        budget, source = default_budget(cfg.memory, cfg.source)
        models = planned_models(cfg.models, int(cfg.memory.overhead_mb * 1024 * 1024),
                                cfg.source, dequantizes_on_load(cfg.engine.dequantize_on_cpu))
    except (ConfigError, InferenceError, OSError, ValueError) as e:
        print(f"inference-node plan: {e}", file=sys.stderr)
        return 2
    if not models:
        print("no models configured: the embedded default (SmolLM2-135M) is served; "
              "it fits any budget", file=sys.stderr)
    result = plan(models, budget)
    if args.json:
        doc = {
            "budget_bytes": budget, "budget_source": source, "total_bytes": result.total_bytes,
            "fits": result.fits, "too_big_alone": result.too_big_alone,
            "models": [
                {"name": m.name, "role": m.role, "pinned": m.pinned, "context": m.context,
                 **asdict(m.footprint), "kv_bytes": m.kv_bytes, "total_bytes": m.total_bytes}
                for m in models
            ],
            "largest_fitting": [list(c) for c in result.largest_fitting()],
        }
        print(json.dumps(doc))
    else:
        print(_report(models, result, source))
    return 0 if result.fits else 1


if __name__ == "__main__":
    sys.exit(main())
