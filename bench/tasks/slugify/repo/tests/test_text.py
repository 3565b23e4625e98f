from text import slugify


def test_simple_word():
    assert slugify("hello") == "hello"
