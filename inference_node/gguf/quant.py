"""What each ggml tensor type becomes in the MLX folder, exactly.

Every supported block type whose elements are `scale * q + bias` over groups of 32 with one
(scale, bias) per group is kept as MLX affine quantization (group size 32), scales and biases in
float32, so `mx.dequantize` gives back bit for bit what ggml (and the `gguf` package) decodes:

    type   MLX bits  scale      bias          (per 32 elements)
    Q4_0   4         d          -8·d
    Q4_1   4         d          m
    Q5_0   5         d          -16·d
    Q5_1   5         d          m
    Q8_0   8         d          -128·d        (int8 codes shifted to 0..255)
    Q4_K   4         d·sc       -dmin·m       (each 32-element sub-block of a 256 super-block)
    Q5_K   5         d·sc       -dmin·m
    Q6_K   dequantized to float32: its sub-blocks are 16 elements and MLX's groups are >= 32

The products are exact in float32 (an fp16 d has 11 significant bits, a sub-block scale 6 and
a code at most 8: at most 22 of float32's 24), so one rounding of `scale * q + bias` is the
`gguf` package's `d * q - dm`. Only the block headers (d, dmin,
the packed sub-block scales via `gguf.quants.Q4_K.get_scale_min`) are read here; the codes are
recovered from the `gguf` package's own dequantized values and checked to reproduce them.
"""

from __future__ import annotations

from typing import Any

from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T

GROUP_SIZE = 32
AFFINE_BITS: dict[T, int] = {T.Q4_0: 4, T.Q4_1: 4, T.Q5_0: 5, T.Q5_1: 5, T.Q8_0: 8,
                             T.Q4_K: 4, T.Q5_K: 5}
DEQUANTIZED = {T.Q6_K}
FLOATS = {T.F32, T.F16, T.BF16}
SUPPORTED = set(AFFINE_BITS) | DEQUANTIZED | FLOATS
SUPPORTED_TEXT = ", ".join(t.name for t in sorted(SUPPORTED, key=lambda t: t.name))
# Exact fp16 offsets of the symmetric types' codes (w = d * (q - offset)).
_OFFSET = {T.Q4_0: 8, T.Q5_0: 16, T.Q8_0: 128}


def supported(ggml_type: int) -> bool:
    return ggml_type in {int(t) for t in SUPPORTED}


def affine_bits(ggml_type: int) -> int:
    """MLX bit width for a type kept quantized; 0 for one that is stored as floats."""
    try:
        return AFFINE_BITS.get(T(ggml_type), 0)
    except ValueError:
        return 0


def _f16(blocks: Any, start: int) -> Any:
    import numpy as np

    return np.ascontiguousarray(blocks[:, start:start + 2]).view(np.float16).astype(np.float32)


def affine_params(blocks: Any, qtype: T) -> tuple[Any, Any]:
    """Per-group (scales, biases), float32 of shape (blocks, groups per block)."""
    import numpy as np
    from gguf.quants import Q4_K

    if qtype in (T.Q4_K, T.Q5_K):
        d, dmin = _f16(blocks, 0), _f16(blocks, 2)
        sc, m = Q4_K.get_scale_min(np.ascontiguousarray(blocks[:, 4:16]))
        return d * sc.astype(np.float32), -(dmin * m.astype(np.float32))
    d = _f16(blocks, 0)
    if qtype in (T.Q4_1, T.Q5_1):
        return d, _f16(blocks, 2)
    return d, -np.float32(_OFFSET[qtype]) * d


def pack(codes: Any, bits: int) -> Any:
    """MLX's packing of `bits`-bit codes: a little-endian bit stream per row, as uint32."""
    import numpy as np

    rows, n = codes.shape
    if bits == 8:
        return np.ascontiguousarray(codes.astype(np.uint8)).view(np.uint32)
    if bits == 4:
        c = codes.astype(np.uint8)
        return np.ascontiguousarray(c[:, 0::2] | (c[:, 1::2] << 4)).view(np.uint32)
    out = np.empty((rows, n * bits // 32), dtype=np.uint32)
    shifts = np.arange(bits, dtype=np.uint8)
    step = max(1, (1 << 24) // max(n, 1))  # rows per chunk: a few tens of MB of bits at a time
    for r in range(0, rows, step):
        chunk = codes[r:r + step].astype(np.uint8)
        stream = ((chunk[..., None] >> shifts) & 1).reshape(len(chunk), -1)
        out[r:r + step] = np.packbits(stream, axis=-1, bitorder="little").view(np.uint32)
    return out


def to_affine(blocks: Any, qtype: T, cols: int) -> tuple[Any, Any, Any] | None:
    """(packed weight, scales, biases) giving back exactly what the `gguf` package decodes from
    `blocks` (the tensor's raw data, (rows, bytes per row)), or None if they would not."""
    import numpy as np
    from gguf.quants import dequantize

    rows = blocks.shape[0]
    bits = AFFINE_BITS[qtype]
    type_bytes = GGML_QUANT_SIZES[qtype][1]
    groups = cols // GROUP_SIZE
    packed = np.empty((rows, cols * bits // 32), dtype=np.uint32)
    scales = np.empty((rows, groups), dtype=np.float32)
    biases = np.empty((rows, groups), dtype=np.float32)
    step = max(1, (1 << 22) // cols)  # rows per chunk: ~4M elements, ~16 MB per float32 copy
    for r in range(0, rows, step):
        raw = np.ascontiguousarray(blocks[r:r + step])
        n = len(raw)
        values = dequantize(raw, qtype).reshape(n, groups, GROUP_SIZE)
        s, b = affine_params(raw.reshape(-1, type_bytes), qtype)
        s, b = s.reshape(n, groups, 1), b.reshape(n, groups, 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            codes = np.where(s != 0, np.rint((values - b) / s), 0)
        if not np.isfinite(codes).all() or codes.min(initial=0) < 0 or \
                codes.max(initial=0) >= 1 << bits:
            return None
        codes = codes.astype(np.uint8)
        if not np.array_equal(s * codes.astype(np.float32) + b, values):
            return None
        packed[r:r + n] = pack(codes.reshape(n, cols), bits)
        scales[r:r + n], biases[r:r + n] = s[..., 0], b[..., 0]
    return packed, scales, biases
