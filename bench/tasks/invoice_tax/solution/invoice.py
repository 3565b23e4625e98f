"""Plain-text invoices, printed on the till's receipt printer."""

from order import Order


def render(order: Order) -> str:
    out = [f"Invoice for {order.customer}"]
    for line in order.lines:
        out.append(f"{line.quantity} x {line.description} @ {line.unit_price:.2f} = "
                   f"{line.amount():.2f}")
    out.append(f"Tax: {order.tax():.2f}")
    out.append(f"Total: {order.subtotal() + order.tax():.2f}")
    return "\n".join(out)
