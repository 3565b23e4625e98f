"""Accounts for the club's bar tab: members put money in and drink it away."""


class InsufficientFunds(Exception):
    """A withdrawal larger than the balance."""


class Account:
    def __init__(self, owner: str, balance: float = 0.0) -> None:
        self.owner = owner
        self.balance = balance

    def deposit(self, amount: float) -> float:
        if amount <= 0:
            raise ValueError(f"deposit must be positive, not {amount}")
        self.balance += amount
        return self.balance

    def withdraw(self, amount: float) -> float:
        if amount <= 0:
            raise ValueError(f"withdrawal must be positive, not {amount}")
        if amount > self.balance:
            raise InsufficientFunds(f"{self.owner} has {self.balance}, cannot take {amount}")
        self.balance -= amount
        return self.balance


def transfer(source: Account, target: Account, amount: float) -> None:
    """Move money between two accounts; nothing moves if the withdrawal fails."""
    source.withdraw(amount)
    target.deposit(amount)
