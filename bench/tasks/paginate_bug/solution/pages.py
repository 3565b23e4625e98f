"""Split a list of results into pages for the search screen. Pages are numbered from 1."""


def page_count(total: int, per_page: int) -> int:
    """How many pages `total` items fill at `per_page` items a page."""
    return (total + per_page - 1) // per_page


def paginate(items: list, page: int, per_page: int) -> list:
    """The items on page `page`; an empty list past the last page."""
    start = (page - 1) * per_page
    return items[start:start + per_page]
