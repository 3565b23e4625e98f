from invoice import render
from order import Line, Order


def test_tax_of_an_order():
    order = Order("Ada", [Line("pen", 2, 1.50)], tax_rate=0.2)
    assert order.tax() == 0.60
    assert Order("Bob", [Line("ink", 3, 3.33)], tax_rate=0.075).tax() == 0.75
    assert Order("Cy", [Line("pen", 1, 2.00)]).tax() == 0.0


def test_invoice_has_tax_then_total():
    order = Order("Ada", [Line("pen", 2, 1.50), Line("pad", 1, 3.25)], tax_rate=0.2)
    lines = render(order).splitlines()
    assert lines[-2:] == ["Tax: 1.25", "Total: 7.50"]
    assert lines[0] == "Invoice for Ada"


def test_invoice_without_tax():
    lines = render(Order("Bob", [Line("pad", 2, 3.25)])).splitlines()
    assert lines[-2:] == ["Tax: 0.00", "Total: 6.50"]
