"""Orders as the shop stores them."""

from dataclasses import dataclass, field


@dataclass
class Line:
    description: str
    quantity: int
    unit_price: float

    def amount(self) -> float:
        return round(self.quantity * self.unit_price, 2)


@dataclass
class Order:
    customer: str
    lines: list[Line] = field(default_factory=list)
    tax_rate: float = 0.0

    def subtotal(self) -> float:
        return round(sum(line.amount() for line in self.lines), 2)

    def tax(self) -> float:
        return round(self.subtotal() * self.tax_rate, 2)
