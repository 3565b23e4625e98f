from rle import encode


def test_single_character():
    assert encode("a") == "1a"
