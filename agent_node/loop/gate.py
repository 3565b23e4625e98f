"""The gate: what the orchestrator checks itself, never taking the coder's word for it.

It is given one commit (the coder's checkout as it stood, `Checkout.snapshot`), that commit's
real diff, and a fresh folder holding exactly that commit's files (`Checkout.export`). It runs
the repo's test command there, in the sandbox (the tests may be the coder's own code: they write
only to that folder and a private tmp, reach no network, and their whole process tree dies at
the end or the timeout, with bounded output), flags a diff that changes or deletes tests, fails
an empty diff for a task that asks for a change (a diff of blank lines and line-end spaces alone
counts as empty), a Python line the change added that reads a name nothing defines (names.py)
or a line elsewhere that uses a name the change took away (stale.py), and a change that gets one
of the task's own examples wrong (examples.py), and for UI work runs visual QA against the spec.
What passes is that commit, and only that commit is what approve brings over.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent_node import activity
from agent_node.events import GateChecked
from agent_node.loop import examples as task_examples
from agent_node.loop import stale
from agent_node.loop.checkout import Diff
from agent_node.qa.result import QAResult
from agent_node.sandbox import Sandbox

TEST_PATH = re.compile(
    r"(^|/)(tests?|__tests__|spec)/|(^|/)test_[^/]*\.py$|_test\.(py|go)$|\.(test|spec)\.[jt]sx?$"
)


# (url, spec statements, out_dir) -> result; the orchestrator binds the models.
QACheck = Callable[[str, list[str], Path], QAResult]


@dataclass
class TestRun:
    cmd: str
    exit_code: int | None  # None: no test command, or it timed out
    output: str
    seconds: float
    timed_out: bool = False

    @property
    def passed(self) -> bool:
        return self.exit_code == 0


@dataclass
class GateResult:
    diff: Diff
    tests: TestRun | None
    test_files_touched: list[str]
    qa: QAResult | None
    failures: list[str]  # each a specific thing to fix, with the evidence
    flags: list[str]  # for the code review: not failures by themselves
    tests_failure: str = ""  # the one of `failures` the test command gave, if it failed

    @property
    def passed(self) -> bool:
        return not self.failures


def detect_test_cmd(root: Path) -> str:
    """The repo's test command by convention, or "" when none is recognisable."""
    python = root / ".venv" / "bin" / "python"
    py = shlex.quote(str(python if python.exists() else sys.executable))
    if (root / "pytest.ini").exists() or (root / "tests").is_dir() or any(root.glob("test_*.py")):
        return f"{py} -m pytest -q"
    pyproject = root / "pyproject.toml"
    if pyproject.exists() and "[tool.pytest" in pyproject.read_text(errors="replace"):
        return f"{py} -m pytest -q"
    package = root / "package.json"
    if package.exists():
        try:
            script = json.loads(package.read_text()).get("scripts", {}).get("test", "")
        except (json.JSONDecodeError, AttributeError):
            script = ""
        if script and "no test specified" not in script:
            return "npm test --silent"
    makefile = root / "Makefile"
    if makefile.exists() and re.search(r"^test:", makefile.read_text(errors="replace"), re.M):
        return "make test"
    return ""


def run_tests(cmd: str, tree: Path, timeout_s: float, *, sandbox: Sandbox | None = None,
              output_limit: int = 12_000, read_only: list[Path] | None = None) -> TestRun:
    """Run `cmd` in a shell in `tree`, in the sandbox (None: the default one), writing only
    there (but not to `read_only` inside it); its whole process tree dies at the end or the
    timeout. The output kept is bounded: `output_limit` characters from its start and as many
    from its end."""
    confine = sandbox or Sandbox.from_config()
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "CI": "1"}
    done = confine.run(["/bin/sh", "-c", cmd], cwd=tree, writable=[tree],
                       read_only=read_only or [], timeout_s=timeout_s,
                       output_limit=2 * output_limit, env=env)
    text = done.output
    if done.timed_out:
        text += (f"\n[studio-coder: test command killed after {timeout_s:.0f} s, with every "
                 "process it started]")
    return TestRun(cmd, None if done.timed_out else done.exit_code, text, done.seconds,
                   done.timed_out)


def tail(text: str, limit: int) -> str:
    """The end of a long output (where test failures are summarised), marked as cut."""
    if len(text) <= limit:
        return text
    return f"[... {len(text) - limit} characters cut ...]\n" + text[-limit:]


def tests_touched(diff: Diff) -> list[tuple[str, str]]:
    """The existing tests a change modified or deleted, as (M|D, path)."""
    return [(st, path) for st, path in diff.files if st in "MD" and TEST_PATH.search(path)]


def run_gate(
    tree: Path,
    diff: Diff,
    *,
    test_cmd: str,
    timeout_s: float,
    asks_for_change: bool,
    output_limit: int = 12_000,
    ui_url: str = "",
    spec: list[str] | None = None,
    qa: QACheck | None = None,
    qa_dir: Path | None = None,
    sandbox: Sandbox | None = None,
    examples: list[task_examples.Example] | None = None,
) -> GateResult:
    """Check `diff` and the commit whose files are in `tree` (see the module docstring)."""
    failures: list[str] = []
    flags: list[str] = []
    if diff.empty and asks_for_change:
        failures.append("the task asks for a change, but the checkout has no diff against the "
                        "base: no file was created, modified or deleted")
    elif not diff.changes_content and asks_for_change:
        failures.append("the task asks for a change, but the checkout's diff against the base "
                        "only adds or removes blank lines and spaces at line ends ("
                        + ", ".join(path for _, path in diff.files)
                        + "): the code is as it was")
    touched = [f"{path} ({'deleted' if st == 'D' else 'modified'})"
               for st, path in tests_touched(diff)]
    if touched:
        flags.append("the diff changes or deletes existing tests: " + ", ".join(touched))
    failures += stale.broken_by_change(tree, diff.patch)

    tests, tests_failure = None, ""
    if test_cmd:
        with activity.stage("tests"):
            tests = run_tests(test_cmd, tree, timeout_s, sandbox=sandbox,
                              output_limit=output_limit)
    if tests is None:
        flags.append("no test command was configured or detected; nothing was tested")
    elif not tests.passed:
        if tests.timed_out:
            how = "timed out"
        elif tests.exit_code is not None and tests.exit_code < 0:
            how = f"was killed by signal {-tests.exit_code}"
        else:
            how = f"exited {tests.exit_code}"
        tests_failure = (f"the test command `{tests.cmd}` {how}; its output:\n"
                         + tail(tests.output, output_limit))
        failures.append(tests_failure)
    if examples:
        with activity.stage("examples"):
            ran = task_examples.run(examples, tree, sandbox or Sandbox.from_config())
        failures += [o.failure() for o in ran if not o.holds]

    outcome = None
    if ui_url and spec:
        if qa is None:
            flags.append("UI task, but no visual QA is available; the page was not looked at")
        else:
            with activity.stage("visual QA"):
                outcome = qa(ui_url, spec, qa_dir or tree)
            if outcome.note and (outcome.passed or outcome.failures):
                flags.append(outcome.note)
            for f in outcome.failures:
                where = f" at the {f.viewport} viewport" if f.viewport else ""
                failures.append(f"visual QA{where}: {f.statement!r} does not hold. Evidence: "
                                f"{f.evidence or '(none given)'}. Fix: {f.fix or '(none given)'}")
            if not outcome.passed and not outcome.failures:
                failures.append(f"visual QA did not pass: {outcome.note or 'no reason given'}")
    return GateResult(diff, tests, touched, outcome, failures, flags, tests_failure)


def gate_event(gate: GateResult, *, round_no: int, commit: str, diff_file: str,
               test_log: str) -> GateChecked:
    """The gate's result as the record's event (the files it names are written by the caller)."""
    t = gate.tests
    return GateChecked(
        round=round_no, commit=commit, passed=gate.passed,
        files=[f"{s} {p}" for s, p in gate.diff.files],
        changes_content=gate.diff.changes_content,
        test_cmd=t.cmd if t else "",
        test_exit=t.exit_code if t else None,
        test_seconds=round(t.seconds, 2) if t else 0.0,
        test_files_touched=gate.test_files_touched,
        failures=gate.failures, flags=gate.flags, diff_file=diff_file, test_log=test_log)
