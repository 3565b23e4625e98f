"""HTTP handlers, framework-free: each returns (status, body)."""

from db import fetch_usr


def get_user(user_id: int) -> tuple[int, dict]:
    user = fetch_usr(user_id)
    if user is None:
        return 404, {"error": f"no user {user_id}"}
    return 200, {"id": user["id"], "name": user["name"]}
