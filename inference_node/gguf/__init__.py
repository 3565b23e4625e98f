"""GGUF files -> MLX model folders (`inference-node import-gguf`).

    reader.py         the header (metadata, tensor table) and each tensor's raw blocks
    quant.py          what each ggml type becomes: MLX affine quantization, exactly, or floats
    architectures.py  llama and qwen2: tensor names, config.json, the llama Q/K permutation
    tokenizer.py      tokenizer.json and the chat template from the GGUF metadata
    importer.py       the import itself, the embedded default, the command line
"""

from inference_node.gguf.architectures import SUPPORTED_ARCHITECTURES
from inference_node.gguf.importer import (
    DEFAULT_MODEL_NAME,
    IMPORTER_VERSION,
    PROVENANCE_FILE,
    SMOLLM2_FILE,
    default_dtype,
    embedded_default_gguf,
    ensure_default_model,
    import_gguf,
    is_current,
    main,
    read_header,
)
from inference_node.gguf.reader import GGUFError, GGUFHeader, TensorInfo, read_gguf_header
from inference_node.gguf.tokenizer import build_tokenizer, tokenizer_files

__all__ = [
    "DEFAULT_MODEL_NAME", "IMPORTER_VERSION", "PROVENANCE_FILE", "SMOLLM2_FILE",
    "SUPPORTED_ARCHITECTURES", "GGUFError", "GGUFHeader", "TensorInfo", "build_tokenizer",
    "default_dtype", "embedded_default_gguf", "ensure_default_model", "import_gguf",
    "is_current", "main", "read_gguf_header", "read_header", "tokenizer_files",
]
