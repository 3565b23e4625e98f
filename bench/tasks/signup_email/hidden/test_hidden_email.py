import pytest
from accounts import Registry
from validate import is_valid_email

GOOD = ["ada@example.com", "a@b.co", "first.last@mail.example.org", "x+tag@host.io"]
BAD = ["", "ada", "ada@", "@example.com", "ada@@example.com", "a@b@example.com",
       "ada@example", "ada@.com", "ada@example."]


@pytest.mark.parametrize("email", GOOD)
def test_valid(email):
    assert is_valid_email(email)


@pytest.mark.parametrize("email", BAD)
def test_invalid(email):
    assert not is_valid_email(email)


def test_register_refuses_a_bad_email():
    reg = Registry()
    with pytest.raises(ValueError):
        reg.register("ada_l", "ada@example")
    assert "ada_l" not in reg
    reg.register("ada_l", "ada@example.com")
    assert "ada_l" in reg
