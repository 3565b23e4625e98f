"""The user's repository as a run sees it: its top, HEAD, branch and uncommitted files.

Only reads. The user's branch, index and working tree are written by `approve` alone
(`approve.py`), and a run's own branch `studio-coder/<run-id>` is made by the orchestrator from
the private checkout (`checkout.py`).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

from agent_node.loop.errors import UsageError


class GitError(RuntimeError):
    pass


def git(
    args: list[str], cwd: Path, *, check: bool = True, env: Mapping[str, str] | None = None,
    inherit: bool = True,
) -> str:
    """git's stdout; GitError names the command and git's message. `env` is added to ours, or
    with `inherit=False` is the whole environment."""
    proc = subprocess.run(
        ["git", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})} if inherit else dict(env or {}),
    )
    if check and proc.returncode != 0:
        raise GitError(f"git {' '.join(args)} (in {cwd}) exited {proc.returncode}: "
                       f"{proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def repo_root(path: Path) -> Path:
    """The top of the git work tree containing `path`; UsageError if there is none."""
    if not path.is_dir():
        raise UsageError(f"{path}: no such directory; --repo must name a git checkout")
    try:
        top = git(["rev-parse", "--show-toplevel"], path).strip()
    except GitError:
        raise UsageError(f"{path} is not a git repository; run `git init` there "
                         "and commit once, or point --repo at a checkout") from None
    try:
        git(["rev-parse", "--verify", "HEAD^{commit}"], Path(top))
    except GitError:
        raise UsageError(f"{top} has no commits yet; commit once so a run has a base") from None
    return Path(top)


def head_commit(repo: Path) -> str:
    return git(["rev-parse", "HEAD"], repo).strip()


def current_branch(repo: Path) -> str:
    """The checked-out branch name, or "" when HEAD is detached."""
    return git(["symbolic-ref", "-q", "--short", "HEAD"], repo, check=False).strip()


def dirty_paths(repo: Path) -> list[str]:
    """Paths with staged, unstaged or untracked changes (ignored files excluded)."""
    out = git(["status", "--porcelain=v1", "-z", "--untracked-files=all"], repo)
    paths, parts, i = [], out.split("\0"), 0
    while i < len(parts):
        entry = parts[i]
        i += 1
        if len(entry) < 4:
            continue
        paths.append(entry[3:])
        if entry[0] in "RC":  # a rename carries its source path in the next field
            paths.append(parts[i])
            i += 1
    return paths
