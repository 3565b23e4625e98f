"""Unit prices of what the corner shop sells, in euros."""

PRICES = {
    "apple": 0.50,
    "bread": 2.25,
    "milk": 1.20,
    "coffee": 6.80,
}


def price(name: str) -> float:
    try:
        return PRICES[name]
    except KeyError:
        raise KeyError(f"{name!r} is not sold here") from None
