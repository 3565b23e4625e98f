"""Reading a GGUF file: its header (metadata and tensor table) and each tensor's raw blocks.

The header is parsed here rather than with `gguf.GGUFReader`, which builds a numpy field per
vocabulary string (12 s for SmolLM2's 49k tokens on a 2-core CPU, against 0.2 s here; Qwen's
151k tokens and merges would take most of a minute). The tensor data is memory-mapped as raw
ggml blocks; the `gguf` package (ggml-org's own) gives each type's block size and dequantizes.

    header = read_gguf_header(Path("model.gguf"))
    blocks = tensor_blocks(path, header, header.tensors[0])   # (rows, bytes per row) uint8
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

GGUF_MAGIC = b"GGUF"


class GGUFError(ValueError):
    """A file this importer cannot turn into an MLX model; the message says why and what works."""


def type_name(ggml_type: int) -> str:
    try:
        return GGMLQuantizationType(ggml_type).name
    except ValueError:
        return f"ggml type {ggml_type}"


@dataclass
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # numpy order (outermost first)
    ggml_type: int
    offset: int  # from the start of the data section

    @property
    def type_name(self) -> str:
        return type_name(self.ggml_type)

    @property
    def elements(self) -> int:
        count = 1
        for d in self.shape:
            count *= d
        return count

    def nbytes(self) -> int:
        """Bytes of data; 0 for a type the `gguf` package does not know (refused elsewhere)."""
        try:
            block_elems, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType(self.ggml_type)]
        except (ValueError, KeyError):
            return 0
        return self.elements // block_elems * block_bytes


@dataclass
class GGUFHeader:
    version: int
    metadata: dict[str, Any]
    tensors: list[TensorInfo] = field(default_factory=list)
    data_offset: int = 0

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))


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


def read_gguf_header(path: Path) -> GGUFHeader:
    """A GGUF file's metadata and tensor table (no tensor data), checked to be whole."""
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
    needed = max((data_offset + t.offset + t.nbytes() for t in tensors), default=data_offset)
    if size < needed:
        raise GGUFError(
            f"{path} is truncated: its tensors need {needed} bytes but the file has {size}; "
            "download or copy the file again"
        )
    return header


def tensor_blocks(path: Path, header: GGUFHeader, tensor: TensorInfo) -> Any:
    """The tensor's raw data, memory-mapped: (rows, bytes per row) uint8, or 1-D for a vector."""
    import numpy as np

    data = np.memmap(path, dtype=np.uint8, mode="r", offset=header.data_offset + tensor.offset,
                     shape=(tensor.nbytes(),))
    if len(tensor.shape) < 2:
        return data
    rows = tensor.elements // tensor.shape[-1]
    return data.reshape(rows, -1)


def dequantize(blocks: Any, tensor: TensorInfo) -> Any:
    """The tensor as float32 numpy in its numpy shape, by the `gguf` package's dequantizer."""
    from gguf.quants import dequantize as gguf_dequantize

    values = gguf_dequantize(blocks, GGMLQuantizationType(tensor.ggml_type))
    return values.astype("float32", copy=False).reshape(tensor.shape)
