"""The gate checks one commit of the checkout itself: real diff, real tests on exactly that
commit's files, flags for the judge."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent_node.loop.checkout import Checkout
from agent_node.loop.gate import (
    GateResult,
    detect_test_cmd,
    run_gate,
    run_tests,
)
from agent_node.qa.result import Failure, QAResult, VisualVerdict


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
def checkout(tmp_path: Path) -> tuple[Checkout, str]:
    repo = tmp_path / "repo"
    (repo / "tests").mkdir(parents=True)
    (repo / "app.py").write_text("X = 1\n")
    (repo / "tests" / "test_app.py").write_text("import app\nassert app.X == 1\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "initial")
    base = git(repo, "rev-parse", "HEAD").strip()
    return Checkout.create(repo, tmp_path / "checkout", base), base


def gate(co: Checkout, base: str, **kw: object) -> GateResult:
    """What the orchestrator does: snapshot, export, then the gate on the exported files."""
    commit = co.snapshot(base, "test")
    kw = {"test_cmd": "true", "timeout_s": 10, "asks_for_change": True, **kw}
    return run_gate(co.export(commit, co.dir / "gate"), co.diff(base, commit), **kw)  # type: ignore[arg-type]


def test_diff_counts_untracked_files_and_ignores_build_droppings(
        checkout: tuple[Checkout, str]) -> None:
    co, base = checkout
    (co.work / "new.py").write_text("Y = 2\n")
    (co.work / "__pycache__").mkdir()
    (co.work / "__pycache__" / "app.cpython-311.pyc").write_bytes(b"\0")
    diff = co.diff(base, co.snapshot(base, "test"))
    assert diff.files == [("A", "new.py")]
    assert "+Y = 2" in diff.patch


def test_files_git_ignores_do_not_reach_the_tested_tree(checkout: tuple[Checkout, str]) -> None:
    co, base = checkout
    # A helper the tests would import, kept out of the commit by an ignore rule.
    (co.work / ".gitignore").write_text("helper.py\n")
    (co.work / "helper.py").write_text("FIXED = True\n")
    (co.work / "tests" / "test_helper.py").write_text("import helper\nassert helper.FIXED\n")
    result = gate(co, base, test_cmd=f"PYTHONPATH=. {sys.executable} tests/test_helper.py")
    assert not (co.dir / "gate" / "helper.py").exists()
    assert result.tests is not None and result.tests.exit_code == 1
    assert "No module named 'helper'" in result.failures[0]


def test_empty_diff_fails_when_a_change_was_asked(checkout: tuple[Checkout, str]) -> None:
    co, base = checkout
    result = gate(co, base)
    assert not result.passed and "no diff" in result.failures[0]
    assert gate(co, base, asks_for_change=False).passed


def test_failing_tests_fail_the_gate_with_their_real_output(
        checkout: tuple[Checkout, str]) -> None:
    co, base = checkout
    (co.work / "app.py").write_text("X = 2\n")
    result = gate(co, base, test_cmd=f"PYTHONPATH=. {sys.executable} tests/test_app.py")
    assert result.tests is not None and result.tests.exit_code == 1
    assert "AssertionError" in result.failures[0] and "exited 1" in result.failures[0]


def test_changed_or_deleted_tests_are_flagged_new_ones_are_not(
        checkout: tuple[Checkout, str]) -> None:
    co, base = checkout
    (co.work / "tests" / "test_app.py").write_text("assert True\n")
    (co.work / "tests" / "test_more.py").write_text("assert True\n")
    result = gate(co, base)
    assert result.test_files_touched == ["tests/test_app.py (modified)"]
    assert any("tests/test_app.py (modified)" in f for f in result.flags)
    (co.work / "tests" / "test_app.py").unlink()
    result = gate(co, base)
    assert result.test_files_touched == ["tests/test_app.py (deleted)"]


def test_no_test_command_is_said_plainly(checkout: tuple[Checkout, str]) -> None:
    co, base = checkout
    (co.work / "app.py").write_text("X = 2\n")
    result = gate(co, base, test_cmd="")
    assert result.passed and result.tests is None
    assert any("nothing was tested" in f for f in result.flags)


def test_qa_failures_carry_viewport_and_fix(checkout: tuple[Checkout, str]) -> None:
    co, base = checkout
    (co.work / "app.py").write_text("X = 2\n")

    def qa(url: str, spec: list[str], out_dir: Path) -> QAResult:
        return QAResult(url, out_dir, VisualVerdict(
            "fail", [Failure(spec[0], "656 px wide", "phone", "wrap the row")]))

    result = gate(co, base, ui_url="http://x/", spec=["fits a phone"], qa=qa)
    assert result.failures == ["visual QA at the phone viewport: 'fits a phone' does not hold. "
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


def test_a_repository_made_inside_the_checkout_is_not_part_of_the_change(
        checkout: tuple[Checkout, str]) -> None:
    co, base = checkout
    nested = co.work / "vendor" / "lib"
    nested.mkdir(parents=True)
    git(nested, "init", "-q")
    git(nested, "commit", "-q", "--allow-empty", "-m", "x")
    (co.work / "app.py").write_text("X = 2\n")
    diff = co.diff(base, co.snapshot(base, "test"))
    assert diff.files == [("M", "app.py")]
