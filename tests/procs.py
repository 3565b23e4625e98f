"""Processes on this machine, found by an argument unique to a test (PIDs inside a sandbox's
namespace mean nothing outside it, so tests tag what they start instead)."""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path


def tag() -> str:
    """A `sleep` argument no other process has: a number of seconds near 100000."""
    return str(100000 + uuid.uuid4().int % 900000)


def survivors(mark: str) -> list[int]:
    """Live (not zombie) processes with `mark` as one of their arguments."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            continue
        if mark.encode() in argv and state not in ("Z", "X"):
            found.append(int(entry.name))
    return found


def gone(mark: str, within_s: float = 2.0) -> bool:
    """Are all processes with `mark` gone (waiting up to `within_s` for the kernel)?"""
    deadline = time.monotonic() + within_s
    while survivors(mark) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not survivors(mark)


def kill_all(mark: str) -> None:
    for pid in survivors(mark):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
