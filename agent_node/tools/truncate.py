"""Keep long tool output short enough for a context: the head and the tail, with a marker."""

from __future__ import annotations

from agent_node.sandbox.runner import marker

__all__ = ["clip_line", "marker", "truncate"]


def truncate(text: str, limit: int) -> str:
    """`text` if it fits in `limit` characters, else its first and last halves joined by a marker.

    The marker counts the characters left out, so the model knows how much it did not see.
    """
    if limit <= 0 or len(text) <= limit:
        return text
    head = limit // 2
    tail = limit - head
    return text[:head] + marker(len(text) - head - tail) + text[len(text) - tail :]


def clip_line(line: str, limit: int = 500) -> str:
    """One line cut at `limit` characters, saying so: a minified file is one very long line."""
    if len(line) <= limit:
        return line
    return line[:limit] + f" [... line cut, {len(line) - limit} more characters]"
