"""Images for tests, built without decoding anything large."""

from __future__ import annotations

import struct
import zlib

# PNG colour types: (colour type, bit depth, bytes per row per pixel)
PNG_MODES = {"1": (0, 1), "L": (0, 8), "RGB": (2, 8), "RGBA": (6, 8)}


def png_declaring(width: int, height: int, *, mode: str = "1", rows: int = 1) -> bytes:
    """A PNG whose header declares `width` x `height` but that carries `rows` rows of pixels:
    a few KB however large the declared size, as a decompression bomb is. Decoding it fails
    as truncated (unless `rows` == `height`); reading its header does not."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

    colour, depth = PNG_MODES[mode]
    channels = {0: 1, 2: 3, 6: 4}[colour]
    row = b"\x00" * (1 + (width * channels * depth + 7) // 8)
    z = zlib.compressobj(9)
    data = b"".join(z.compress(row) for _ in range(rows)) + z.flush()
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0))
            + chunk(b"IDAT", data) + chunk(b"IEND", b""))
