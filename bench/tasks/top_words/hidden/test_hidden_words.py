from words import top_words


def test_top_words():
    text = "The cat and the dog. THE END, and the cat!"
    assert top_words(text, 3) == [("the", 4), ("and", 2), ("cat", 2)]
    assert top_words("", 2) == []
    assert top_words("b a b a c", 2) == [("a", 2), ("b", 2)]
