import pytest
from accounts import Registry


def test_register():
    reg = Registry()
    reg.register("ada_l", "ada@example.com")
    assert "ada_l" in reg


def test_bad_username():
    with pytest.raises(ValueError):
        Registry().register("1ada", "ada@example.com")


def test_taken():
    reg = Registry()
    reg.register("ada_l", "ada@example.com")
    with pytest.raises(ValueError):
        reg.register("ada_l", "other@example.com")
