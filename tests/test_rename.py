"""A rename the change made (`def fetch_usr(...)` removed, the same `def` added as
`fetch_user`), carried by the loop to the uses in other files that it missed
(agent_node/loop/rename.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from scripted_model import ScriptedModel, as_json, text
from test_files_coder import block, files_form
from test_stale import DB, REPORT, renamed
from user_repo import NOT_UI, PASS, isolate, make_repo, run

from agent_node.loop.rename import carry, renames
from agent_node.runs import read_events

API = ("from db import fetch_usr\nfrom db import USERS as fetch_usr_table\n\n\n"
       "def get(i):\n    return fetch_usr(i) or fetch_usr_table\n")


def test_a_def_line_removed_and_added_with_only_its_name_changed_is_a_rename(
        tmp_path: Path) -> None:
    repo, patch = renamed(tmp_path, DB.replace("fetch_usr", "fetch_user"), {})
    assert renames(patch) == {"db.py": {"fetch_usr": "fetch_user"}}
    # a new signature is not a rename: which name is which is not written in the change
    repo2, patch2 = renamed(tmp_path / "two", DB.replace("fetch_usr(user_id)",
                                                         "fetch_user(user_id, default)"), {})
    assert renames(patch2) == {}


def test_the_uses_a_rename_missed_get_the_new_name_and_nothing_else(tmp_path: Path) -> None:
    # rename_fetch_user: the 0.5B renamed it in db.py, and gave report.py back as it was,
    # told that report.py:9 still called `db.fetch_usr`
    repo, patch = renamed(tmp_path, DB.replace("fetch_usr", "fetch_user"),
                          {"report.py": REPORT, "api.py": API})
    notes: list = []
    said = carry(repo, patch, notes.append, 2)
    assert (repo / "report.py").read_text() == REPORT.replace("db.fetch_usr", "db.fetch_user")
    assert (repo / "api.py").read_text() == (
        "from db import fetch_user\nfrom db import USERS as fetch_usr_table\n\n\n"
        "def get(i):\n    return fetch_user(i) or fetch_usr_table\n")
    assert "report.py: it still used `fetch_usr` -> `fetch_user` renamed in db.py" in said
    assert [n.round for n in notes] == [2, 2]
    assert carry(repo, patch, notes.append, 2) == ""  # nothing left to carry


def test_a_round_that_misses_a_use_of_its_rename_passes_once_it_is_carried(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    isolate(monkeypatch, tmp_path)
    test = ("import sys\n\nsys.path.insert(0, '.')\nimport db\n\n"
            "assert db.fetch_user(1) == 'ada'\n")
    repo = make_repo(tmp_path, {"db.py": DB, "report.py": REPORT, "tests/test_calc.py": test})
    coder = ScriptedModel([text(block("db.py", DB.replace("fetch_usr", "fetch_user")))],
                          name="coder")
    summary = run(tmp_path, repo, ScriptedModel([as_json(NOT_UI), as_json(PASS)]), coder,
                  cfg=files_form(define_missing=True), task="Rename `fetch_usr` to `fetch_user`.")

    assert summary["verdict"] == "pass" and summary["rounds"] == 1
    assert len(coder.calls) == 1  # the loop carried it; no second reply was needed
    diff = (Path(summary["run_dir"]) / "round-1" / "diff.patch").read_text()
    assert "+    return [db.fetch_user(i) for i in db.USERS]" in diff
    notes = [e["text"] for e in read_events(Path(summary["run_dir"])) if e["type"] == "note"]
    assert any(n.startswith("report.py still used names the change renamed in db.py")
               for n in notes)
