"""Git plumbing for a run: the coder's worktree, its real diff, and approve/reject.

The user's branch, index and working tree are only ever written by `approve`, and then only the
files the run changed. Everything else happens in the run's own worktree on
`studio-coder/<run-id>`, whose index is its own.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from agent_node.loop.errors import RefusedError, UsageError

# Build droppings the gate must not count as the coder's change.
NOISE = ["__pycache__", "*.pyc", ".pytest_cache", "node_modules", ".DS_Store", ".mypy_cache"]
_NOISE_SPECS = [f":(exclude,glob)**/{p}{tail}" for p in NOISE for tail in ("", "/**")]


class GitError(RuntimeError):
    pass


def git(
    args: list[str], cwd: Path, *, check: bool = True, env: dict[str, str] | None = None
) -> str:
    proc = subprocess.run(
        ["git", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
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


def add_worktree(repo: Path, path: Path, branch: str, base: str) -> None:
    git(["worktree", "add", "--quiet", "-b", branch, str(path), base], repo)


def remove_worktree(repo: Path, path: Path, branch: str) -> list[str]:
    """Remove the run's worktree and branch; returns what was removed, for the message."""
    removed = []
    if path.exists():
        git(["worktree", "remove", "--force", str(path)], repo)
        removed.append(f"worktree {path}")
    git(["worktree", "prune"], repo, check=False)
    if git(["rev-parse", "--verify", "--quiet", f"refs/heads/{branch}"], repo, check=False):
        git(["branch", "-D", branch], repo)
        removed.append(f"branch {branch}")
    return removed


@dataclass
class Diff:
    patch: str
    files: list[tuple[str, str]] = field(default_factory=list)  # (A|M|D, path)

    @property
    def empty(self) -> bool:
        return not self.files


def diff_worktree(worktree: Path, base: str) -> Diff:
    """The real change in the worktree against `base`, untracked files included."""
    git(["add", "-A", "--", ".", *_NOISE_SPECS], worktree)
    patch = git(["diff", "--cached", "--binary", "--no-renames", base], worktree)
    names = git(["diff", "--cached", "--name-status", "--no-renames", "-z", base], worktree)
    parts = [p for p in names.split("\0") if p]
    files = [(parts[i][0], parts[i + 1]) for i in range(0, len(parts) - 1, 2)]
    return Diff(patch=patch, files=files)


def snapshot_branch(worktree: Path, base: str, branch: str, message: str) -> str:
    """Make `branch` one commit on `base` holding the worktree's current state; its id."""
    diff_worktree(worktree, base)  # stages everything the gate counts
    tree = git(["write-tree"], worktree).strip()
    commit = git(["commit-tree", tree, "-p", base, "-m", message], worktree, env=_IDENTITY).strip()
    git(["update-ref", f"refs/heads/{branch}", commit], worktree)
    return commit


# The run branch's snapshot commit is ours, not the user's; approve commits as the user.
_IDENTITY = {
    "GIT_AUTHOR_NAME": os.environ.get("GIT_AUTHOR_NAME", "studio-coder"),
    "GIT_AUTHOR_EMAIL": os.environ.get("GIT_AUTHOR_EMAIL", "studio-coder@localhost"),
    "GIT_COMMITTER_NAME": os.environ.get("GIT_COMMITTER_NAME", "studio-coder"),
    "GIT_COMMITTER_EMAIL": os.environ.get("GIT_COMMITTER_EMAIL", "studio-coder@localhost"),
}


def apply_to_current_branch(
    repo: Path, base: str, run_branch: str, message: str, *, force: bool = False
) -> tuple[str, list[str]]:
    """Commit the run's change (base..run_branch) onto the user's current HEAD as one commit.

    Refuses when the user has local changes in any file the run touches, unless `force`; with
    `force` those files keep the user's local content (the commit still lands, nothing is lost).
    Returns the new commit id and the files whose local edits were kept.
    """
    names = git(["diff", "--name-only", "--no-renames", "-z", base, run_branch], repo)
    touched = [p for p in names.split("\0") if p]
    if not touched:
        raise RefusedError(f"run branch {run_branch} has no change against {base[:12]}; "
                           "nothing to approve")
    dirty = set(dirty_paths(repo))
    clash = [p for p in touched if p in dirty]
    if clash and not force:
        raise RefusedError(
            f"{len(clash)} file(s) the run changes have local changes in {repo}: "
            f"{', '.join(clash[:5])}; commit or stash them, or pass --force to keep your "
            "local versions and commit the run's change underneath")
    patch = git(["diff", "--binary", "--no-renames", base, run_branch], repo)
    head = head_commit(repo)
    with tempfile.TemporaryDirectory() as tmp:
        index, patch_file = Path(tmp) / "index", Path(tmp) / "change.patch"
        patch_file.write_text(patch, encoding="utf-8")
        env = {"GIT_INDEX_FILE": str(index)}
        git(["read-tree", head], repo, env=env)
        try:
            git(["apply", "--cached", "--binary", "--3way", str(patch_file)], repo, env=env)
        except GitError as e:
            raise RefusedError(f"the run's change no longer applies to HEAD {head[:12]} "
                               f"(it was made on {base[:12]}): {e}; reject it and run the task "
                               "again") from None
        tree = git(["write-tree"], repo, env=env).strip()
    commit = git(["commit-tree", tree, "-p", head, "-m", message], repo).strip()
    git(["update-ref", "-m", f"studio-coder approve {run_branch}", "HEAD", commit, head], repo)
    # Bring the index and the clean files in line with the new commit; leave dirty ones be.
    git(["reset", "-q", "--", *touched], repo)
    for path in touched:
        if path in clash:
            continue
        present = git(["ls-tree", "--name-only", commit, "--", path], repo).strip()
        if present:
            git(["checkout", commit, "--", path], repo)
        else:
            (repo / path).unlink(missing_ok=True)
    return commit, clash
