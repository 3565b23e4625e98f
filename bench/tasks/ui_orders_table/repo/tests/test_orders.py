"""The orders table lists every order with its customer, date and total."""

from html.parser import HTMLParser
from pathlib import Path

PAGE = Path(__file__).resolve().parent.parent / "index.html"


class Table(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.in_cell = False

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th") and self.rows:
            self.rows[-1].append("")
            self.in_cell = True

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.in_cell = False

    def handle_data(self, data):
        if self.in_cell:
            self.rows[-1][-1] += data.strip()


def table() -> list[list[str]]:
    parser = Table()
    parser.feed(PAGE.read_text())
    return parser.rows


def test_header_starts_with_the_order_columns():
    assert table()[0][:4] == ["Order", "Customer", "Date", "Total"]


def test_three_orders():
    assert [row[0] for row in table()[1:]] == ["1001", "1002", "1003"]
