from stats import mean


def test_three_values():
    assert mean([1, 2, 3, 4]) > 0
