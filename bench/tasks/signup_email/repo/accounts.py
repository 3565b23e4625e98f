"""The sign-up registry."""

from validate import is_valid_username


class Registry:
    def __init__(self) -> None:
        self.emails: dict[str, str] = {}

    def register(self, username: str, email: str) -> None:
        if not is_valid_username(username):
            raise ValueError(f"invalid username: {username!r}")
        if username in self.emails:
            raise ValueError(f"username {username!r} is taken")
        self.emails[username] = email

    def __contains__(self, username: str) -> bool:
        return username in self.emails
