"""The navigation gains a Contact link."""

from html.parser import HTMLParser
from pathlib import Path

PAGE = Path(__file__).resolve().parent.parent / "index.html"


class Nav(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.in_nav = False
        self.in_link = False
        self.links: list[tuple[str, str]] = []  # (text, href)

    def handle_starttag(self, tag, attrs):
        if tag == "nav":
            self.in_nav = True
        elif tag == "a" and self.in_nav:
            self.in_link = True
            self.links.append(("", dict(attrs).get("href", "")))

    def handle_endtag(self, tag):
        if tag == "nav":
            self.in_nav = False
        elif tag == "a":
            self.in_link = False

    def handle_data(self, data):
        if self.in_link:
            text, href = self.links[-1]
            self.links[-1] = (text + data.strip(), href)


def nav_links() -> list[tuple[str, str]]:
    parser = Nav()
    parser.feed(PAGE.read_text())
    return parser.links


def test_six_links_in_order():
    assert [text for text, _ in nav_links()] == [
        "Home", "Articles", "Recipes", "Travel", "Blog", "Contact"]


def test_contact_points_to_the_contact_page():
    assert dict(nav_links())["Contact"] == "contact.html"
