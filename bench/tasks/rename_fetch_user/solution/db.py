"""The user table. In production this is Postgres; here it is a dict."""

USERS = {
    1: {"id": 1, "name": "Ada Lovelace", "email": "ada@example.com", "active": True},
    2: {"id": 2, "name": "Alan Turing", "email": "alan@example.com", "active": False},
    3: {"id": 3, "name": "Grace Hopper", "email": "grace@example.com", "active": True},
}


def fetch_user(user_id: int) -> dict | None:
    """One user by id, or None."""
    row = USERS.get(user_id)
    return dict(row) if row else None


def all_ids() -> list[int]:
    return sorted(USERS)
