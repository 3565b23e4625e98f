"""Tiny GGUF files for the import tests: a llama written the way llama.cpp's converter writes
it, ggml's block quantizations with their reference dequantization, a minimal GGUF v3 writer,
and the logits an imported folder should give."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from inference_node.gguf import GGUFError, import_gguf

# --- a tiny llama, written as GGUF the way llama.cpp's converter writes it -------------------

HIDDEN, HEADS, KV_HEADS, FFN, LAYERS = 64, 4, 2, 128, 2
HEAD_DIM = HIDDEN // HEADS
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
F32, F16, Q4_0, Q4_1, Q8_0, Q2_K = 0, 1, 2, 3, 8, 10
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_vocab() -> tuple[list[str], list[str], list[int]]:
    from tokenizers import pre_tokenizers

    byte_chars = sorted(pre_tokenizers.ByteLevel.alphabet())
    merges = ["Ġ t", "h e", "Ġt he"]
    tokens = SPECIALS + byte_chars + ["Ġt", "he", "Ġthe"]
    types = [3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS))
    return tokens, merges, types


def tiny_metadata(arch: str = "llama") -> dict[str, Any]:
    tokens, merges, types = tiny_vocab()
    return {
        "general.architecture": arch,
        "general.name": "tiny",
        f"{arch}.context_length": 256,
        f"{arch}.embedding_length": HIDDEN,
        f"{arch}.block_count": LAYERS,
        f"{arch}.feed_forward_length": FFN,
        f"{arch}.attention.head_count": HEADS,
        f"{arch}.attention.head_count_kv": KV_HEADS,
        f"{arch}.attention.layer_norm_rms_epsilon": 1e-5,
        f"{arch}.rope.freq_base": 10000.0,
        f"{arch}.rope.dimension_count": HEAD_DIM,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "smollm",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.padding_token_id": 2,
        "tokenizer.chat_template": TEMPLATE,
    }


def hf_weights(seed: int = 0) -> dict[str, np.ndarray]:
    """Random llama weights in Hugging Face layout (what the import should give back)."""
    rng = np.random.default_rng(seed)
    vocab = len(tiny_vocab()[0])
    w = {"model.embed_tokens.weight": rng.normal(0, 0.5, (vocab, HIDDEN)),
         "model.norm.weight": 1 + rng.normal(0, 0.1, HIDDEN)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = 1 + rng.normal(0, 0.1, HIDDEN)
        w[p + "post_attention_layernorm.weight"] = 1 + rng.normal(0, 0.1, HIDDEN)
        for name, shape in [("self_attn.q_proj", (HEADS * HEAD_DIM, HIDDEN)),
                            ("self_attn.k_proj", (KV_HEADS * HEAD_DIM, HIDDEN)),
                            ("self_attn.v_proj", (KV_HEADS * HEAD_DIM, HIDDEN)),
                            ("self_attn.o_proj", (HIDDEN, HEADS * HEAD_DIM)),
                            ("mlp.gate_proj", (FFN, HIDDEN)), ("mlp.up_proj", (FFN, HIDDEN)),
                            ("mlp.down_proj", (HIDDEN, FFN))]:
            w[p + name + ".weight"] = rng.normal(0, 0.2, shape)
    return {k: v.astype(np.float32) for k, v in w.items()}


GGUF_NAMES = {
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def llama_cpp_permute(w: np.ndarray, heads: int) -> np.ndarray:
    """What llama.cpp's converter does to Q/K rows (half-split rotary -> interleaved)."""
    rows = w.shape[0]
    return w.reshape(heads, 2, rows // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def to_gguf_layout(hf: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {"token_embd.weight": hf["model.embed_tokens.weight"],
           "output_norm.weight": hf["model.norm.weight"]}
    for key, value in hf.items():
        if not key.startswith("model.layers."):
            continue
        _, _, i, rest = key.split(".", 3)
        module = rest.rsplit(".", 1)[0]
        if module == "self_attn.q_proj":
            value = llama_cpp_permute(value, HEADS)
        elif module == "self_attn.k_proj":
            value = llama_cpp_permute(value, KV_HEADS)
        out[f"blk.{i}.{GGUF_NAMES[module]}.weight"] = value
    return out


# --- ggml block quantization (reference dequantization returned alongside) -------------------


def quantize_q8_0(w: np.ndarray) -> tuple[bytes, np.ndarray]:
    blocks = w.reshape(-1, 32)
    d = (np.abs(blocks).max(axis=1) / 127).astype(np.float16)
    inv = np.divide(1.0, d.astype(np.float32), out=np.zeros(len(d), np.float32), where=d != 0)
    q = np.round(blocks * inv[:, None]).astype(np.int8)
    raw = np.zeros(len(blocks), dtype=[("d", "<f2"), ("qs", "i1", 32)])
    raw["d"], raw["qs"] = d, q
    return raw.tobytes(), (d.astype(np.float32)[:, None] * q).reshape(w.shape)


def quantize_q4_0(w: np.ndarray) -> tuple[bytes, np.ndarray]:
    blocks = w.reshape(-1, 32)
    extreme = blocks[np.arange(len(blocks)), np.abs(blocks).argmax(axis=1)]
    d = (extreme / -8).astype(np.float16)
    inv = np.divide(1.0, d.astype(np.float32), out=np.zeros(len(d), np.float32), where=d != 0)
    q = np.clip((blocks * inv[:, None] + 8.5).astype(np.int8), 0, 15).astype(np.uint8)
    raw = np.zeros(len(blocks), dtype=[("d", "<f2"), ("qs", "u1", 16)])
    raw["d"], raw["qs"] = d, q[:, :16] | (q[:, 16:] << 4)
    return raw.tobytes(), (d.astype(np.float32)[:, None] * (q.astype(np.float32) - 8)).reshape(
        w.shape)


def quantize_q4_1(w: np.ndarray) -> tuple[bytes, np.ndarray]:
    blocks = w.reshape(-1, 32)
    lo, hi = blocks.min(axis=1), blocks.max(axis=1)
    d, m = ((hi - lo) / 15).astype(np.float16), lo.astype(np.float16)
    inv = np.divide(1.0, d.astype(np.float32), out=np.zeros(len(d), np.float32), where=d != 0)
    q = np.clip(((blocks - lo[:, None]) * inv[:, None] + 0.5).astype(np.int8), 0, 15)
    q = q.astype(np.uint8)
    raw = np.zeros(len(blocks), dtype=[("d", "<f2"), ("m", "<f2"), ("qs", "u1", 16)])
    raw["d"], raw["m"], raw["qs"] = d, m, q[:, :16] | (q[:, 16:] << 4)
    deq = d.astype(np.float32)[:, None] * q + m.astype(np.float32)[:, None]
    return raw.tobytes(), deq.reshape(w.shape)


# --- a minimal GGUF v3 writer ----------------------------------------------------------------


def _gguf_str(s: str) -> bytes:
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def _gguf_value(v: Any) -> bytes:
    if isinstance(v, str):
        return struct.pack("<I", 8) + _gguf_str(v)
    if isinstance(v, bool):
        return struct.pack("<I?", 7, v)
    if isinstance(v, int):
        return struct.pack("<II", 4, v)
    if isinstance(v, float):
        return struct.pack("<If", 6, v)
    if all(isinstance(x, str) for x in v):
        return struct.pack("<IIQ", 9, 8, len(v)) + b"".join(_gguf_str(x) for x in v)
    return struct.pack("<IIQ", 9, 5, len(v)) + np.asarray(v, "<i4").tobytes()


def write_gguf(path: Path, metadata: dict[str, Any],
               tensors: dict[str, tuple[tuple[int, ...], int, bytes]]) -> Path:
    """tensors: name -> (numpy-order shape, ggml type, raw data)."""
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(metadata))
    head += b"".join(_gguf_str(k) + _gguf_value(v) for k, v in metadata.items())
    data, offset = b"", 0
    for name, (shape, ggml_type, raw) in tensors.items():
        head += _gguf_str(name) + struct.pack("<I", len(shape))
        head += b"".join(struct.pack("<Q", d) for d in reversed(shape))
        head += struct.pack("<IQ", ggml_type, offset)
        padded = raw + b"\0" * (-len(raw) % 32)
        data += padded
        offset += len(padded)
    path.write_bytes(head + b"\0" * (-len(head) % 32) + data)
    return path


def write_quantized_llama(path: Path, quant: int, arch: str = "llama") -> dict[str, np.ndarray]:
    """A tiny llama with its 2-D weights in `quant`; returns the HF-layout dequantized weights."""
    hf = hf_weights()
    quantizer = {Q8_0: quantize_q8_0, Q4_0: quantize_q4_0, Q4_1: quantize_q4_1}.get(quant)
    tensors, expected = {}, dict(hf)
    for name, w in to_gguf_layout(hf).items():
        if w.ndim == 2 and quantizer is not None:
            raw, _ = quantizer(w)
            tensors[name] = (w.shape, quant, raw)
        elif w.ndim == 2:  # an unsupported block type: right size, contents irrelevant
            elems, size = GGML_QUANT_SIZES[GGMLQuantizationType(quant)]
            tensors[name] = (w.shape, quant, b"\0" * (w.size // elems * size))
        else:
            tensors[name] = (w.shape, F32, w.astype("<f4").tobytes())
    if quantizer is not None:  # reference: dequantize the HF layout with the same blocks
        for name, w in hf.items():
            if w.ndim == 2:
                expected[name] = quantizer(w)[1]
    write_gguf(path, tiny_metadata(arch), tensors)
    return expected


def write_float_llama(path: Path, dtype: str) -> dict[str, np.ndarray]:
    import mlx.core as mx

    hf = hf_weights()
    arrays = {k: mx.array(v).astype(mx.float16 if dtype == "f16" and v.ndim == 2 else mx.float32)
              for k, v in to_gguf_layout(hf).items()}
    meta: dict[str, Any] = {}
    for k, v in tiny_metadata().items():
        if isinstance(v, (str, list)) and (isinstance(v, str) or isinstance(v[0], str)):
            meta[k] = v
        elif isinstance(v, list):
            meta[k] = mx.array(v, dtype=mx.int32)
        else:
            meta[k] = mx.array(v, dtype=mx.float32 if isinstance(v, float) else mx.uint32)
    mx.save_gguf(str(path), arrays, meta)
    if dtype == "f16":
        hf = {k: v.astype(np.float16).astype(np.float32) if v.ndim == 2 else v
              for k, v in hf.items()}
    return hf


def dequantized(folder: Path) -> dict[str, np.ndarray]:
    """The imported folder's weights, dequantized per its config, as float32 numpy."""
    import mlx.core as mx

    config = json.loads((folder / "config.json").read_text())
    quant = config.get("quantization", {})
    weights = mx.load(str(folder / "model.safetensors"))
    out = {}
    for key, w in weights.items():
        module, _, suffix = key.rpartition(".")
        if suffix in ("scales", "biases"):
            continue
        if suffix == "weight" and f"{module}.scales" in weights:
            q = quant.get(module, quant)
            w = mx.dequantize(w, weights[f"{module}.scales"], weights[f"{module}.biases"],
                              group_size=q["group_size"], bits=q["bits"])
        out[key] = np.array(w.astype(mx.float32))
    return out


def reference_logits(hf: dict[str, np.ndarray], ids: list[int]) -> np.ndarray:
    """Logits of mlx-lm's own llama built straight from the HF-layout weights."""
    import mlx.core as mx
    from mlx_lm.models import llama

    args = llama.ModelArgs(model_type="llama", hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                           intermediate_size=FFN, num_attention_heads=HEADS,
                           num_key_value_heads=KV_HEADS, rms_norm_eps=1e-5,
                           vocab_size=hf["model.embed_tokens.weight"].shape[0])
    model = llama.Model(args)
    model.load_weights([(k, mx.array(v)) for k, v in hf.items()])
    return np.array(model(mx.array([ids])).astype(mx.float32))


def imported_logits(folder: Path, ids: list[int]) -> np.ndarray:
    import mlx.core as mx
    from mlx_lm import load

    model, _ = load(str(folder))
    return np.array(model(mx.array([ids])).astype(mx.float32))


IDS = [1, 70, 71, 72, 259, 260, 261, 5, 2]


def refused(src: Path, store: Path, match: str) -> GGUFError:
    with pytest.raises(GGUFError, match=match) as info:
        import_gguf(src, "refused", store)
    assert not store.exists() or list(store.iterdir()) == []
    return info.value
