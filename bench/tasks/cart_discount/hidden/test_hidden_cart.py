from cart import Cart


def cart_of(**items: int) -> Cart:
    cart = Cart()
    for name, qty in items.items():
        cart.add(name, qty)
    return cart


def test_discount_is_a_percentage():
    cart = cart_of(bread=4, apple=2)  # 9.00 + 1.00
    assert cart.subtotal() == 10.00
    assert cart.total(discount_percent=10) == 9.00
    assert cart.total(25) == 7.50
    assert cart.total() == 10.00


def test_total_is_rounded_to_cents():
    cart = cart_of(milk=3)  # 3.60
    assert cart.total(discount_percent=15) == 3.06
    assert cart.total(100) == 0.00
