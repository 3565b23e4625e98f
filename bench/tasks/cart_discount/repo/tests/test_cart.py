from cart import Cart


def test_subtotal_adds_every_item():
    cart = Cart()
    cart.add("apple", 2)
    cart.add("milk")
    assert cart.subtotal() == 2.20


def test_no_discount():
    cart = Cart()
    cart.add("bread")
    assert cart.total() == 2.25
