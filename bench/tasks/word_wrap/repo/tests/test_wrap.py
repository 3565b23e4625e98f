from wrap import wrap


def test_short_text_fits_on_one_line():
    assert wrap("hello world", 20) == ["hello world"]
