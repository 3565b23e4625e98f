"""The coder's private checkout: a repository of its own, with no path back to the user's.

    co = Checkout.create(user_repo, checkouts_root() / run_id, base)
    co.work                                  # the working tree the coder edits
    co.changed(base)                         # would a snapshot now change more than blank lines
    commit = co.snapshot(base, "message")    # the working tree, as one commit on base
    co.diff(base, commit)                    # the real change: patch and (status, path) pairs
    co.export(commit, gate_dir)              # exactly that commit's files, for the gate's tests
    co.restore(base, ["tests/test_x.py"])    # files back as a commit has them
    co.publish(user_repo, commit, branch)    # the commit, as `branch` in the user's repository
    co.remove()

`<dir>/git` is a repository with its own object store, filled by fetching `base` (and its
history) from the user's repository; it has no remote, no alternates and no hardlinks into the
user's `.git`. `<dir>/work` is its working tree, whose `.git` is a `gitdir:` file pointing at
`<dir>/git`. The sandbox shows the coder that git read-only: it can read the history, never
commit, set config or install hooks. Every git command here names the repository and working
tree itself (never discovered from the working tree, where the coder could plant a `.git`), with
no system or global config and with hooks and fsmonitor off, so nothing in the checkout makes
agent-node run a program. Only the orchestrator brings a commit back (`publish`), and only as
the run's own branch; the user's branch moves at `agent-node approve` alone.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from agent_node.config import studio_home
from agent_node.loop.repo import git

# Build droppings the gate must not count as the coder's change.
NOISE = ["__pycache__", "*.pyc", ".pytest_cache", "node_modules", ".DS_Store", ".mypy_cache"]
_NOISE_SPECS = [f":(exclude,glob)**/{p}{tail}" for p in NOISE for tail in ("", "/**")]
# A change of blank lines and line-end spaces alone is no change to the task: whole-file coders
# drop or add them as they copy a file (the 1.5B gave temperature_bug's convert.py back with one
# blank line gone, and the gate passed that as its fix).
SPACE_BLIND = ("--ignore-blank-lines", "--ignore-space-at-eol")
# What stops a hostile working tree from running code in agent-node's own git commands.
_SAFE = ["-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false",
         "-c", "diff.ignoreSubmodules=all", "-c", "submodule.recurse=false",
         "-c", "core.untrackedCache=false"]
# The run's commits are agent-node's, not the user's; approve commits as the user.
IDENTITY = {
    "GIT_AUTHOR_NAME": os.environ.get("GIT_AUTHOR_NAME", "studio-coder"),
    "GIT_AUTHOR_EMAIL": os.environ.get("GIT_AUTHOR_EMAIL", "studio-coder@localhost"),
    "GIT_COMMITTER_NAME": os.environ.get("GIT_COMMITTER_NAME", "studio-coder"),
    "GIT_COMMITTER_EMAIL": os.environ.get("GIT_COMMITTER_EMAIL", "studio-coder@localhost"),
}


def checkouts_root(home: Path | None = None) -> Path:
    return (home or studio_home()) / "checkouts"


@dataclass
class Diff:
    patch: str
    files: list[tuple[str, str]] = field(default_factory=list)  # (A|M|D, path)
    # more than blank lines and line-end spaces changed (SPACE_BLIND); a file added, deleted or
    # given another mode is a change
    changes_content: bool = True

    @property
    def empty(self) -> bool:
        return not self.files


@dataclass(frozen=True)
class Checkout:
    dir: Path
    branch: str  # the private repository's branch; the run's commits go on it

    @property
    def git_dir(self) -> Path:
        return self.dir / "git"

    @property
    def work(self) -> Path:
        return self.dir / "work"

    @classmethod
    def create(cls, repo: Path, where: Path, base: str, branch: str = "run") -> Checkout:
        """A fresh repository at `where` holding `base` from `repo`, checked out on `branch`."""
        where.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(where.parent, 0o700)
        where.mkdir(mode=0o700)
        co = cls(where, branch)
        co.work.mkdir()
        co._git(["init", "-q", f"--separate-git-dir={co.git_dir}", str(co.work)], repo=False)
        co._git(["fetch", "-q", "--no-tags", "--no-write-fetch-head", str(repo),
                 f"{base}:refs/heads/{branch}"])
        co._git(["checkout", "-q", "-f", branch])
        return co

    def _env(self, repo: bool = True) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
        env.update(IDENTITY, GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL=os.devnull,
                   GIT_TERMINAL_PROMPT="0")
        if repo:
            env.update(GIT_DIR=str(self.git_dir), GIT_WORK_TREE=str(self.work))
        return env

    def _git(self, args: list[str], *, repo: bool = True, env: dict[str, str] | None = None
             ) -> str:
        return git([*_SAFE, *args], self.dir, env={**self._env(repo), **(env or {})},
                   inherit=False)

    def files(self) -> list[str]:
        return self._git(["ls-files"]).splitlines()

    def changed(self, base: str) -> bool:
        """Would `snapshot(base, ...)` now differ from `base` by more than blank lines and
        line-end spaces (what the gate counts as a change)?"""
        return bool(self.changes(base, *SPACE_BLIND).strip())

    def changes(self, base: str, *options: str) -> str:
        """`git diff base` (with `options`) of the working tree as `snapshot` would commit it,
        untracked files included, leaving the checkout's own index alone."""
        index = {"GIT_INDEX_FILE": str(self.dir / "changed.index")}
        try:
            self._git(["read-tree", base], env=index)
            self._git(["add", "-A", "--", ".", *_NOISE_SPECS], env=index)
            return self._git(["diff", "--cached", *options, base], env=index)
        finally:
            (self.dir / "changed.index").unlink(missing_ok=True)

    def restore(self, commit: str, paths: list[str]) -> None:
        """Put `paths` in the working tree back as `commit` has them (a deleted one comes back)."""
        if paths:
            self._git(["checkout", "-q", commit, "--", *paths], env={"GIT_LITERAL_PATHSPECS": "1"})

    def undo(self, base: str) -> list[str]:
        """Put the working tree back as `base` has it: each file the change modified or deleted
        restored, each it added removed (ignored files are left). The paths it put back."""
        listing = self.changes(base, "--name-status", "--no-renames", "-z")
        parts = [p for p in listing.split("\0") if p]
        changed = list(zip(parts[::2], parts[1::2], strict=False))
        self.restore(base, [path for status, path in changed if status != "A"])
        for path in [path for status, path in changed if status == "A"]:
            where = self.work / path  # a link is removed, never followed
            if where.parent.resolve().is_relative_to(self.work.resolve()):
                where.unlink(missing_ok=True)
        return [path for _, path in changed]

    def snapshot(self, base: str, message: str) -> str:
        """Commit the working tree as it stands (untracked files too, ignored ones and build
        droppings not) as one commit on `base`, on the private branch; its id."""
        self._git(["add", "-A", "--", ".", *_NOISE_SPECS])
        # A repository made inside the checkout would go in as a gitlink: a pointer to a commit
        # that exists nowhere (or in a repository it points at). It is not part of the change.
        had = _gitlinks(self._git(["ls-tree", "-r", "-z", base]), "\t")
        for path in _gitlinks(self._git(["ls-files", "-s", "-z"]), "\t") - had:
            self._git(["rm", "-q", "--cached", "--", path], env={"GIT_LITERAL_PATHSPECS": "1"})
        tree = self._git(["write-tree"]).strip()
        commit = self._git(["commit-tree", tree, "-p", base, "-m", message]).strip()
        self._git(["update-ref", f"refs/heads/{self.branch}", commit])
        return commit

    def diff(self, base: str, commit: str) -> Diff:
        """The real change from `base` to `commit`."""
        patch = self._git(["diff", "--binary", "--no-renames", base, commit])
        names = self._git(["diff", "--name-status", "--no-renames", "-z", base, commit])
        parts = [p for p in names.split("\0") if p]
        content = bool(self._git(["diff", "--no-renames", *SPACE_BLIND, base, commit]).strip())
        return Diff(patch, [(parts[i][0], parts[i + 1]) for i in range(0, len(parts) - 1, 2)],
                    content)

    def export(self, commit: str, dest: Path) -> Path:
        """A fresh folder holding exactly `commit`'s files: what the gate tests and serves."""
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True, mode=0o700)
        index = {"GIT_INDEX_FILE": str(self.dir / "export.index"),
                 "GIT_WORK_TREE": str(dest)}
        try:
            self._git(["read-tree", commit], env=index)
            self._git(["checkout-index", "-a", "-f"], env=index)
        finally:
            (self.dir / "export.index").unlink(missing_ok=True)
        return dest

    def publish(self, repo: Path, commit: str, branch: str) -> None:
        """Bring `commit` into the user's repository as the new branch `branch`: the only way a
        commit leaves the checkout before approve. Its objects are checked as they arrive."""
        self._git(["update-ref", f"refs/heads/{self.branch}", commit])
        git(["-c", "fetch.fsckObjects=true", "fetch", "-q", "--no-tags", "--no-write-fetch-head",
             str(self.git_dir), f"refs/heads/{self.branch}:refs/heads/{branch}"], repo)

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _gitlinks(listing: str, sep: str) -> set[str]:
    """Paths of the gitlinks (mode 160000) in `ls-tree -z` or `ls-files -s -z` output."""
    return {entry.split(sep, 1)[1] for entry in listing.split("\0")
            if entry.startswith("160000 ") and sep in entry}
