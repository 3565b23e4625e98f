"""Task folders for the agent-loop bench, and how a run's change is graded.

A task is a folder (see bench/tasks/README.md):

    task.md      what the agent is asked, word for word
    repo/        the starting repository; its tests/ are the visible tests the loop's gate runs
    hidden/      tests the agent never sees, copied into tests/ only to grade
    spec.md      optional: UI work, checked by the visual gate against this spec as well
    solution/    optional: a reference solution (files laid over repo/), only for `check_task`

Grading (`grade`) applies a diff to a fresh copy of repo/, puts back every test file the diff
touched (so a change is graded on the original tests, whatever it did to them), adds the hidden
tests and runs pytest once, with a JUnit report that says which failures were visible tests and
which hidden ones.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TASKS = Path(__file__).resolve().parent / "tasks"
GRADE_TIMEOUT_S = 120.0
# What the gate runs in the run's checkout, and what grading runs in a copy. Plugins installed
# next to the bench (hypothesis, anyio, ...) stay out: loading them cost 7x the CPU of a task's
# own tests here. A task that needs a plugin names it in conftest.py (`pytest_plugins = [...]`).
TEST_ARGS = ["-m", "pytest", "-q", "-p", "no:cacheprovider"]
TEST_ENV = {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", "PYTHONDONTWRITEBYTECODE": "1"}
# The interpreter by name, found first on PATH (`python_on_path`): the brief shows this command,
# and a path to this checkout in it made the coder's prompt, and so a small model's replies,
# depend on where the bench was checked out (two worktrees of one commit differed by 2 tokens
# and, on signup_email, by the outcome).
PYTHON = Path(sys.executable).name
TEST_CMD = " ".join([*(f"{k}={v}" for k, v in TEST_ENV.items()), shlex.quote(PYTHON),
                     *TEST_ARGS, "tests"])
# Files that decide how the tests run: a diff that changes them changes the tests.
TEST_CONFIG = re.compile(r"(^|/)conftest\.py$|^(pytest\.ini|tox\.ini|setup\.cfg)$")
_COPY_IGNORE = shutil.ignore_patterns("__pycache__", ".pytest_cache", "*.pyc")


class TaskError(ValueError):
    """A task folder the bench cannot use; the message names the folder and what is missing."""


@dataclass(frozen=True)
class Task:
    name: str
    dir: Path

    @property
    def text(self) -> str:
        return (self.dir / "task.md").read_text(encoding="utf-8").strip()

    @property
    def repo(self) -> Path:
        return self.dir / "repo"

    @property
    def hidden(self) -> list[Path]:
        return sorted(p for p in (self.dir / "hidden").iterdir() if p.is_file())

    @property
    def spec(self) -> Path | None:
        path = self.dir / "spec.md"
        return path if path.is_file() else None

    @property
    def solution(self) -> Path | None:
        path = self.dir / "solution"
        return path if path.is_dir() else None


def python_on_path() -> None:
    """Put this interpreter's folder first on PATH, so TEST_CMD's `PYTHON` is this interpreter
    in the gate's shell (which inherits the environment) and in grading."""
    folder = str(Path(sys.executable).parent)
    paths = os.environ.get("PATH", "").split(os.pathsep)
    if paths[0] != folder:
        os.environ["PATH"] = os.pathsep.join([folder, *(p for p in paths if p != folder)])


def _check(task: Task) -> Task:
    where = task.dir
    if not task.text:
        raise TaskError(f"{where}/task.md is empty; write what the agent is asked to do")
    if not task.repo.is_dir():
        raise TaskError(f"{where} has no repo/ folder: the starting repository goes there")
    if not (task.repo / "tests").is_dir():
        raise TaskError(f"{where}/repo has no tests/ folder: the gate runs `pytest tests`, so "
                        "the visible tests go there (the hidden ones are added beside them)")
    hidden = where / "hidden"
    if not hidden.is_dir() or not any(p.suffix == ".py" for p in hidden.iterdir()):
        raise TaskError(f"{where} has no hidden/test_*.py: the bench grades a run with hidden "
                        "tests the agent never sees; add at least one")
    if task.spec is not None:
        if not (task.repo / "index.html").is_file():
            raise TaskError(f"{where} has a spec.md but no repo/index.html: the visual gate "
                            "opens index.html")
        from agent_node.loop.cli import read_spec  # raises UsageError naming the spec's problem

        read_spec(task.spec)
    return task


def load_tasks(tasks_dir: Path = TASKS, names: list[str] | None = None) -> list[Task]:
    """The tasks in `tasks_dir` (a folder of task folders, or one task folder), checked."""
    tasks_dir = tasks_dir.expanduser().resolve()
    if not tasks_dir.is_dir():
        raise TaskError(f"no tasks folder at {tasks_dir}")
    if (tasks_dir / "task.md").is_file():
        found = [Task(tasks_dir.name, tasks_dir)]
    else:
        found = [Task(p.name, p) for p in sorted(tasks_dir.iterdir())
                 if (p / "task.md").is_file()]
    if not found:
        raise TaskError(f"no tasks in {tasks_dir}: a task is a folder holding task.md, repo/ "
                        "and hidden/ (see bench/tasks/README.md)")
    if names:
        by_name = {t.name: t for t in found}
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise TaskError(f"no task {', '.join(map(repr, unknown))} in {tasks_dir}; it has: "
                            + ", ".join(by_name))
        found = [by_name[n] for n in names]
    return [_check(t) for t in found]


def git(repo: Path, *args: str, check: bool = True) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@localhost",
           "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@localhost"}
    return subprocess.run(["git", *args], cwd=repo, env=env, check=check, capture_output=True,
                          text=True).stdout


def start_repo(task: Task, dest: Path) -> Path:
    """A fresh git repository holding repo/, committed once on `main`."""
    shutil.copytree(task.repo, dest, ignore=_COPY_IGNORE)
    git(dest, "init", "-q", "-b", "main")
    git(dest, "add", "-A")
    git(dest, "commit", "-q", "--no-verify", "-m", "start")
    return dest


@dataclass
class Grade:
    passed: bool
    applied: bool = True  # False: the diff did not apply to the start
    restored: list[str] = field(default_factory=list)  # test files put back before grading
    tests_edited: list[str] = field(default_factory=list)  # of those: existing tests, config
    visible_failed: list[str] = field(default_factory=list)  # failing test ids
    hidden_failed: list[str] = field(default_factory=list)
    output: str = ""  # the end of pytest's output

    def to_dict(self) -> dict[str, object]:
        return {"passed": self.passed, "applied": self.applied, "restored": self.restored,
                "tests_edited": self.tests_edited, "visible_failed": self.visible_failed,
                "hidden_failed": self.hidden_failed}


def is_test_file(path: str) -> bool:
    from agent_node.loop.gate import TEST_PATH

    return bool(TEST_PATH.search(path) or TEST_CONFIG.search(path))


def restore_tests(repo: Path) -> tuple[list[str], list[str]]:
    """Put every test file back as it was committed; (restored, edited: existed or config)."""
    changed = git(repo, "diff", "--name-only", "HEAD").splitlines()
    added = git(repo, "ls-files", "--others").splitlines()
    restored, edited = [], []
    for path in sorted(set(changed) | set(added)):
        if not is_test_file(path):
            continue
        restored.append(path)
        if path in changed:
            git(repo, "checkout", "-q", "HEAD", "--", path)
            edited.append(path)
        else:
            (repo / path).unlink()
            if TEST_CONFIG.search(path):
                edited.append(path)
    return restored, edited


def apply_patch(repo: Path, patch: str) -> bool:
    if not patch.strip():
        return True
    done = subprocess.run(["git", "apply", "--whitespace=nowarn", "-"], cwd=repo, input=patch,
                          text=True, capture_output=True)
    return done.returncode == 0


def grade(task: Task, patch: str | Path | None, where: Path,
          timeout_s: float = GRADE_TIMEOUT_S) -> Grade:
    """Apply `patch` (a diff, a file holding one, or None) to a fresh start, grade it."""
    text = patch.read_text() if isinstance(patch, Path) else (patch or "")
    repo = start_repo(task, where)
    if not apply_patch(repo, text):
        return Grade(False, applied=False, output="the diff does not apply to the start")
    restored, edited = restore_tests(repo)
    (repo / "tests").mkdir(exist_ok=True)
    for f in task.hidden:
        shutil.copy(f, repo / "tests" / f.name)
    report = where.with_name(where.name + ".junit.xml")
    code, output = _pytest(repo, report, timeout_s)
    failed = _failed_tests(report)
    hidden = {f.stem for f in task.hidden}
    hidden_failed = [t for t in failed if any(h in re.split(r"[./:]", t) for h in hidden)]
    visible_failed = [t for t in failed if t not in hidden_failed]
    if code != 0 and not failed:  # nothing collected, a crash, a timeout: say so
        visible_failed = [f"pytest exited {code}"]
    return Grade(code == 0, True, restored, edited, visible_failed, hidden_failed,
                 output[-3000:])


def _pytest(repo: Path, report: Path, timeout_s: float) -> tuple[int | None, str]:
    cmd = [sys.executable, *TEST_ARGS, f"--junitxml={report}", "tests"]
    env = {**os.environ, **TEST_ENV}
    proc = subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return None, out.decode(errors="replace") + f"\n[killed after {timeout_s:.0f} s]"
    return proc.returncode, out.decode(errors="replace")


def _failed_tests(report: Path) -> list[str]:
    """Ids ("tests.test_x::test_y") of the failing or erroring test cases in a JUnit report."""
    try:
        root = ET.parse(report).getroot()
    except (OSError, ET.ParseError):
        return []
    out = []
    for case in root.iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            out.append(f"{case.get('classname', '')}::{case.get('name', '')}".lstrip(":"))
    return out


def solution_patch(task: Task, where: Path) -> str:
    """The reference solution (solution/ laid over repo/) as a diff against the start."""
    if task.solution is None:
        raise TaskError(f"{task.dir} has no solution/ folder to check the task with")
    repo = start_repo(task, where)
    shutil.copytree(task.solution, repo, dirs_exist_ok=True, ignore=_COPY_IGNORE)
    git(repo, "add", "-A")
    return git(repo, "diff", "--cached", "--binary")


@dataclass
class TaskCheck:
    name: str
    fails_at_start: bool
    solvable: bool
    problems: list[str]
    # UI tasks: the measured facts that fail the page (overflow, console errors, failed
    # requests), at the start and with the reference solution; None: not looked at.
    page_start: list[str] | None = None
    page_solved: list[str] | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


def check_task(task: Task, where: Path) -> TaskCheck:
    """Is the task well made? Its hidden tests fail on the start, and the reference solution
    passes the visible and hidden tests while leaving the tests alone."""
    problems = []
    start = grade(task, None, where / "start")
    if start.passed:
        problems.append("the hidden tests already pass on the start: there is nothing to do")
    elif not start.hidden_failed:
        problems.append("at the start only visible tests fail, no hidden one: "
                        + ", ".join(start.visible_failed[:3]))
    if task.solution is None:
        problems.append("no solution/ folder: nothing shows the task can be solved")
        return TaskCheck(task.name, not start.passed, False, problems)
    patch = solution_patch(task, where / "solution-src")
    if not patch.strip():
        problems.append("solution/ changes nothing")
    solved = grade(task, patch, where / "solved")
    if not solved.passed:
        failing = solved.visible_failed + solved.hidden_failed
        problems.append("the reference solution fails: " + ", ".join(failing[:5]))
    if solved.restored:
        problems.append("the reference solution touches tests: " + ", ".join(solved.restored))
    return TaskCheck(task.name, not start.passed, solved.passed, problems)


def check_tasks(tasks: list[Task], where: Path, workers: int = 4,
                visual: bool = True) -> list[TaskCheck]:
    """`check_task` for each task, a few at a time (each is mostly waiting on pytest and git);
    with `visual`, UI tasks' pages are also loaded in Chromium at the start and solved, and a
    solved page that a measured fact fails (the judge aside) is a problem."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        checks = list(pool.map(lambda t: check_task(t, where / t.name), tasks))
    ui = [(t, c) for t, c in zip(tasks, checks, strict=True) if t.spec is not None]
    if visual and ui:
        from agent_node.config import QASection
        from agent_node.qa import Capturer

        with Capturer(QASection()) as capturer:  # one browser, in this thread (Playwright's)
            for task, c in ui:
                if not (where / task.name / "solved").is_dir():
                    continue
                c.page_start = page_facts(task, where / task.name / "start", capturer)
                c.page_solved = page_facts(task, where / task.name / "solved", capturer)
                if c.page_solved:
                    c.problems.append("the reference solution's page fails: "
                                      + "; ".join(c.page_solved[:3]))
    return checks


def page_facts(task: Task, repo: Path, capturer: Any) -> list[str]:
    """The hard facts (as the visual gate measures them) that fail `repo`'s index.html."""
    from agent_node.loop.visual import serve_directory
    from agent_node.qa.facts import facts_of
    from agent_node.qa.spec import load_spec

    assert task.spec is not None
    spec = load_spec(task.spec)
    with serve_directory(repo) as url:
        capture = capturer.capture(f"{url}/index.html")
    facts = facts_of(capture)
    spec.apply(facts)
    return [f"[{f.viewport}] {f.kind}: {f.message}" for f in facts if f.counts]
