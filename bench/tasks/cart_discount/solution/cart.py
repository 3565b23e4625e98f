"""A shopping cart: what the customer picked, and what it costs."""

from catalog import price


class Cart:
    def __init__(self) -> None:
        self.items: dict[str, int] = {}

    def add(self, name: str, quantity: int = 1) -> None:
        price(name)  # unknown products are refused here, not at the till
        self.items[name] = self.items.get(name, 0) + quantity

    def subtotal(self) -> float:
        return round(sum(price(name) * qty for name, qty in self.items.items()), 2)

    def total(self, discount_percent: float = 0) -> float:
        return round(self.subtotal() * (1 - discount_percent / 100), 2)
