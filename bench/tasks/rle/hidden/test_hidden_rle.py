from archive import minutes_high, pack
from rle import decode, encode


def test_encode():
    assert encode("aaabccdddd") == "3a1b2c4d"
    assert encode("a" * 12) == "12a"
    assert encode("abc") == "1a1b1c"
    assert encode("") == ""


def test_decode():
    assert decode("3a1b2c4d") == "aaabccdddd"
    assert decode("12a1b") == "a" * 12 + "b"
    assert decode("") == ""


def test_round_trip():
    for text in ("NNNNNHHHLLLLLLLLLLLLLLLN", "x", "aabbaa", " ! !!"):
        assert decode(encode(text)) == text


def test_archive():
    assert minutes_high(pack("NNHHHNH")) == 4
