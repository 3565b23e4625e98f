import re
from html.parser import HTMLParser
from pathlib import Path

CSS = Path(__file__).resolve().parent.parent / "style.css"
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


WHITE = r"(#fff|#ffffff|white|rgb\(\s*255\s*,\s*255\s*,\s*255\s*\))"


def test_sign_up_button_in_the_header():
    buttons = [link for link in links() if link["text"] == "Sign up"]
    assert len(buttons) == 1
    button = buttons[0]
    assert "button" in button["class"]
    assert button["href"] == "#signup"
    assert "header" in button["in"] and "nav" not in button["in"]


def test_button_comes_after_the_navigation():
    texts = [link["text"] for link in links()]
    assert texts.index("Sign up") > texts.index("Pricing")


def test_button_style():
    css = CSS.read_text()
    rules = re.findall(r"\.button\s*\{([^}]*)\}", css)
    assert rules, "no .button rule in style.css"
    body = " ".join(rules).lower()
    assert re.search(r"background(-color)?\s*:", body)
    assert re.search(r"(^|[;\s])color\s*:\s*" + WHITE + r"\s*(;|$)", body)
