"""Pack a day's readings (one letter per minute: L low, N normal, H high) for the archive."""

from rle import decode, encode


def pack(readings: str) -> str:
    return encode(readings)


def unpack(packed: str) -> str:
    return decode(packed)


def minutes_high(packed: str) -> int:
    return unpack(packed).count("H")
