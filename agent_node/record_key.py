"""The key that signs run records, so `approve` acts only on a record agent-node wrote.

    key = load_key(create=True)         # ~/.config/studio-coder/record.key ($STUDIO_CODER_KEY)
    mac = event_mac(key, run_id, previous_mac, event)

Each event line of `events.jsonl` carries an HMAC-SHA256 over the run id, the previous line's
MAC and the event itself, so a line added, changed, moved or copied from another run does not
verify. The key is 32 random bytes in a 0600 file in the user's config folder (made 0700), which
the coder's sandbox cannot see.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import stat
from typing import Any

from agent_node.config import record_key_path


class RecordKeyError(RuntimeError):
    """The key cannot be used as it is; the message says what to do."""


def load_key(*, create: bool = False) -> bytes | None:
    """The record key; made when missing and `create`, else None when missing."""
    path = record_key_path()
    if not path.exists():
        if not create:
            return None
        if not path.parent.exists():
            path.parent.mkdir(parents=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another agent-node made it meanwhile
            return load_key()
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise RecordKeyError(f"{path} can be read by others (mode {mode:o}); run "
                             f"`chmod 600 {path}`: it signs the run records approve trusts")
    try:
        key = bytes.fromhex(path.read_text().strip())
    except ValueError:
        key = b""
    if len(key) < 16:
        raise RecordKeyError(f"{path} does not hold a key (64 hex digits); remove it and a new "
                             "one is made on the next run (older runs then cannot be approved)")
    return key


def canonical(event: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in event.items() if k != "mac"}, sort_keys=True,
                      separators=(",", ":"), ensure_ascii=False)


def event_mac(key: bytes, run_id: str, previous: str, event: dict[str, Any]) -> str:
    message = f"{run_id}\n{previous}\n{canonical(event)}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def verify(key: bytes, run_id: str, previous: str, event: dict[str, Any]) -> bool:
    return hmac.compare_digest(str(event.get("mac", "")),
                               event_mac(key, run_id, previous, event))
