import pytest
from stats import mean


def test_mean():
    assert mean([2, 4]) == 3.0
    assert mean([5]) == 5.0
    assert mean([1, 2, 3, 4]) == 2.5


def test_empty_raises():
    with pytest.raises(ValueError):
        mean([])
