import pytest
from bank import Account, InsufficientFunds, transfer


def test_insufficient_funds_is_an_exception():
    assert issubclass(InsufficientFunds, Exception)


def test_overdraw_is_refused():
    acc = Account("ann", 10.0)
    with pytest.raises(InsufficientFunds):
        acc.withdraw(10.01)
    assert acc.balance == 10.0
    assert acc.withdraw(10.0) == 0.0


@pytest.mark.parametrize("amount", [0, -5.0])
def test_non_positive_amounts(amount):
    acc = Account("ann", 10.0)
    with pytest.raises(ValueError):
        acc.deposit(amount)
    with pytest.raises(ValueError):
        acc.withdraw(amount)
    assert acc.balance == 10.0


def test_failed_transfer_moves_nothing():
    a, b = Account("ann", 3.0), Account("bob", 1.0)
    with pytest.raises(InsufficientFunds):
        transfer(a, b, 5.0)
    assert (a.balance, b.balance) == (3.0, 1.0)
