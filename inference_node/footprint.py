"""What a model costs in memory, known before it is loaded.

    weights   summed from the safetensors headers (8-byte length + JSON); no tensor is read
    KV        per token from config.json, as mlx-lm's caches actually hold it:
              2 × layers × kv_heads × head_dim × dtype bytes, with the exceptions below
    overhead  a fixed allowance (memory.overhead_mb) for what neither covers

Exceptions to the per-token formula, each said in `KVCost.note`:

- sliding-window layers that mlx-lm gives a RotatingKVCache (`layer_types` with
  "sliding_attention", gemma3's `sliding_window_pattern`): bounded, so they add a fixed
  window term per request (window + one prefill chunk) instead of a per-token cost.
  Architectures where mlx-lm keeps a full cache despite a `sliding_window` key (mistral,
  gemma2, qwen2) are costed as full layers.
- MLA (DeepSeek V3, Kimi K2, GLM-4 MoE Lite): mlx-lm caches the latent,
  (kv_lora_rank + qk_rope_head_dim) per layer; DeepSeek V2 and MiniCPM3 it caches decompressed,
  num_heads × (qk_nope + qk_rope + v_head_dim) per layer, and they are costed so.
- linear-attention / state-space layers (qwen3-next, qwen3.5, mamba): nothing per token, a
  fixed recurrent + conv state per request, costed in float32 to be safe.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from inference_node.errors import BadRequest

# Bytes per element by safetensors dtype; a dtype not listed is sized from its data_offsets.
DTYPE_BYTES = {
    "F64": 8, "I64": 8, "U64": 8,
    "F32": 4, "I32": 4, "U32": 4,
    "F16": 2, "BF16": 2, "I16": 2, "U16": 2,
    "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "I8": 1, "U8": 1, "BOOL": 1,
}
TORCH_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}
STATE_DTYPE_BYTES = 4  # recurrent states are kept in float32 by mlx-lm's gated-delta kernels
DEFAULT_PREFILL_STEP = 512  # EngineConfig.prefill_step_size
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors spec's own cap

# Architectures whose mlx-lm cache is a full KVCache on every layer even with `sliding_window`.
FULL_CACHE_DESPITE_WINDOW = {"mistral", "gemma2", "qwen2", "qwen2_moe", "mixtral", "starcoder2"}
# MLA: mlx-lm caches the compressed latent for these ...
MLA_LATENT = {"deepseek_v3", "deepseek_v32", "kimi_k2", "joyai_llm_flash", "glm4_moe_lite"}
# ... but the decompressed per-head keys and values for these.
MLA_EXPANDED = {"deepseek_v2", "minicpm3"}


@dataclass(frozen=True)
class KVCost:
    per_token: int  # bytes per token of context, summed over the layers that grow
    fixed_bytes: int  # bytes per request that do not grow: sliding windows, recurrent state
    note: str  # how it was worked out, and any estimate made


@dataclass(frozen=True)
class Footprint:
    weights_bytes: int
    kv_per_token: int
    kv_fixed_bytes: int
    overhead_bytes: int
    note: str

    @property
    def resident_bytes(self) -> int:
        """What the model holds once loaded and idle: weights + overhead."""
        return self.weights_bytes + self.overhead_bytes


# ---------------------------------------------------------------- weights


def read_header(path: Path) -> dict:
    """The JSON header of one safetensors file (tensor name -> dtype, shape, offsets)."""
    with path.open("rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise BadRequest(f"{path} is not a safetensors file: shorter than its 8-byte header")
        (n,) = struct.unpack("<Q", raw)
        if n > MAX_HEADER_BYTES:
            raise BadRequest(f"{path} is not a safetensors file: header claims {n} bytes")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BadRequest(f"{path} has a corrupt safetensors header: {e}") from None
    header.pop("__metadata__", None)
    return dict(header)


def _tensor_bytes(info: dict) -> int:
    size = DTYPE_BYTES.get(info.get("dtype", ""))
    if size is None:  # a dtype we do not know (e.g. packed 4-bit): trust the offsets
        start, end = info["data_offsets"]
        return int(end - start)
    count = 1
    for dim in info["shape"]:
        count *= dim
    return count * size


def header_bytes(path: Path) -> int:
    """Bytes of tensor data in one safetensors file, from its JSON header alone."""
    return sum(_tensor_bytes(info) for info in read_header(path).values())


def dequantized_bytes(model_dir: Path, config: dict) -> int:
    """Bytes of the weights once quantized layers are expanded to their scales' float type.

    For the engine's dequantize-on-CPU option: known from the headers and the config's
    per-module bit widths before anything is loaded, like the quantized size.
    """
    quant = config.get("quantization") or {}
    total = 0
    for path in weight_files(Path(model_dir)):
        header = read_header(path)
        for name, info in header.items():
            base, _, suffix = name.rpartition(".")
            quantized = f"{base}.scales" in header
            if quantized and suffix in ("scales", "biases"):
                continue
            if quantized and suffix == "weight":
                override = quant.get(base)
                module: dict = override if isinstance(override, dict) else quant
                bits = int(module.get("bits", 4))
                count = 1
                for dim in info["shape"]:
                    count *= dim
                size = DTYPE_BYTES.get(header[f"{base}.scales"]["dtype"], 4)
                total += count * 32 // bits * size  # packed uint32s -> elements
                continue
            total += _tensor_bytes(info)
    return total


def weight_files(model_dir: Path) -> list[Path]:
    """The safetensors files mlx-lm would load: the index's shards, else model*.safetensors."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise BadRequest(f"{index} is not a safetensors index: {e}") from None
        files = [model_dir / f for f in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise BadRequest(f"{model_dir} is missing shards named in its index: "
                             f"{', '.join(missing)}; download the model again")
        return files
    files = sorted(model_dir.glob("model*.safetensors")) or sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise BadRequest(f"{model_dir} has no .safetensors weights; import or pull the model again")
    return files


def weights_bytes(model_dir: Path) -> int:
    """Bytes of weights in `model_dir`, summed from safetensors headers; no tensor is read."""
    return sum(header_bytes(f) for f in weight_files(Path(model_dir)))


# ---------------------------------------------------------------- KV cache


def text_config(config: dict) -> dict:
    """The language model's config: a VLM nests it in `text_config`, over top-level defaults."""
    nested = config.get("text_config")
    if isinstance(nested, dict):
        return {**config, **nested}
    return config


def _first(cfg: dict, *keys: str, default: int | None = None) -> int | None:
    for k in keys:
        v = cfg.get(k)
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    return default


def _dtype_bytes(cfg: dict, outer: dict) -> tuple[int, str]:
    for c in (cfg, outer):
        for key in ("torch_dtype", "dtype"):
            name = c.get(key)
            if isinstance(name, str) and name in TORCH_DTYPE_BYTES:
                return TORCH_DTYPE_BYTES[name], name
    return 2, "16-bit (no torch_dtype given)"


def _layer_kinds(cfg: dict, layers: int) -> tuple[list[str], str]:
    """Each layer as "full", "sliding" or "linear", as mlx-lm builds its cache."""
    model_type = str(cfg.get("model_type", ""))
    types = cfg.get("layer_types")
    if isinstance(types, list) and len(types) == layers:
        kinds = []
        for t in types:
            if t == "sliding_attention" and cfg.get("sliding_window"):
                kinds.append("sliding")
            elif t in ("linear_attention", "mamba", "ssm"):
                kinds.append("linear")
            else:
                kinds.append("full")
        return kinds, "layer_types"
    if model_type.startswith("gemma3") and cfg.get("sliding_window"):
        pattern = _first(cfg, "sliding_window_pattern", default=6) or 6
        kinds = ["full" if i % pattern == pattern - 1 else "sliding" for i in range(layers)]
        return kinds, f"gemma3 sliding_window_pattern {pattern}"
    interval = _first(cfg, "full_attention_interval")
    if model_type.startswith(("qwen3_next", "qwen3_5")) and interval:
        kinds = ["full" if (i + 1) % interval == 0 else "linear" for i in range(layers)]
        return kinds, f"full_attention_interval {interval}"
    if model_type in ("mamba", "mamba2", "falcon_mamba"):
        return ["linear"] * layers, "state-space model"
    if cfg.get("sliding_window") and model_type not in FULL_CACHE_DESPITE_WINDOW:
        return ["full"] * layers, "sliding_window ignored: no layer pattern known, costed as full"
    return ["full"] * layers, ""


def layer_kinds(config: dict) -> list[str]:
    """Each layer of the language model as "full", "sliding" or "linear", as `kv_cost` counts
    them (a pipeline split gives each rank its own run of these)."""
    cfg = text_config(config)
    layers = _first(cfg, "num_hidden_layers", "n_layer", "num_layers", "n_layers") or 0
    return _layer_kinds(cfg, layers)[0]


def _linear_state_bytes(cfg: dict) -> int:
    """One request's fixed recurrent + conv state for one linear-attention / SSM layer."""
    s = STATE_DTYPE_BYTES
    if "linear_num_value_heads" in cfg:  # gated delta net (qwen3-next, qwen3.5)
        nk, nv = cfg["linear_num_key_heads"], cfg["linear_num_value_heads"]
        dk, dv = cfg["linear_key_head_dim"], cfg["linear_value_head_dim"]
        conv_dim = 2 * nk * dk + nv * dv
        kernel = cfg.get("linear_conv_kernel_dim", 4)
        return (nv * dv * dk + (kernel - 1) * conv_dim) * s
    hidden = cfg.get("hidden_size", cfg.get("d_model", 0))
    inner = _first(cfg, "intermediate_size", "d_inner", default=2 * hidden) or 2 * hidden
    state = _first(cfg, "ssm_state_size", "state_size", "d_state", default=16) or 16
    kernel = _first(cfg, "conv_kernel", "d_conv", default=4) or 4
    groups = _first(cfg, "n_groups", default=0) or 0
    heads = _first(cfg, "num_heads")
    head_dim = _first(cfg, "head_dim")
    if heads and head_dim:  # mamba2
        ssm = heads * head_dim * state
        conv = (kernel - 1) * (inner + 2 * groups * state)
    else:  # mamba
        ssm = inner * state
        conv = (kernel - 1) * inner
    return (ssm + conv) * s


def kv_cost(config: dict, prefill_step: int = DEFAULT_PREFILL_STEP) -> KVCost:
    """Per-token and fixed KV bytes for one request, from a model's config.json.

    A sliding layer's RotatingKVCache holds the window plus, while prefilling, one chunk of
    `prefill_step` tokens (mlx-lm concatenates before trimming), so that is what it is costed at.
    """
    cfg = text_config(config)
    model_type = str(cfg.get("model_type", ""))
    layers = _first(cfg, "num_hidden_layers", "n_layer", "num_layers", "n_layers")
    if not layers:
        raise BadRequest(f"config.json of model_type {model_type!r} names no layer count "
                         "(num_hidden_layers); the KV cache cannot be sized")
    dbytes, dname = _dtype_bytes(cfg, config)
    notes = [f"{layers} layers, {dname}"]

    if model_type in MLA_LATENT:
        latent = cfg["kv_lora_rank"] + cfg["qk_rope_head_dim"]
        notes.append(f"MLA latent cache: kv_lora_rank + qk_rope_head_dim = {latent} per layer")
        if cfg.get("index_head_dim"):  # DeepSeek V3.2's indexer keeps keys (and zeroed values)
            latent += 2 * cfg["index_head_dim"]
            notes.append(f"+ indexer cache 2 × {cfg['index_head_dim']}")
        return KVCost(layers * latent * dbytes, 0, "; ".join(notes))
    if model_type in MLA_EXPANDED or cfg.get("kv_lora_rank"):
        heads = cfg["num_attention_heads"]
        per_head = cfg["qk_nope_head_dim"] + cfg["qk_rope_head_dim"] + cfg["v_head_dim"]
        notes.append(f"MLA decompressed by mlx-lm: {heads} heads × (qk_nope + qk_rope + v = "
                     f"{per_head}) per layer")
        return KVCost(layers * heads * per_head * dbytes, 0, "; ".join(notes))

    heads = _first(cfg, "num_attention_heads", "n_head", "num_heads")
    kv_heads = _first(cfg, "num_key_value_heads", "n_kv_heads", "num_kv_heads", default=heads)
    head_dim = _first(cfg, "head_dim")
    if head_dim is None and heads:
        hidden = _first(cfg, "hidden_size", "n_embd", "d_model", default=0) or 0
        head_dim = hidden // heads
    per_layer_token = 2 * (kv_heads or 0) * (head_dim or 0) * dbytes

    kinds, why = _layer_kinds(cfg, layers)
    if why:
        notes.append(why)
    full = kinds.count("full")
    sliding = kinds.count("sliding")
    linear = kinds.count("linear")
    if (full or sliding) and not per_layer_token:
        raise BadRequest(f"config.json of model_type {model_type!r} gives no attention heads "
                         "or head_dim; the KV cache cannot be sized")
    fixed = 0
    if sliding:
        window = int(cfg["sliding_window"])
        fixed += sliding * (window + prefill_step) * per_layer_token
        notes.append(f"{sliding} sliding layers bounded at {window} + {prefill_step} prefill "
                     f"tokens ({fixed / 2**20:.1f} MiB per request)")
    if linear:
        state = linear * _linear_state_bytes(cfg)
        fixed += state
        notes.append(f"{linear} linear-attention layers with fixed state "
                     f"({state / 2**20:.1f} MiB per request, float32)")
    notes.append(f"{full} full-attention layers × {per_layer_token} B/token")
    return KVCost(full * per_layer_token, fixed, "; ".join(notes))


def kv_bytes_per_token(config: dict) -> int:
    """KV bytes each token of context costs (the growing part of `kv_cost`)."""
    return kv_cost(config).per_token


def dequantizes_on_load(dequantize_on_cpu: bool) -> bool:
    """Whether the engine expands quantized coder models at load on this machine: no Metal
    device and `engine.dequantize_on_cpu` (the default). Vision models are never expanded."""
    if not dequantize_on_cpu:
        return False
    try:
        import mlx.core as mx
    except ImportError:
        return False
    return not mx.metal.is_available()


def estimate(model_dir: Path, overhead_bytes: int,
             prefill_step: int = DEFAULT_PREFILL_STEP, *, dequantize: bool = False) -> Footprint:
    """A model's footprint from its folder, before loading it (`dequantize`: as the engine
    holds it when it expands quantized layers on a machine without Metal)."""
    model_dir = Path(model_dir)
    cfg_file = model_dir / "config.json"
    try:
        config = json.loads(cfg_file.read_text())
    except FileNotFoundError:
        raise BadRequest(f"{model_dir} has no config.json: it is not an MLX model folder") from None
    except json.JSONDecodeError as e:
        raise BadRequest(f"{cfg_file} is not valid JSON: {e}") from None
    kv = kv_cost(config, prefill_step)
    if dequantize and config.get("quantization"):
        weights, note = dequantized_bytes(model_dir, config), kv.note + "; weights dequantized"
    else:
        weights, note = weights_bytes(model_dir), kv.note
    return Footprint(weights, kv.per_token, kv.fixed_bytes, overhead_bytes, note)
