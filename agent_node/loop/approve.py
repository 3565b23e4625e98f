"""What `agent-node approve` and `reject` do to the user's repository: land the tested commit,
lose nothing.

    new, kept = land(repo, base, tested, "message", force=False)
    drop_run_branch(repo, "studio-coder/<run-id>", tested)

`land` commits the run's change (base..tested) onto the user's HEAD as one commit, as the user.
When HEAD is still `base`, the new commit's tree is the tested commit's tree, exactly. It never
overwrites a file git does not track (untracked or ignored: a local config, a secrets file),
`--force` included; it refuses when a file the run touches has local changes, unless `force`,
and then those files keep their index entry and their working-tree content as they were (the
staged version stays staged), with the run's change committed underneath.
"""

from __future__ import annotations

import tempfile
from pathlib import Path, PurePosixPath

from agent_node.loop.errors import RefusedError
from agent_node.loop.repo import GitError, dirty_paths, git, head_commit

# Paths from the run are file names, never pathspec patterns ("*.py" is one file).
_LITERAL = {"GIT_LITERAL_PATHSPECS": "1"}


def _tracked(repo: Path, path: str) -> bool:
    return bool(git(["ls-tree", "--name-only", "HEAD", "--", path], repo, env=_LITERAL).strip())


def untracked_in_the_way(repo: Path, writes: list[str]) -> list[str]:
    """The user's untracked or ignored files (or folders) that writing `writes` would replace:
    the path itself, or a parent the run needs as a folder."""
    found = []
    for path in writes:
        parts = PurePosixPath(path).parts
        for depth in range(1, len(parts) + 1):
            sub = "/".join(parts[:depth])
            local = repo / sub
            last = depth == len(parts)
            if not local.exists() and not local.is_symlink():
                break
            if (last or not local.is_dir() or local.is_symlink()) and not _tracked(repo, sub):
                found.append(sub)
                break
    return found


def land(repo: Path, base: str, tested: str, message: str, *, force: bool = False
         ) -> tuple[str, list[str]]:
    """Commit base..tested onto HEAD; (the new commit, files whose local edits were kept)."""
    names = git(["diff", "--name-status", "--no-renames", "-z", base, tested], repo)
    parts = [p for p in names.split("\0") if p]
    changes = [(parts[i][0], parts[i + 1]) for i in range(0, len(parts) - 1, 2)]
    touched = [p for _, p in changes]
    if not touched:
        raise RefusedError(f"the run's commit {tested[:12]} has no change against "
                           f"{base[:12]}; nothing to approve")
    in_the_way = untracked_in_the_way(repo, [p for s, p in changes if s != "D"])
    if in_the_way:
        raise RefusedError(
            f"the run writes {', '.join(in_the_way[:5])}, which your working tree has as a file "
            "git does not track (untracked or ignored, such as a local config); approving "
            "would overwrite it, so nothing was changed. Move it aside and approve again, or "
            "reject the run")
    dirty = set(dirty_paths(repo))
    clash = [p for p in touched if p in dirty]
    if clash and not force:
        raise RefusedError(
            f"{len(clash)} file(s) the run changes have local changes in {repo}: "
            f"{', '.join(clash[:5])}; commit or stash them, or pass --force to keep your "
            "local versions (staged and unstaged) and commit the run's change underneath")
    patch = git(["diff", "--binary", "--no-renames", base, tested], repo)
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
    tested_tree = git(["rev-parse", f"{tested}^{{tree}}"], repo).strip()
    if head == base and tree != tested_tree:  # what lands must be what was tested
        raise RefusedError(f"the change rebuilt on {head[:12]} gives tree {tree[:12]}, not the "
                           f"tested commit's {tested_tree[:12]}; nothing was changed")
    commit = git(["commit-tree", tree, "-p", head, "-m", message], repo).strip()
    git(["update-ref", "-m", f"studio-coder approve {tested[:12]}", "HEAD", commit, head], repo)
    # The index and the clean files follow the new commit; files with local changes keep their
    # index entry and their content, so nothing staged or edited is lost.
    clean = [p for p in touched if p not in clash]
    if clean:
        git(["reset", "-q", "--", *clean], repo, env=_LITERAL)
    for path in clean:
        if _in_commit(repo, commit, path):
            git(["checkout", commit, "--", path], repo, env=_LITERAL)
        else:
            (repo / path).unlink(missing_ok=True)
    return commit, clash


def _in_commit(repo: Path, commit: str, path: str) -> bool:
    return bool(git(["ls-tree", "--name-only", commit, "--", path], repo, env=_LITERAL).strip())


def drop_run_branch(repo: Path, branch: str, commit: str) -> str:
    """Delete `branch` if it still points at `commit` (the run made it so); what was done."""
    ref = f"refs/heads/{branch}"
    at = git(["rev-parse", "--verify", "--quiet", ref], repo, check=False).strip()
    if not at:
        return ""
    if at != commit:
        return (f"kept branch {branch}: it now points at {at[:12]}, not the run's commit "
                f"{commit[:12]}, so it holds work of yours")
    git(["update-ref", "-d", ref, commit], repo)
    return f"branch {branch}"
