"""Word wrapping for the plain-text e-mail renderer."""


def wrap(text: str, width: int) -> list[str]:
    """The lines of `text` wrapped at `width` characters."""
    lines: list[str] = []
    line = ""
    for word in text.split():
        if line and len(line) + 1 + len(word) <= width:
            line += " " + word
        else:
            if line:
                lines.append(line)
            line = word
    if line:
        lines.append(line)
    return lines
