"""`inference-node plan` for one model across several hosts: a row per host, before loading.

Each configured model is split as the ranks would split it (sharding.plan_model: weights and
KV per rank from the headers); each host's total is its part of every model plus one request's
KV at each model's context, against that host's own budget. The budgets are
`[distributed] budgets_gb`, or else this machine's own budget assumed for every host (said so
in the report: the other hosts work out theirs when they start).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from inference_node.admission import default_budget
from inference_node.config import InferenceConfig
from inference_node.distributed.cluster import Cluster
from inference_node.distributed.sharding import ShardPlan, plan_model, rank0_plan
from inference_node.footprint import estimate
from inference_node.machine import gib
from inference_node.models import model_folder, read_model_config, served_context


@dataclass
class HostRow:
    rank: int
    label: str
    budget_bytes: int
    budget_source: str
    total_bytes: int = 0

    @property
    def fits(self) -> bool:
        return self.total_bytes <= self.budget_bytes


@dataclass
class PlannedSplit:
    name: str
    role: str
    context: int
    plan: ShardPlan

    def per_rank(self, rank: int) -> int:
        return self.plan.at_context(rank, self.context)


def host_budgets(cfg: InferenceConfig, cluster: Cluster) -> list[HostRow]:
    d = cfg.distributed
    cache = int(cfg.engine.prompt_cache_mb * 2**20)
    if d.budgets_gb and len(d.budgets_gb) != cluster.size:
        from studio_common.tomlconf import ConfigError

        raise ConfigError(f"{cfg.source}: distributed.budgets_gb has {len(d.budgets_gb)} "
                          f"entries for {cluster.size} hosts; give one per rank")
    rows = []
    for h in cluster.hosts:
        if d.budgets_gb:
            budget = int(d.budgets_gb[h.rank] * 2**30)
            source = f"distributed.budgets_gb[{h.rank}]"
        else:
            budget, source = default_budget(cfg.memory, cfg.source)
            if h.rank:
                source = f"assumed equal to this machine's ({source})"
        if cache:
            budget -= cache
            source += f" − prompt cache {cfg.engine.prompt_cache_mb:.0f} MB"
        rows.append(HostRow(h.rank, h.label, budget, source))
    return rows


def plan_split(cfg: InferenceConfig, cluster: Cluster) -> tuple[list[PlannedSplit], list[HostRow]]:
    import mlx.core as mx

    overhead = int(cfg.memory.overhead_mb * 2**20)
    dequantize = cfg.engine.dequantize_on_cpu and not mx.metal.is_available()
    out = []
    for e in cfg.models:
        model_dir = model_folder(e, cfg.source)
        context = served_context(e, read_model_config(model_dir))
        if e.role == "vision":
            fp = estimate(model_dir, overhead)
            plan = rank0_plan(e.name, fp.weights_bytes, fp.kv_per_token, fp.kv_fixed_bytes,
                              overhead, cluster.size)
        else:
            plan = plan_model(e.name, model_dir, cluster.size,
                              e.sharding or cfg.distributed.sharding,
                              overhead=overhead, dequantize=dequantize and e.role == "coder",
                              prefill_step=cfg.engine.prefill_step_size)
        out.append(PlannedSplit(e.name, e.role, context, plan))
    hosts = host_budgets(cfg, cluster)
    for h in hosts:
        h.total_bytes = sum(m.per_rank(h.rank) for m in out)
    return out, hosts


def report(models: list[PlannedSplit], hosts: list[HostRow], cluster: Cluster) -> str:
    width = max(14, *(len(h.label) for h in hosts))
    head = f"{'model':<24} {'split':<9} " + " ".join(f"{h.label:>{width}}" for h in hosts)
    lines = [f"{cluster.size} ranks ({cluster.backend}, {cluster.source})", head]
    for m in models:
        lines.append(f"{m.name:<24} {m.plan.mode:<9} " + " ".join(
            f"{gib(m.per_rank(h.rank)):>{width}}" for h in hosts))
        parts = [f"w {gib(m.plan.resident(h.rank))} kv "
                 f"{gib(m.per_rank(h.rank) - m.plan.resident(h.rank))}" for h in hosts]
        lines.append(f"{'':<34} " + " ".join(f"{x:>{width}}" for x in parts))
    lines.append(f"{'total':<34} " + " ".join(f"{gib(h.total_bytes):>{width}}" for h in hosts))
    lines.append(f"{'budget':<34} " + " ".join(f"{gib(h.budget_bytes):>{width}}" for h in hosts))
    lines.append("(per host: its part of the weights + overhead + one request's KV at the "
                 "model's context)")
    for h in hosts:
        over = gib(h.total_bytes - h.budget_bytes)
        verdict = "fits" if h.fits else f"does NOT fit: over by {over}"
        lines.append(f"{h.label}: {gib(h.total_bytes)} of {gib(h.budget_bytes)} — {verdict} "
                     f"(budget: {h.budget_source})")
    return "\n".join(lines)


def to_json(models: list[PlannedSplit], hosts: list[HostRow], cluster: Cluster) -> dict[str, Any]:
    return {
        "ranks": cluster.size, "backend": cluster.backend, "source": cluster.source,
        "fits": all(h.fits for h in hosts),
        "hosts": [{"rank": h.rank, "host": h.label, "budget_bytes": h.budget_bytes,
                   "budget_source": h.budget_source, "total_bytes": h.total_bytes,
                   "fits": h.fits} for h in hosts],
        "models": [{"name": m.name, "role": m.role, "context": m.context, "split": m.plan.mode,
                    "note": m.plan.note,
                    "per_rank": [{"rank": r, "weights_bytes": m.plan.weights[r],
                                  "resident_bytes": m.plan.resident(r),
                                  "kv_per_token": m.plan.kv_per_token[r],
                                  "kv_bytes": m.plan.kv_per_token[r] * m.context
                                  + m.plan.kv_fixed[r],
                                  "total_bytes": m.per_rank(r)}
                                 for r in range(cluster.size)]}
                   for m in models],
    }


def main(cfg: InferenceConfig, cluster: Cluster, as_json: bool) -> int:
    models, hosts = plan_split(cfg, cluster)
    if as_json:
        print(json.dumps(to_json(models, hosts, cluster)))
    else:
        print(report(models, hosts, cluster))
    return 0 if all(h.fits for h in hosts) else 1
