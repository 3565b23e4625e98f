"""The orders table gains a Status column and scrolls inside its own box on a phone."""

import re
from html.parser import HTMLParser
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "index.html"


VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr"}


class Table(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.in_cell = False
        self.open: list[tuple[str, list[str]]] = []  # (tag, classes) of each open element
        self.table_inside: list[str] = []  # classes of the elements around the table

    def handle_starttag(self, tag, attrs):
        classes = (dict(attrs).get("class") or "").split()
        if tag == "table":
            self.table_inside = [c for _, cs in self.open for c in cs]
        if tag not in VOID:
            self.open.append((tag, classes))
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th") and self.rows:
            self.rows[-1].append("")
            self.in_cell = True

    def handle_startendtag(self, tag, attrs):
        if tag not in VOID:
            self.handle_starttag(tag, attrs)
            self.handle_endtag(tag)

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.in_cell = False
        tags = [t for t, _ in self.open]
        if tag in tags:
            del self.open[len(tags) - 1 - tags[::-1].index(tag):]

    def handle_data(self, data):
        if self.in_cell:
            self.rows[-1][-1] += data.strip()


def parsed() -> Table:
    parser = Table()
    parser.feed(PAGE.read_text())
    return parser


def test_status_is_the_last_column():
    assert parsed().rows[0] == ["Order", "Customer", "Date", "Total", "Status"]


def test_statuses():
    rows = parsed().rows[1:]
    assert {row[0]: row[-1] for row in rows} == {
        "1001": "Paid", "1002": "Shipped", "1003": "Refunded"}
    assert all(len(row) == 5 for row in rows)


def test_table_is_inside_the_scroll_box():
    assert "table-scroll" in parsed().table_inside


def test_scroll_box_scrolls_sideways():
    css = (ROOT / "style.css").read_text()
    rules = re.findall(r"\.table-scroll\s*\{([^}]*)\}", css)
    assert rules, "no .table-scroll rule in style.css"
    assert re.search(r"overflow-x\s*:\s*auto", " ".join(rules))
