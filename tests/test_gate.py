"""The gate checks the worktree itself: real diff, real tests, flags for the judge."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent_node.loop.gate import QAFailure, QAOutcome, detect_test_cmd, run_gate, run_tests
from agent_node.loop.worktree import add_worktree, diff_worktree


@pytest.fixture(autouse=True)
def git_identity(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for who in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{who}_NAME", "Test User")
        monkeypatch.setenv(f"GIT_{who}_EMAIL", "test@example.com")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "gitconfig"))


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True,
                          text=True).stdout


@pytest.fixture
def worktree(tmp_path: Path) -> tuple[Path, str]:
    repo = tmp_path / "repo"
    (repo / "tests").mkdir(parents=True)
    (repo / "app.py").write_text("X = 1\n")
    (repo / "tests" / "test_app.py").write_text("import app\nassert app.X == 1\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "initial")
    base = git(repo, "rev-parse", "HEAD").strip()
    wt = tmp_path / "wt"
    add_worktree(repo, wt, "studio-coder/t", base)
    return wt, base


def test_diff_counts_untracked_files_and_ignores_build_droppings(
        worktree: tuple[Path, str]) -> None:
    wt, base = worktree
    (wt / "new.py").write_text("Y = 2\n")
    (wt / "__pycache__").mkdir()
    (wt / "__pycache__" / "app.cpython-311.pyc").write_bytes(b"\0")
    diff = diff_worktree(wt, base)
    assert diff.files == [("A", "new.py")]
    assert "+Y = 2" in diff.patch


def test_diff_includes_what_the_coder_committed(worktree: tuple[Path, str]) -> None:
    wt, base = worktree
    (wt / "app.py").write_text("X = 2\n")
    git(wt, "commit", "-qam", "coder committed")
    assert diff_worktree(wt, base).files == [("M", "app.py")]


def test_empty_diff_fails_when_a_change_was_asked(worktree: tuple[Path, str]) -> None:
    wt, base = worktree
    gate = run_gate(wt, base, test_cmd="true", timeout_s=10, asks_for_change=True)
    assert not gate.passed and "no diff" in gate.failures[0]
    assert run_gate(wt, base, test_cmd="true", timeout_s=10, asks_for_change=False).passed


def test_failing_tests_fail_the_gate_with_their_real_output(worktree: tuple[Path, str]) -> None:
    wt, base = worktree
    (wt / "app.py").write_text("X = 2\n")
    gate = run_gate(wt, base, test_cmd=f"PYTHONPATH=. {sys.executable} tests/test_app.py",
                    timeout_s=10,
                    asks_for_change=True)
    assert gate.tests is not None and gate.tests.exit_code == 1
    assert "AssertionError" in gate.failures[0] and "exited 1" in gate.failures[0]


def test_changed_or_deleted_tests_are_flagged_new_ones_are_not(
        worktree: tuple[Path, str]) -> None:
    wt, base = worktree
    (wt / "tests" / "test_app.py").write_text("assert True\n")
    (wt / "tests" / "test_more.py").write_text("assert True\n")
    gate = run_gate(wt, base, test_cmd="true", timeout_s=10, asks_for_change=True)
    assert gate.test_files_touched == ["tests/test_app.py (modified)"]
    assert any("tests/test_app.py (modified)" in f for f in gate.flags)
    (wt / "tests" / "test_app.py").unlink()
    gate = run_gate(wt, base, test_cmd="true", timeout_s=10, asks_for_change=True)
    assert gate.test_files_touched == ["tests/test_app.py (deleted)"]


def test_no_test_command_is_said_plainly(worktree: tuple[Path, str]) -> None:
    wt, base = worktree
    (wt / "app.py").write_text("X = 2\n")
    gate = run_gate(wt, base, test_cmd="", timeout_s=10, asks_for_change=True)
    assert gate.passed and gate.tests is None
    assert any("nothing was tested" in f for f in gate.flags)


def test_qa_failures_carry_viewport_and_fix(worktree: tuple[Path, str]) -> None:
    wt, base = worktree
    (wt / "app.py").write_text("X = 2\n")

    def qa(url: str, spec: list[str], out_dir: Path) -> QAOutcome:
        return QAOutcome(False, [QAFailure(spec[0], "656 px wide", "phone", "wrap the row")])

    gate = run_gate(wt, base, test_cmd="true", timeout_s=10, asks_for_change=True,
                    ui_url="http://x/", spec=["fits a phone"], qa=qa)
    assert gate.failures == ["visual QA at the phone viewport: 'fits a phone' does not hold. "
                             "Evidence: 656 px wide. Fix: wrap the row"]


def test_test_command_timeout_kills_the_whole_group(tmp_path: Path) -> None:
    marker = tmp_path / "child-survived"
    start = time.monotonic()
    run = run_tests(f"(sleep 2; touch {marker}) & sleep 30", tmp_path, timeout_s=0.5)
    assert run.timed_out and run.exit_code is None and not run.passed
    assert time.monotonic() - start < 5
    time.sleep(2.5)
    assert not marker.exists()


def test_detect_test_cmd(tmp_path: Path) -> None:
    assert detect_test_cmd(tmp_path) == ""
    (tmp_path / "package.json").write_text('{"scripts": {"test": "vitest run"}}')
    assert detect_test_cmd(tmp_path) == "npm test --silent"
    (tmp_path / "tests").mkdir()
    assert detect_test_cmd(tmp_path).endswith("-m pytest -q")
