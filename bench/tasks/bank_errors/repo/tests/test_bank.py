from bank import Account, transfer


def test_deposit_and_withdraw():
    acc = Account("ann", 10.0)
    assert acc.deposit(5.0) == 15.0
    assert acc.withdraw(15.0) == 0.0


def test_transfer():
    a, b = Account("ann", 10.0), Account("bob")
    transfer(a, b, 4.0)
    assert (a.balance, b.balance) == (6.0, 4.0)
