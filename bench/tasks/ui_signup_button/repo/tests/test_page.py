"""The landing page keeps its logo, navigation and hero."""

from html.parser import HTMLParser
from pathlib import Path

PAGE = Path(__file__).resolve().parent.parent / "index.html"


class Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.links: list[dict] = []  # {"href", "class", "text", "in"}

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "a":
            self.links.append({"href": a.get("href", ""), "class": (a.get("class") or "").split(),
                               "text": "", "in": list(self.stack)})
        self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in self.stack:
            del self.stack[len(self.stack) - 1 - self.stack[::-1].index(tag):]

    def handle_data(self, data):
        if self.stack and self.stack[-1] == "a" and self.links:
            self.links[-1]["text"] += data.strip()


def links() -> list[dict]:
    parser = Links()
    parser.feed(PAGE.read_text())
    return parser.links


def test_navigation_links():
    nav = [link["text"] for link in links() if "nav" in link["in"]]
    assert nav == ["Features", "Pricing"]


def test_hero_headline():
    assert "<h1>A calmer inbox</h1>" in PAGE.read_text()
