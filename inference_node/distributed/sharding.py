"""How a model is split across ranks: what mlx-lm supports for its architecture, per rank.

- tensor: `model.shard(group)` splits every layer's attention heads and MLP across the ranks;
  each token costs two all-reduces per layer. mlx-lm has it for llama, qwen2, qwen3,
  qwen3_moe, deepseek_v3, glm4_moe and others.
- pipeline: `model.model.pipeline(group)` gives each rank a run of whole layers (rank 0 the
  last ones); each token crosses each stage boundary once. mlx-lm has it for qwen3_5,
  qwen3_next, deepseek_v3, glm4_moe and others.

`auto` takes tensor where the architecture has it and its heads divide among the ranks, else
pipeline. An architecture with neither is refused with its name and what would work.

A plan is worked out before anything loads: the model is built lazily from its config and
safetensors headers (mlx maps no tensor data until it is evaluated), split as rank r would
split it, and its parameters' sizes summed. So the weights per rank are exactly what each rank
will hold (replicated embeddings and norms included), and the KV per rank follows the split:
a tensor split divides the KV heads, a pipeline split gives each rank its own layers' caches.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
from mlx.utils import tree_flatten

from inference_node.errors import LoadFailed
from inference_node.footprint import MLA_LATENT, kv_cost, layer_kinds, text_config

log = logging.getLogger(__name__)

MODES = ("tensor", "pipeline")
TENSOR_EXAMPLES = "llama, qwen2, qwen3, qwen3_moe, deepseek_v3, glm4_moe"
PIPELINE_EXAMPLES = "qwen3_5, qwen3_next, deepseek_v3, glm4_moe"


class PlanGroup:
    """Stands in for an mlx.distributed group of `size` while working out rank `rank`'s share;
    sharding only asks a group its rank and size, and nothing is evaluated."""

    def __init__(self, rank: int, size: int) -> None:
        self._rank, self._size = rank, size

    def rank(self) -> int:
        return self._rank

    def size(self) -> int:
        return self._size


@dataclass(frozen=True)
class ShardPlan:
    name: str
    model_type: str
    mode: str  # tensor | pipeline | rank0 (a model served by rank 0 alone: vision)
    weights: tuple[int, ...]  # bytes each rank holds
    kv_per_token: tuple[int, ...]  # KV bytes per token of context, per rank
    kv_fixed: tuple[int, ...]  # per request and rank: sliding windows, recurrent state
    overhead: int  # memory.overhead_mb, on every rank that holds a part
    layers: tuple[tuple[int, int], ...]  # pipeline: the layers [start, end) each rank runs
    note: str = ""

    @property
    def ranks(self) -> int:
        return len(self.weights)

    def resident(self, rank: int) -> int:
        """What rank `rank` holds once loaded and idle: its weights + overhead."""
        return self.weights[rank] + (self.overhead if self.weights[rank] else 0)

    def kv_share(self, rank: int) -> float:
        """Rank `rank`'s part of every request's KV, from 0 to 1."""
        total = sum(self.kv_per_token) or 1
        return self.kv_per_token[rank] / total

    def at_context(self, rank: int, tokens: int) -> int:
        return (self.resident(rank) + self.kv_per_token[rank] * tokens
                + self.kv_fixed[rank])

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ShardPlan:
        return cls(d["name"], d["model_type"], d["mode"], tuple(d["weights"]),
                   tuple(d["kv_per_token"]), tuple(d["kv_fixed"]), int(d["overhead"]),
                   tuple((int(a), int(b)) for a, b in d["layers"]), d.get("note", ""))


def config_digest(model_dir: Path) -> str:
    """Which model a folder holds, to check every rank loads the same one."""
    return hashlib.sha1((Path(model_dir) / "config.json").read_bytes()).hexdigest()[:16]


def _nbytes(model: Any) -> int:
    leaves: Any = tree_flatten(model.parameters())
    return sum(int(v.nbytes) for _, v in leaves if isinstance(v, mx.array))


def lazy_model(model_dir: Path, dequantize: bool) -> tuple[Any, dict]:
    """The model built from its config with lazily mapped weights: nothing is read yet."""
    from inference_node.mlx_compat import dequantize_model, load_model

    try:
        model, config = load_model(Path(model_dir), lazy=True)
    except ValueError as e:  # an architecture mlx-lm does not know
        raise LoadFailed(f"{model_dir}: mlx-lm cannot build this model: {e}") from None
    if dequantize and config.get("quantization"):
        model = dequantize_model(model)
    return model, config


def capabilities(model: Any) -> set[str]:
    caps = set()
    if callable(getattr(model, "shard", None)):
        caps.add("tensor")
    inner = getattr(model, "model", None)
    if inner is not None and callable(getattr(inner, "pipeline", None)):
        caps.add("pipeline")
    return caps


def _tensor_problem(config: dict, ranks: int) -> str:
    """Why a tensor split over `ranks` would be wrong for this config, or ""."""
    cfg = text_config(config)
    heads = cfg.get("num_attention_heads")
    kv_heads = cfg.get("num_key_value_heads", heads)
    for what, n in (("attention heads", heads), ("KV heads", kv_heads)):
        if isinstance(n, int) and n % ranks:
            return f"its {n} {what} do not divide among {ranks} ranks"
    return ""


def _rank_advice(config: dict) -> str:
    cfg = text_config(config)
    heads = cfg.get("num_attention_heads")
    kv_heads = cfg.get("num_key_value_heads", heads)
    if isinstance(heads, int) and isinstance(kv_heads, int):
        common = math.gcd(heads, kv_heads)
        fits = [n for n in range(2, common + 1) if common % n == 0][:3]
        if fits:
            return (f"{' or '.join(map(str, fits))} ranks would divide them, or serve it from "
                    "one host")
    return "serve it from one host"


def choose_mode(name: str, model: Any, config: dict, ranks: int, wanted: str) -> str:
    """tensor or pipeline, as `wanted` (auto | tensor | pipeline) allows; refuses clearly."""
    model_type = str(text_config(config).get("model_type", "?"))
    caps = capabilities(model)
    if not caps:
        raise LoadFailed(
            f"{name} cannot be split across ranks: mlx-lm has neither tensor sharding "
            f"(Model.shard) nor pipeline sharding (model.pipeline) for model_type "
            f"{model_type!r}. Serve it from one host (without --ranks or --hostfile), or use "
            f"an architecture that has one: tensor {TENSOR_EXAMPLES}; pipeline "
            f"{PIPELINE_EXAMPLES}")
    problem = _tensor_problem(config, ranks) if "tensor" in caps else ""
    if wanted == "auto":
        if "tensor" in caps and not problem:
            return "tensor"
        if "pipeline" in caps:
            return "pipeline"
        raise LoadFailed(f"{name} ({model_type}) cannot be tensor-split over {ranks} ranks: "
                         f"{problem}, and mlx-lm has no pipeline split for it; "
                         f"{_rank_advice(config)}")
    if wanted not in caps:
        have = " or ".join(sorted(caps))
        raise LoadFailed(f"{name} ({model_type}): mlx-lm has no {wanted} sharding for this "
                         f"architecture, only {have}; set sharding = \"{have.split()[0]}\" "
                         "or \"auto\" in [distributed] of inference-node.toml")
    if wanted == "tensor" and problem:
        alt = "; sharding = \"pipeline\" would work" if "pipeline" in caps else ""
        raise LoadFailed(f"{name} ({model_type}) cannot be tensor-split over {ranks} ranks: "
                         f"{problem}{alt}; {_rank_advice(config)}")
    return wanted


def apply_split(model: Any, mode: str, group: Any) -> None:
    if mode == "tensor":
        model.shard(group)
    else:
        model.model.pipeline(group)


def _layer_range(model: Any) -> tuple[int, int]:
    inner = model.model
    layers = list(inner.layers)
    start = getattr(inner, "start_idx", None)
    end = getattr(inner, "end_idx", None)
    if start is None:
        start = next((i for i, layer in enumerate(layers) if layer is not None), 0)
    if end is None:
        end = len(layers)
    return int(start), int(end)


def plan_model(name: str, model_dir: Path, ranks: int, wanted: str = "auto", *,
               overhead: int = 0, dequantize: bool = False,
               prefill_step: int = 512) -> ShardPlan:
    """Each rank's weights and KV for `model_dir` split over `ranks`; loads no tensor data."""
    model, config = lazy_model(model_dir, dequantize)
    mode = choose_mode(name, model, config, ranks, wanted)
    model_type = str(text_config(config).get("model_type", "?"))
    kv = kv_cost(config, prefill_step)
    weights, kv_tok, kv_fix, layers = [], [], [], []
    kinds = layer_kinds(config)
    full_total = kinds.count("full") or 1
    fixed_layers_total = (len(kinds) - kinds.count("full")) or 1
    for r in range(ranks):
        if r:
            model, _ = lazy_model(model_dir, dequantize)
        apply_split(model, mode, PlanGroup(r, ranks))
        weights.append(_nbytes(model))
        if mode == "tensor":
            layers.append((0, len(kinds)))
            latent = model_type in MLA_LATENT  # the latent is not split by head
            kv_tok.append(kv.per_token if latent else kv.per_token // ranks)
            kv_fix.append(kv.fixed_bytes)  # state split by head or not: counted whole, safe
        else:
            start, end = _layer_range(model)
            layers.append((start, end))
            mine = kinds[start:end]
            kv_tok.append(kv.per_token * mine.count("full") // full_total)
            kv_fix.append(kv.fixed_bytes * (len(mine) - mine.count("full"))
                          // fixed_layers_total)
    note = f"{mode} split over {ranks} ranks"
    if mode == "pipeline":
        note += "; layers " + ", ".join(f"rank {r}: {s}-{e - 1}" for r, (s, e) in
                                        enumerate(layers))
    return ShardPlan(name, model_type, mode, tuple(weights), tuple(kv_tok), tuple(kv_fix),
                     overhead, tuple(layers), note)


def rank0_plan(name: str, weights: int, kv_per_token: int, kv_fixed: int, overhead: int,
               ranks: int) -> ShardPlan:
    """A model that rank 0 serves alone (vision: mlx-vlm has no sharding)."""
    zeros = (0,) * (ranks - 1)
    return ShardPlan(name, "", "rank0", (weights, *zeros), (kv_per_token, *zeros),
                     (kv_fixed, *zeros), overhead, ((0, 0),) * ranks,
                     "served by rank 0 alone: mlx-vlm has no sharding")


def load_shard(model_dir: Path, plan: ShardPlan, group: Any, dequantize: bool) -> Any:
    """This rank's part of the model, evaluated (read from disk) and ready to run."""
    model, _ = lazy_model(model_dir, dequantize)
    if group.size() != plan.ranks:
        raise LoadFailed(f"{plan.name} was planned for {plan.ranks} ranks, not {group.size()}")
    apply_split(model, plan.mode, group)
    if plan.mode == "pipeline" and _layer_range(model) != plan.layers[group.rank()]:
        raise LoadFailed(f"{plan.name}: rank {group.rank()} got layers {_layer_range(model)}, "
                         f"not the planned {plan.layers[group.rank()]}")
    mx.eval(model.parameters())
    return model
