from invoice import render
from order import Line, Order


def test_invoice_lists_lines():
    order = Order("Ada", [Line("pen", 2, 1.50), Line("pad", 1, 3.25)])
    text = render(order)
    assert text.splitlines()[0] == "Invoice for Ada"
    assert "2 x pen @ 1.50 = 3.00" in text
    assert "1 x pad @ 3.25 = 3.25" in text
