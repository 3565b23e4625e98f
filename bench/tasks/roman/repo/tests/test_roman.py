from roman import to_roman


def test_one():
    assert to_roman(1) == "I"
