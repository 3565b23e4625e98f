"""Checks on what people type into the sign-up form."""

import string

USERNAME_CHARS = set(string.ascii_lowercase + string.digits + "_")


def is_valid_username(name: str) -> bool:
    """3 to 20 characters: lower-case letters, digits and underscores; not starting with a digit."""
    return (3 <= len(name) <= 20 and set(name) <= USERNAME_CHARS
            and not name[0].isdigit())


def is_valid_email(email: str) -> bool:
    if email.count("@") != 1:
        return False
    local, domain = email.split("@")
    return bool(local) and "." in domain[1:-1]
