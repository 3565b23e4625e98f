from pages import page_count


def test_partial_last_page_counts():
    assert page_count(10, 3) == 4
