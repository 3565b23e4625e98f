"""The gate's stale-use check: a line in another file that uses a name the change took out of
a module fails the round before any test has to reach it."""

from __future__ import annotations

from pathlib import Path

from test_names import git

from agent_node.loop.stale import broken_by_change, removed_definitions, stale_uses

DB = 'USERS = {1: "ada"}\n\n\ndef fetch_usr(user_id):\n    return USERS.get(user_id)\n'
REPORT = ('"""The nightly report."""\n\nimport db\n\n\ndef names():\n'
          '    return [db.fetch_usr(i) for i in db.USERS]\n')


def renamed(tmp_path: Path, db: str, others: dict[str, str]) -> tuple[Path, str]:
    """A repository with db.py and `others` (path: text) committed, then db.py changed to `db`
    ("": deleted): the tree and the patch of that change."""
    repo = tmp_path / "repo"
    repo.mkdir(parents=True)
    git(repo, "init", "-q")
    (repo / "db.py").write_text(DB)
    for name, text in others.items():
        f = repo / name
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "base")
    if db:
        (repo / "db.py").write_text(db)
    else:
        (repo / "db.py").unlink()
    git(repo, "add", "-A")
    return repo, git(repo, "diff", "--cached")


def test_a_renamed_function_another_module_still_calls_is_found_with_its_line(
        tmp_path: Path) -> None:
    """The 0.5B renamed `fetch_usr` in db.py and api.py and left report.py, which no visible
    test imports: the tests passed and the hidden ones did not."""
    repo, patch = renamed(tmp_path, DB.replace("fetch_usr", "fetch_user"), {
        "report.py": REPORT, "api.py": "from db import fetch_usr as get\n\n\nx = get\n",
        "tests/test_report.py": "import db\n\n\ndef test():\n    db.fetch_usr(1)\n"})
    found = stale_uses(repo, patch)
    assert [(s.path, s.line, s.module, s.name) for s in found] == [
        ("api.py", 1, "db.py", "fetch_usr"), ("report.py", 7, "db.py", "fetch_usr")]
    assert "change report.py to match, or keep `fetch_usr` in db.py" in found[1].failure()
    assert broken_by_change(repo, patch) == [s.failure() for s in found]


def test_a_name_the_module_still_binds_or_never_had_is_not_reported(tmp_path: Path) -> None:
    # the signature changed, the function is still there; `USERS` was never taken away
    repo, patch = renamed(tmp_path, DB.replace("(user_id)", "(user_id, default=None)"),
                          {"report.py": REPORT})
    assert removed_definitions(patch) == {"db.py": {"fetch_usr"}}
    assert stale_uses(repo, patch) == []
    # an alias kept under the old name counts as binding it
    repo2, patch2 = renamed(tmp_path / "two", DB.replace("fetch_usr", "fetch_user")
                            + "\nfetch_usr = fetch_user\n", {"report.py": REPORT})
    assert stale_uses(repo2, patch2) == []


def test_a_name_bound_only_inside_a_function_does_not_keep_it_in_the_module(
        tmp_path: Path) -> None:
    """A local of the same name binds nothing at module level: `db.fetch_usr` is still gone.
    One assigned through `global`, or in a module-level block, does keep it."""
    renamed_db = DB.replace("fetch_usr", "fetch_user")
    repo, patch = renamed(tmp_path, renamed_db + "\n\ndef cached():\n    fetch_usr = fetch_user"
                          "\n    return fetch_usr\n", {"report.py": REPORT})
    assert [(s.path, s.name) for s in stale_uses(repo, patch)] == [("report.py", "fetch_usr")]
    kept_by = ("\n\ndef alias():\n    global fetch_usr\n    fetch_usr = fetch_user\n",
               "\ntry:\n    fetch_usr = fetch_user\nexcept NameError:\n    pass\n")
    for i, kept in enumerate(kept_by):
        repo, patch = renamed(tmp_path / str(i), renamed_db + kept, {"report.py": REPORT})
        assert stale_uses(repo, patch) == []


def test_a_deleted_module_breaks_every_use_of_its_names(tmp_path: Path) -> None:
    repo, patch = renamed(tmp_path, "", {"report.py": REPORT})
    assert [(s.path, s.name) for s in stale_uses(repo, patch)] == [("report.py", "USERS"),
                                                                   ("report.py", "fetch_usr")]
