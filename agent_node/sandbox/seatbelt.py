"""sandbox-exec on macOS: the profile in `seatbelt.sb` plus the rules for one command.

    argv = seatbelt_argv(["bash", "-c", "pytest"], view, tmp=Path(tmp), network=False)

macOS has no mount or PID namespaces: paths are hidden by denying reads of them, the private tmp
is a folder the runner makes per command (TMPDIR and HOME point into it), and a process that
calls `setsid` can outlive the command (it stays inside this profile). The runner still kills
the command's process group at the end.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path

from agent_node.sandbox.bwrap import View

SANDBOX_EXEC = "/usr/bin/sandbox-exec"  # never from PATH: a planted one would run instead


@lru_cache(maxsize=1)
def base_profile() -> str:
    return resources.files("agent_node.sandbox").joinpath("seatbelt.sb").read_text()


def _quote(path: Path) -> str:
    return '"' + str(path).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _real(path: Path) -> Path:
    """Seatbelt matches real paths (/tmp is /private/tmp on macOS)."""
    return Path(os.path.realpath(path))


def profile(view: View, *, tmp: Path, network: bool) -> str:
    """The base profile and, after it, this command's rules (later rules win)."""
    rules = [base_profile(), "", "; --- this command ---"]
    for path in sorted({_real(p) for p in view.hidden}):
        what = "subpath" if path.is_dir() else "literal"
        rules.append(f"(deny file-read* file-write* ({what} {_quote(path)}))")
    seen = [_real(p) for p in (*view.writable, *view.read_only, tmp)]
    if seen:
        rules.append("(allow file-read* " + " ".join(f"(subpath {_quote(p)})" for p in seen)
                     + ")")
    writable = [_real(p) for p in (*view.writable, tmp)]
    rules.append("(allow file-write* " + " ".join(f"(subpath {_quote(p)})" for p in writable)
                 + ")")
    if view.read_only:
        rules.append("(deny file-write* " + " ".join(
            f"(subpath {_quote(_real(p))})" for p in view.read_only) + ")")
    if network:
        rules.append("(allow network*)")
    return "\n".join(rules) + "\n"


def seatbelt_argv(argv: Sequence[str], view: View, *, tmp: Path, network: bool) -> list[str]:
    return [SANDBOX_EXEC, "-p", profile(view, tmp=tmp, network=network), *argv]


def available() -> bool:
    return Path(SANDBOX_EXEC).exists()
