"""The search screen: filter the catalogue, then show one page of hits."""

from pages import page_count, paginate

CATALOGUE = ["apple", "apricot", "avocado", "banana", "blackberry", "blueberry", "cherry"]


def search(prefix: str, page: int = 1, per_page: int = 2) -> dict:
    hits = [name for name in CATALOGUE if name.startswith(prefix)]
    return {
        "hits": paginate(hits, page, per_page),
        "page": page,
        "pages": page_count(len(hits), per_page),
    }
