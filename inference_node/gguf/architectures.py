"""The GGUF architectures the importer knows: tensor names, config.json, and what differs.

    llama  llama.cpp's converter permutes the Q/K rows (half-split rotary -> interleaved), so
           they are un-permuted here; q/k/v biases only if the file has them.
    qwen2  no permutation (llama.cpp runs Qwen2 with NEOX-style rotary, as Hugging Face does);
           q/k/v always carry biases, o_proj none.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from inference_node.gguf.reader import GGUFError, GGUFHeader

SUPPORTED_ARCHITECTURES = ("llama", "qwen2")
HF_CLASSES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}

BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def check_architecture(path: Any, header: GGUFHeader) -> None:
    arch = header.architecture
    if arch not in SUPPORTED_ARCHITECTURES:
        raise GGUFError(
            f"{path}: architecture {arch or '(none)'!r} is not supported; "
            f"import-gguf handles {', '.join(SUPPORTED_ARCHITECTURES)}. "
            "For other models use an MLX model folder (inference-node pull)"
        )


def mlx_name(gguf_name: str, arch: str) -> tuple[str, str]:
    """'blk.3.attn_q.weight' -> ('model.layers.3.self_attn.q_proj', 'weight')."""
    base, _, suffix = gguf_name.rpartition(".")
    parts = base.split(".")
    if parts[0] == "blk" and len(parts) == 3 and parts[2] in BLOCK_NAMES:
        return f"model.layers.{parts[1]}.{BLOCK_NAMES[parts[2]]}", suffix
    if len(parts) == 1 and parts[0] in TOP_NAMES:
        return TOP_NAMES[parts[0]], suffix
    raise GGUFError(
        f"tensor {gguf_name!r} has no place in a {arch} model; import-gguf cannot map it")


def row_order(header: GGUFHeader, gguf_name: str, rows: int) -> Any:
    """The row order that undoes llama.cpp's Q/K permutation for this tensor, or None.

    Only llama's Q/K weights (and biases) are permuted by the converter; interleaved -> half-split.
    """
    import numpy as np

    base = gguf_name.rpartition(".")[0]
    if header.architecture != "llama" or not base.endswith(("attn_q", "attn_k")):
        return None
    meta = header.metadata
    n_heads = int(meta["llama.attention.head_count"])
    heads = n_heads if base.endswith("attn_q") else int(
        meta.get("llama.attention.head_count_kv", n_heads))
    head_dim = rows // heads
    return np.arange(rows).reshape(heads, head_dim // 2, 2).transpose(0, 2, 1).reshape(-1)


def model_config(header: GGUFHeader, shapes: dict[str, tuple[int, ...]],
                 quant: dict[str, dict[str, int]], dtype_name: str) -> dict[str, Any]:
    """config.json for mlx-lm; `shapes` maps GGUF tensor names to their numpy shapes."""
    meta = header.metadata
    arch = header.architecture

    def get(key: str, default: Any = None) -> Any:
        return meta.get(f"{arch}.{key}", default)

    hidden, n_heads = int(get("embedding_length")), int(get("attention.head_count"))
    head_dim = int(get("attention.key_length", hidden // n_heads))
    rope_dims = int(get("rope.dimension_count", head_dim))
    if rope_dims != head_dim:
        raise GGUFError(f"rotary dimension {rope_dims} differs from head size {head_dim}; "
                        f"partial rotary {arch} models are not supported")
    if arch == "qwen2" and head_dim != hidden // n_heads:
        raise GGUFError(f"head size {head_dim} is not hidden size / heads ({hidden // n_heads}), "
                        "which mlx-lm's qwen2 assumes")
    if "rope_freqs.weight" in shapes:
        raise GGUFError("this GGUF carries rope_freqs (llama 3.1-style rope scaling), which "
                        "import-gguf cannot translate; use an MLX conversion of this model")
    config: dict[str, Any] = {
        "architectures": [HF_CLASSES[arch]],
        "model_type": arch,
        "hidden_size": hidden,
        "num_hidden_layers": int(get("block_count")),
        "intermediate_size": int(get("feed_forward_length")),
        "num_attention_heads": n_heads,
        "num_key_value_heads": int(get("attention.head_count_kv", n_heads)),
        "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": float(get("rope.freq_base", 10000.0)),
        "max_position_embeddings": int(get("context_length", 4096)),
        "vocab_size": int(shapes["token_embd.weight"][0]),
        "tie_word_embeddings": "output.weight" not in shapes,
        "torch_dtype": dtype_name,
    }
    if arch == "llama":
        config.update(head_dim=head_dim, attention_bias="blk.0.attn_q.bias" in shapes,
                      mlp_bias=False)
    elif "blk.0.attn_q.bias" not in shapes:
        raise GGUFError("this qwen2 GGUF has no attention biases (blk.0.attn_q.bias), which "
                        "every Qwen2 model has; the file is incomplete")
    scaling = get("rope.scaling.type")
    if scaling == "linear":
        config["rope_scaling"] = {"type": "linear", "factor": float(get("rope.scaling.factor"))}
    elif scaling not in (None, "none"):
        raise GGUFError(f"rope scaling {scaling!r} is not supported for {arch}")
    for key in ("bos", "eos", "padding"):
        if (v := meta.get(f"tokenizer.ggml.{key}_token_id")) is not None:
            config["pad_token_id" if key == "padding" else f"{key}_token_id"] = int(v)
    eot = meta.get("tokenizer.ggml.eot_token_id")
    if eot is not None and "eos_token_id" in config and int(eot) != config["eos_token_id"]:
        config["eos_token_id"] = [config["eos_token_id"], int(eot)]
    if quant:
        bits = Counter(q["bits"] for q in quant.values()).most_common(1)[0][0]
        group = Counter(q["group_size"] for q in quant.values()).most_common(1)[0][0]
        # Per-module entries only where a module differs (e.g. an 8-bit embedding in a Q4 file).
        default = {"group_size": group, "bits": bits}
        overrides = {m: q for m, q in sorted(quant.items()) if q != default}
        config["quantization"] = {"group_size": group, "bits": bits, **overrides}
    return config
