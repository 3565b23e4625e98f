"""Word wrapping for the plain-text e-mail renderer."""


def wrap(text: str, width: int) -> list[str]:
    """The lines of `text` wrapped at `width` characters."""
    raise NotImplementedError
