"""The nightly report: who is active."""

import db


def active_names() -> list[str]:
    names = []
    for user_id in db.all_ids():
        user = db.fetch_user(user_id)
        if user and user["active"]:
            names.append(user["name"])
    return names


def summary() -> str:
    names = active_names()
    return f"{len(names)} active: " + ", ".join(names)
