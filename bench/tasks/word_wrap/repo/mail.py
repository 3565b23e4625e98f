"""Render a message as plain text, wrapped for old mail clients."""

from wrap import wrap

WIDTH = 72


def render(subject: str, body: str) -> str:
    paragraphs = [p for p in body.split("\n\n") if p.strip()]
    lines = [f"Subject: {subject}", ""]
    for i, paragraph in enumerate(paragraphs):
        if i:
            lines.append("")
        lines.extend(wrap(paragraph, WIDTH))
    return "\n".join(lines) + "\n"
