"""Durations as people type them in the timer app: "1h30m", "45s", "2h5s"."""

import re

SECONDS = {"h": 3600, "m": 60, "s": 1}
PART = re.compile(r"(\d+)([hms])")


def parse_duration(text: str) -> int:
    """The number of seconds in a duration such as "1h30m"."""
    total = 0
    for number, unit in PART.findall(text):
        total = int(number) * SECONDS[unit]
    return total


def format_duration(seconds: int) -> str:
    """The inverse: 5400 -> "1h30m"; zero parts are left out; 0 -> "0s"."""
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{n}{u}" for n, u in ((hours, "h"), (minutes, "m"), (secs, "s")) if n]
    return "".join(parts) or "0s"
