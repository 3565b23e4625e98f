"""The pricing page offers the four plans, each with a price and a call to action."""

from html.parser import HTMLParser
from pathlib import Path

PAGE = Path(__file__).with_name("index.html")


class Plans(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.plans: list[dict[str, str]] = []
        self._field = ""

    def handle_starttag(self, tag, attrs):
        classes = (dict(attrs).get("class") or "").split()
        if tag == "section" and "plan" in classes:
            self.plans.append({"name": "", "price": "", "cta": ""})
        elif self.plans and tag == "h2":
            self._field = "name"
        elif self.plans and "price" in classes:
            self._field = "price"
        elif self.plans and "cta" in classes:
            self._field = "cta"

    def handle_endtag(self, tag):
        if tag in ("h2", "p", "a"):
            self._field = ""

    def handle_data(self, data):
        if self._field and self.plans:
            self.plans[-1][self._field] += data.strip()


def plans() -> list[dict[str, str]]:
    parser = Plans()
    parser.feed(PAGE.read_text())
    return parser.plans


def test_four_plans_in_order():
    assert [p["name"] for p in plans()] == ["Starter", "Team", "Business", "Enterprise"]


def test_enterprise_asks_to_contact_sales():
    enterprise = plans()[-1]
    assert "Contact us" in enterprise["price"]
    assert enterprise["cta"]


def test_every_plan_has_a_price_and_a_call_to_action():
    assert all(p["price"] and p["cta"] for p in plans())
