from pages import page_count, paginate
from search import search


def test_paginate_starts_at_page_one():
    items = list(range(10))
    assert paginate(items, 1, 3) == [0, 1, 2]
    assert paginate(items, 2, 3) == [3, 4, 5]
    assert paginate(items, 4, 3) == [9]
    assert paginate(items, 5, 3) == []


def test_page_count():
    assert page_count(9, 3) == 3
    assert page_count(10, 3) == 4
    assert page_count(1, 3) == 1
    assert page_count(0, 3) == 0


def test_search_first_page():
    assert search("a") == {"hits": ["apple", "apricot"], "page": 1, "pages": 2}
