from words import top_words


def test_single_word():
    assert top_words("cat", 1) == [("cat", 1)]
