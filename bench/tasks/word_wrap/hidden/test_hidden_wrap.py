from mail import render
from wrap import wrap


def test_greedy_packing():
    assert wrap("the quick brown fox jumps", 10) == ["the quick", "brown fox", "jumps"]
    assert wrap("one two", 7) == ["one two"]
    assert wrap("a b c", 1) == ["a", "b", "c"]


def test_whitespace_is_collapsed():
    assert wrap("  spaced   out\n words  ", 20) == ["spaced out words"]


def test_long_words_are_not_broken():
    assert wrap("supercalifragilistic is long", 5) == ["supercalifragilistic", "is", "long"]


def test_no_words():
    assert wrap("", 10) == []
    assert wrap("   \n ", 10) == []


def test_every_line_fits():
    text = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod " * 4
    lines = wrap(text, 30)
    assert all(len(line) <= 30 for line in lines)
    assert " ".join(lines) == " ".join(text.split())


def test_mail_paragraphs():
    assert render("Hi", "one two three\n\nfour") == "Subject: Hi\n\none two three\n\nfour\n"
