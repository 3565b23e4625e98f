"""GGUF block types -> MLX: what stays quantized decodes bit for bit to what ggml-org's `gguf`
package decodes; what cannot (Q6_K) is stored as those very values; and a tiny qwen2 imports to
mlx-lm's own qwen2 built from the same weights (no llama Q/K permutation, q/k/v biases kept)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize as gguf_dequantize
from gguf_files import (
    F32,
    dequantized,
    refused,
    tiny_vocab,
    write_gguf,
)

from inference_node.gguf import import_gguf
from inference_node.gguf.quant import AFFINE_BITS, to_affine

# Where each block type keeps its fp16 super-scales (byte offsets): the rest may be any bits.
HALF_FIELDS = {T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
               T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208]}


# A super-scale giving weights of ~0.05 from a type's typical code (x sub-scale) size.
TYPICAL = {T.Q4_0: 8, T.Q4_1: 8, T.Q5_0: 8, T.Q5_1: 8, T.Q8_0: 64, T.Q4_K: 256, T.Q5_K: 512,
           T.Q6_K: 1024}


def random_blocks(qtype: T, rows: int, cols: int, seed: int = 0, sane: bool = False
                  ) -> np.ndarray:
    """Valid random blocks: random codes and sub-scales, finite fp16 super-scales.

    By default the scales span five decades and include zero, negative zero and a subnormal;
    `sane` gives weights of ~0.05 instead, for a model that should run.
    """
    rng = np.random.default_rng(seed)
    elems, size = GGML_QUANT_SIZES[qtype]
    n = rows * cols // elems
    raw = rng.integers(0, 256, (n, size), dtype=np.uint8)
    for at in HALF_FIELDS[qtype]:
        if sane:
            d = (rng.normal(0, 1, n) * 0.05 / TYPICAL[qtype]).astype(np.float16)
        else:
            d = (rng.normal(0, 1, n) * 10.0 ** rng.integers(-5, 0, n)).astype(np.float16)
            d[:3] = [0, -0.0, 6e-8]
        raw[:, at:at + 2] = d.view(np.uint8).reshape(n, 2)
    return raw.reshape(rows, -1)


def mlx_values(packed: np.ndarray, scales: np.ndarray, biases: np.ndarray, bits: int
               ) -> np.ndarray:
    import mlx.core as mx

    w = mx.dequantize(mx.array(packed), mx.array(scales), mx.array(biases), group_size=32,
                      bits=bits)
    return np.array(w)


@pytest.mark.parametrize("qtype", list(AFFINE_BITS), ids=lambda t: t.name)
def test_affine_block_types_decode_in_mlx_exactly_as_the_gguf_package_does(qtype):
    rows, cols = 48, 512
    raw = random_blocks(qtype, rows, cols)
    want = gguf_dequantize(raw, qtype).reshape(rows, cols)
    affine = to_affine(raw, qtype, cols)
    assert affine is not None
    got = mlx_values(*affine, AFFINE_BITS[qtype])
    assert got.dtype == np.float32 and np.array_equal(got, want)
    assert affine[1].dtype == np.float32  # scales: d·sc needs 17 bits, more than a half type


def test_a_tensor_whose_values_are_not_its_blocks_is_not_passed_off_as_quantized():
    raw = random_blocks(T.Q8_0, 4, 64)
    raw[0, 0:2] = np.array([np.nan], np.float16).view(np.uint8)  # a NaN scale
    assert to_affine(raw, T.Q8_0, 64) is None


# --- a tiny qwen2 with K-quants, written as llama.cpp writes it --------------------------------

HIDDEN, HEADS, KV_HEADS, FFN, LAYERS = 256, 4, 2, 512, 2
HEAD_DIM = HIDDEN // HEADS
QWEN_LAYOUT = {"attn_q": ("self_attn.q_proj", HEADS * HEAD_DIM, HIDDEN),
               "attn_k": ("self_attn.k_proj", KV_HEADS * HEAD_DIM, HIDDEN),
               "attn_v": ("self_attn.v_proj", KV_HEADS * HEAD_DIM, HIDDEN),
               "attn_output": ("self_attn.o_proj", HIDDEN, HEADS * HEAD_DIM),
               "ffn_gate": ("mlp.gate_proj", FFN, HIDDEN), "ffn_up": ("mlp.up_proj", FFN, HIDDEN),
               "ffn_down": ("mlp.down_proj", HIDDEN, FFN)}
# Like a Q4_K_M file: K-quants where rows allow, Q6_K for some, Q5_0/Q8_0 elsewhere.
QWEN_TYPES = {"attn_q": T.Q5_0, "attn_k": T.Q4_K, "attn_v": T.Q8_0, "attn_output": T.Q5_K,
              "ffn_gate": T.Q4_K, "ffn_up": T.Q4_1, "ffn_down": T.Q6_K}


def qwen2_metadata() -> dict:
    tokens, merges, types = tiny_vocab()
    return {
        "general.architecture": "qwen2", "general.name": "tiny-qwen2",
        "qwen2.context_length": 512, "qwen2.embedding_length": HIDDEN,
        "qwen2.block_count": LAYERS, "qwen2.feed_forward_length": FFN,
        "qwen2.attention.head_count": HEADS, "qwen2.attention.head_count_kv": KV_HEADS,
        "qwen2.attention.layer_norm_rms_epsilon": 1e-6, "qwen2.rope.freq_base": 1e6,
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "qwen2",
        "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.token_type": types, "tokenizer.ggml.bos_token_id": 0,
        "tokenizer.ggml.eos_token_id": 2, "tokenizer.ggml.padding_token_id": 0,
        "tokenizer.ggml.add_bos_token": False,
    }


def write_tiny_qwen2(path: Path, override: dict[str, T] | None = None) -> dict[str, np.ndarray]:
    """A tiny qwen2 GGUF; returns its weights in Hugging Face layout, as ggml decodes them."""
    rng = np.random.default_rng(1)
    vocab = len(tiny_vocab()[0])
    types = {**QWEN_TYPES, **(override or {})}
    tensors: dict[str, tuple] = {}
    hf: dict[str, np.ndarray] = {}

    def put_float(gname: str, hname: str, value: np.ndarray) -> None:
        value = value.astype(np.float32)
        tensors[gname] = (value.shape, F32, value.tobytes())
        hf[hname] = value

    def put_blocks(gname: str, hname: str, qtype: T, rows: int, cols: int, seed: int) -> None:
        raw = random_blocks(qtype, rows, cols, seed, sane=True)
        tensors[gname] = ((rows, cols), int(qtype), raw.tobytes())
        hf[hname] = gguf_dequantize(raw, qtype).reshape(rows, cols)

    put_blocks("token_embd.weight", "model.embed_tokens.weight", T.Q8_0, vocab, HIDDEN, 90)
    put_float("output_norm.weight", "model.norm.weight", 1 + rng.normal(0, 0.1, HIDDEN))
    put_blocks("output.weight", "lm_head.weight", T.Q6_K, vocab, HIDDEN, 91)
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        put_float(f"blk.{i}.attn_norm.weight", p + "input_layernorm.weight",
                  1 + rng.normal(0, 0.1, HIDDEN))
        put_float(f"blk.{i}.ffn_norm.weight", p + "post_attention_layernorm.weight",
                  1 + rng.normal(0, 0.1, HIDDEN))
        for j, (gname, (hname, rows, cols)) in enumerate(QWEN_LAYOUT.items()):
            put_blocks(f"blk.{i}.{gname}.weight", p + hname + ".weight", types[gname], rows, cols,
                       10 * i + j)
            if gname in ("attn_q", "attn_k", "attn_v"):
                put_float(f"blk.{i}.{gname}.bias", p + hname + ".bias", rng.normal(0, 0.5, rows))
    write_gguf(path, qwen2_metadata(), tensors)
    return hf


def qwen2_reference_logits(hf: dict[str, np.ndarray], ids: list[int]) -> np.ndarray:
    import mlx.core as mx
    from mlx_lm.models import qwen2

    args = qwen2.ModelArgs(model_type="qwen2", hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                           intermediate_size=FFN, num_attention_heads=HEADS,
                           num_key_value_heads=KV_HEADS, rms_norm_eps=1e-6,
                           vocab_size=hf["model.embed_tokens.weight"].shape[0],
                           tie_word_embeddings=False)
    model = qwen2.Model(args)
    model.load_weights([(k, mx.array(v)) for k, v in hf.items()])
    return np.array(model(mx.array([ids])))


def test_tiny_qwen2_imports_exactly_and_runs_as_mlx_lms_own_qwen2(tmp_path):
    import mlx.core as mx
    from mlx_lm import load

    src = tmp_path / "tiny-qwen2.gguf"
    hf = write_tiny_qwen2(src)
    folder = import_gguf(src, "tiny-qwen2", tmp_path / "store")
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "qwen2" and config["tie_word_embeddings"] is False
    q = config["quantization"]
    assert q["model.layers.0.self_attn.q_proj"] == {"group_size": 32, "bits": 5}
    assert q["model.layers.0.self_attn.v_proj"] == {"group_size": 32, "bits": 8}
    assert q.get("model.layers.0.mlp.gate_proj", q)["bits"] == 4
    provenance = json.loads((folder / "studio-coder.json").read_text())
    assert provenance["stored_as"]["Q6_K"] == "float32 (dequantized)"
    assert provenance["stored_as"]["Q4_K"] == "4-bit affine, group 32"
    got = dequantized(folder)
    assert set(got) == set(hf)
    for key, want in hf.items():  # every weight, bias and norm exactly as ggml decodes it
        assert np.array_equal(got[key], want), key
    # Admission's size of the expanded model, from headers alone, counts 5-bit layers right too.
    from inference_node.footprint import estimate

    assert estimate(folder, 0, dequantize=True).weights_bytes == 4 * sum(
        v.size for v in hf.values())
    ids = [0, 70, 71, 72, 259, 260, 261, 5, 2]
    model, _ = load(str(folder))
    mine = np.array(model(mx.array([ids])))
    np.testing.assert_allclose(mine, qwen2_reference_logits(hf, ids), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("qtype", [T.Q2_K, T.IQ4_NL], ids=lambda t: t.name)
def test_an_unsupported_block_type_in_a_qwen2_file_is_refused_leaving_nothing(tmp_path, qtype):
    src = tmp_path / "odd.gguf"
    meta = qwen2_metadata()
    elems, size = GGML_QUANT_SIZES[qtype]
    write_gguf(src, meta, {"token_embd.weight": ((4, 256), int(qtype),
                                                 b"\0" * (4 * 256 // elems * size))})
    err = refused(src, tmp_path / "store", rf"{qtype.name} \(1 tensors\) is not supported")
    assert "Q4_K" in str(err) and "Q6_K" in str(err)
