"""The task bench: its tasks, grading, failure classes on scripted runs, and its command line.

Scripted runs drive the real loop (`agent_node.loop.run_task`: real git worktrees, the real gate
running pytest, real Chromium for the UI task) with a model that answers the loop's structured
questions by their schema and plays a fixed list of coder tool calls.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from own_tasks import own_tasks
from scripted_model import call

from agent_node.exceptions import ContextLengthExceeded
from agent_node.model import Reply, Usage
from agent_node.runs import read_events
from bench import agent_tasks, task_totals
from bench.agent_tasks import _qa_factory, configure, run_one
from bench.task_failures import FAILURES
from bench.task_grading import (
    TASKS,
    TEST_CMD,
    Task,
    TaskError,
    check_tasks,
    grade,
    load_tasks,
    start_repo,
)
from bench.task_models import inference, store_model

REPO = Path(__file__).resolve().parent.parent
MEAN_FIXED = "def mean(xs):\n    if not xs:\n        raise ValueError('empty')\n" \
             "    return sum(xs) / len(xs)\n"
MEAN_HALF_FIXED = "def mean(xs):\n    return sum(xs) / len(xs)\n"  # no ValueError when empty
ROW_KEYS = {"name", "pass_round1", "pass_final", "rounds", "tokens_generated", "prompt_tokens",
            "cached_prompt_tokens", "wall_s", "tool_calls", "malformed_tool_calls", "failure"}


def task(name: str) -> Task:
    (t,) = load_tasks(TASKS, [name])
    return t


def diff_of(t: Task, where: Path, change: Callable[[Path], None]) -> str:
    """The diff a change makes to the task's start (what a run's diff.patch holds)."""
    repo = start_repo(t, where)
    change(repo)
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    return subprocess.run(["git", "diff", "--cached"], cwd=repo, check=True, capture_output=True,
                          text=True).stdout


def write(path: str, text: str) -> Callable[[Path], None]:
    def change(repo: Path) -> None:
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text(text)

    return change


# ------------------------------------------------------------------------------ the tasks


def test_the_bench_has_twenty_tasks_with_three_ui_tasks_and_a_solution_each() -> None:
    tasks = load_tasks()
    assert len(tasks) >= 20
    assert len([t for t in tasks if t.spec is not None]) >= 3
    assert all(t.solution is not None for t in tasks)
    assert {"fizzbuzz", "mean_bug", "roman", "slugify", "top_words"} <= {t.name for t in tasks}


def test_every_task_fails_at_the_start_and_its_reference_solution_passes(tmp_path: Path) -> None:
    """Hidden tests fail on the start; solution/ passes the visible and hidden tests without
    touching them; UI tasks' solved pages pass every measured fact in Chromium."""
    tasks = load_tasks()
    checks = check_tasks(tasks, tmp_path)
    assert {c.name: c.problems for c in checks if not c.ok} == {}
    assert all(c.fails_at_start and c.solvable for c in checks)
    ui = {c.name: c for c in checks if c.page_solved is not None}
    assert set(ui) == {t.name for t in tasks if t.spec is not None}
    assert all(c.page_solved == [] for c in ui.values())
    # The layout tasks start with a page wider than the phone: the visual gate has work to do.
    assert any("overflow" in f for f in ui["ui_nav_wrap"].page_start or [])
    assert any("overflow" in f for f in ui["ui_orders_table"].page_start or [])


# ------------------------------------------------------------------------------ grading


def test_a_correct_patch_passes(tmp_path: Path) -> None:
    t = task("mean_bug")
    patch = diff_of(t, tmp_path / "work", write("stats.py", MEAN_FIXED))
    g = grade(t, patch, tmp_path / "graded")
    assert g.passed and g.applied and g.restored == [] and g.hidden_failed == []


def test_an_empty_patch_fails(tmp_path: Path) -> None:
    t = task("mean_bug")
    for i, patch in enumerate(("", None)):
        g = grade(t, patch, tmp_path / f"graded-{i}")
        assert not g.passed
        assert g.hidden_failed and all("test_hidden_stats" in f for f in g.hidden_failed)


def test_a_patch_that_edits_the_tests_is_graded_on_the_original_tests(tmp_path: Path) -> None:
    t = task("mean_bug")
    # A conftest that marks every test xfail makes pytest exit 0 whatever the code does.
    xfail_all = ("import pytest\n\n\ndef pytest_collection_modifyitems(items):\n"
                 "    for item in items:\n        item.add_marker(pytest.mark.xfail)\n")
    cheat = diff_of(t, tmp_path / "w1", write("tests/conftest.py", xfail_all))
    g = grade(t, cheat, tmp_path / "g1")
    assert not g.passed and g.tests_edited == ["tests/conftest.py"]

    # A file where the hidden tests go is replaced by the hidden tests themselves.
    fake = diff_of(t, tmp_path / "w2", write("tests/test_hidden_stats.py",
                                             "def test_mean():\n    pass\n"))
    g = grade(t, fake, tmp_path / "g2")
    assert not g.passed and g.restored == ["tests/test_hidden_stats.py"]

    # A right fix that also rewrites a visible test passes, on the original visible test.
    def fix_and_edit(repo: Path) -> None:
        write("stats.py", MEAN_FIXED)(repo)
        write("tests/test_stats.py", "def test_three_values():\n    assert False\n")(repo)

    g = grade(t, diff_of(t, tmp_path / "w3", fix_and_edit), tmp_path / "g3")
    assert g.passed and g.tests_edited == ["tests/test_stats.py"]


def test_a_patch_that_does_not_apply_fails(tmp_path: Path) -> None:
    bogus = "--- a/stats.py\n+++ b/stats.py\n@@ -1,2 +1,2 @@\n-nothing like this\n+x\n"
    g = grade(task("mean_bug"), bogus, tmp_path / "g")
    assert not g.passed and not g.applied


# ------------------------------------------------------------------------------ scripted runs

NOT_UI = {"ui": False, "asks_for_change": True, "page": "", "reason": "a Python change"}


class LoopScript:
    """Answers classify / review / judge by their schema; plays `coder` for the coder's turns
    (then calls finish). Every reply reports the same usage, with part of the prompt cached."""

    name = "scripted"
    usage = Usage(prompt_tokens=100, completion_tokens=7, cached_prompt_tokens=60,
                  recomputed_prompt_tokens=10, recompute_cause="evicted", draft_tokens=5,
                  accepted_draft_tokens=4)

    def __init__(self, coder: list[Reply | Exception], review: str = "pass") -> None:
        self.coder = list(coder)
        self.review = review

    def chat(self, messages: list[dict[str, Any]], **options: Any) -> Reply:
        props = (options.get("response_format") or {}).get("properties", {})
        if "verdict" in props:
            reply = Reply(text=json.dumps({"verdict": self.review, "reasons": ["as scripted"],
                                           "fixes": ["as scripted"],
                                           "tests_change_ok": False}))
        elif "ui" in props:
            reply = Reply(text=json.dumps(NOT_UI))
        elif "pass" in props:  # the visual judge: it has nothing against the page
            reply = Reply(text=json.dumps({"pass": True, "failures": []}))
        elif self.coder:
            step = self.coder.pop(0)
            if isinstance(step, Exception):
                raise step
            reply = step
        else:
            reply = call("finish", summary="done as scripted")
        reply.usage = Usage(**vars(self.usage))
        reply.model = self.name
        return reply


def run_scripted(tmp_path: Path, name: str, coder: list[Reply | Exception], *,
                 review: str = "pass", rounds: int = 1, turns: int = 4) -> dict[str, Any]:
    cfg = configure({"rounds": rounds, "turns": turns}, quick=True)
    return run_one(task(name), LoopScript(coder, review), cfg, tmp_path,
                   qa_for=_qa_factory(cfg, None))


SCENARIOS: dict[str, tuple[str, list[Any], dict[str, Any]]] = {
    "no_change": ("mean_bug", [call("finish", summary="nothing to do")], {}),
    "limit": ("mean_bug", [call("read", path="stats.py"), call("read", path="stats.py")],
              {"turns": 2}),
    "tool_errors": ("mean_bug", [call("edit", path="stats.py", old="no such text", new="x"),
                                 call("rewrite", path="stats.py")], {}),
    "visible_tests_fail": ("mean_bug", [call("write", path="stats.py",
                                             content="def mean(xs):\n    return -1\n")], {}),
    "tests_edited": ("mean_bug", [call("write", path="tests/test_stats.py",
                                       content="def test_three_values():\n    pass\n")], {}),
    "hidden_tests_fail": ("mean_bug", [call("write", path="stats.py", content=MEAN_HALF_FIXED)],
                          {}),
    "review_refused": ("mean_bug", [call("write", path="stats.py", content=MEAN_FIXED)],
                       {"review": "fail"}),
    # The Contact link satisfies the hidden tests; the nav still overflows the phone.
    "visual_qa_failed": ("ui_nav_wrap", [call(
        "edit", path="index.html", old='<li><a href="blog.html">Blog</a></li>',
        new='<li><a href="blog.html">Blog</a></li>\n        '
            '<li><a href="contact.html">Contact</a></li>')], {}),
    "run_error": ("mean_bug", [ContextLengthExceeded("prompt over the model's context")], {}),
}


def test_every_failure_class_has_a_scripted_run() -> None:
    assert set(SCENARIOS) == set(FAILURES) - {"unclassified"}


@pytest.mark.parametrize("expected", sorted(SCENARIOS))
def test_a_scripted_run_fails_for_the_reason_it_was_driven_into(
        expected: str, tmp_path: Path) -> None:
    name, coder, options = SCENARIOS[expected]
    row = run_scripted(tmp_path, name, coder, **options)
    assert (row["failure"], row["pass_final"], row["pass_round1"]) == (expected, False, False), \
        row["failure_detail"]
    assert row["failure_detail"]
    assert ROW_KEYS <= set(row)
    if expected == "tool_errors":
        assert row["tool_errors"] == 2 and row["malformed_tool_calls"] == 1  # unknown tool
    if expected == "hidden_tests_fail":
        assert row["verdict"] == "pass"  # the loop accepted it; the hidden tests did not
    if expected == "review_refused":
        assert row["hidden_tests_pass_final"] is True
    if expected == "visual_qa_failed":
        assert row["hidden_tests_pass_final"] is True and row["visual_qa_final"] is False
        assert "overflow" in row["failure_detail"] or "wider" in row["failure_detail"]
    if expected == "run_error":
        assert "over the model's context" in row["error"]


def test_a_change_of_blank_lines_alone_is_scored_as_no_change(tmp_path: Path) -> None:
    stats = (TASKS / "mean_bug" / "repo" / "stats.py").read_text()
    row = run_scripted(tmp_path, "mean_bug",
                       [call("write", path="stats.py", content=stats + "\n\n")])
    assert (row["failure"], row["verdict"]) == ("no_change", "fail"), row["failure_detail"]
    assert "only blank lines and line-end spaces changed" in row["failure_detail"]

def test_a_change_that_gets_the_tasks_example_wrong_fails_the_visible_checks(
        tmp_path: Path) -> None:
    # [loop] task_examples: mean_bug's task says `mean([2, 4])` should be 3.0; the visible test
    # (mean > 0) passes `len(xs) - 1`, and the gate, checking the example too, does not
    config = tmp_path / "agent-node.toml"
    config.write_text("[loop]\ntask_examples = true\n")
    cfg = configure({"rounds": 1, "turns": 4}, quick=True, config=config)
    kept = "def mean(xs):\n    if not xs:\n        raise ValueError('empty')\n" \
        "    return sum(xs) / (len(xs) - 1)\n"
    row = run_one(task("mean_bug"), LoopScript([call("write", path="stats.py", content=kept)]),
                  cfg, tmp_path, qa_for=_qa_factory(cfg, None))
    assert (row["failure"], row["verdict"]) == ("visible_tests_fail", "fail")
    assert row["failure_detail"] == ("the task's example `mean([2, 4])` (from stats.py) should "
                                     "give `3.0`; it gave `6.0`")


def test_a_rename_that_misses_a_use_fails_the_visible_checks(tmp_path: Path) -> None:
    # rename_fetch_user: renamed in db.py and api.py, report.py still calls `db.fetch_usr`;
    # no visible test imports report.py, and the gate's names check fails the change
    repo = TASKS / "rename_fetch_user" / "repo"
    writes = [call("write", path=p, content=(repo / p).read_text().replace(
        "fetch_usr", "fetch_user")) for p in ("db.py", "api.py")]
    row = run_scripted(tmp_path, "rename_fetch_user", writes)
    assert (row["failure"], row["verdict"]) == ("visible_tests_fail", "fail")
    assert row["failure_detail"].startswith("report.py:9 uses `fetch_usr` from db.py")


def test_the_reviews_verdicts_are_scored_against_the_hidden_tests(tmp_path: Path) -> None:
    refused = run_scripted(tmp_path / "a", "mean_bug",
                           [call("write", path="stats.py", content=MEAN_FIXED)], review="fail")
    accepted = run_scripted(tmp_path / "b", "mean_bug",
                            [call("write", path="stats.py", content=MEAN_HALF_FIXED)])
    unreviewed = run_scripted(tmp_path / "c", "mean_bug", [call("finish", summary="no")])
    assert (refused["review_final"], accepted["review_final"], unreviewed["review_final"]) == (
        "fail", "pass", "")
    assert task_totals.totals([refused, accepted, unreviewed])["review_final"] == {
        "right_change_accepted": 0, "right_change_refused": 1, "wrong_change_accepted": 1,
        "wrong_change_refused": 0}


@pytest.mark.parametrize("finish_reason, expected, malformed", [
    ("length", "limit", 0),  # the per-reply cap cut the call off: a limit
    ("stop", "tool_errors", 1),  # a whole reply the parser could not read as a call
])
def test_a_tool_call_written_as_text_is_a_limit_when_cut_off_else_a_tool_error(
        finish_reason: str, expected: str, malformed: int, tmp_path: Path) -> None:
    as_text = Reply(text='{"name": "write", "arguments": {"path": "stats.py", "content": "def',
                    finish_reason=finish_reason)
    row = run_scripted(tmp_path, "mean_bug", [as_text])
    assert (row["failure"], row["malformed_tool_calls"]) == (expected, malformed)
    assert row["replies_without_tool_call"] == 1


def test_a_right_change_passes_and_its_tokens_come_from_the_run_record(tmp_path: Path) -> None:
    row = run_scripted(tmp_path, "mean_bug", [call("write", path="stats.py", content=MEAN_FIXED)])
    assert (row["pass_round1"], row["pass_final"], row["failure"]) == (True, True, None)
    calls = row["model_calls"]
    assert calls == 4  # classify, write, finish, review
    assert row["prompt_tokens"] == 100 * calls and row["cached_prompt_tokens"] == 60 * calls
    assert row["tokens_generated"] == 7 * calls
    assert (row["proposed_tokens"], row["accepted_proposals"]) == (5 * calls, 4 * calls)
    events = read_events(Path(row["run_dir"]))
    assert [e["cached_prompt_tokens"] for e in events if e["type"] == "model_call"] == [60] * 4
    assert row["cache_by_stage"] == {
        "classify": {"calls": 1, "prompt_tokens": 100, "cached_prompt_tokens": 60,
                     "recomputed_prompt_tokens": 10},
        "coder": {"calls": 2, "prompt_tokens": 200, "cached_prompt_tokens": 120,
                  "recomputed_prompt_tokens": 20},
        "review": {"calls": 1, "prompt_tokens": 100, "cached_prompt_tokens": 60,
                   "recomputed_prompt_tokens": 10}}
    # what the cache had seen and did not serve, and why, from the record's model calls
    assert row["recomputed_by_cause"] == {"evicted": 40}
    done = task_totals.totals([row, row])
    assert done["cache_by_stage"]["coder"] == {
        "calls": 4, "prompt_tokens": 400, "cached_prompt_tokens": 240,
        "recomputed_prompt_tokens": 40, "cache_share": 0.6}
    assert done["recomputed_by_cause"] == {"evicted": 80}
    assert (done["proposed_tokens"], done["accepted_proposals"]) == (40, 32)
    assert task_totals.misses(done) == ("not served from the cache: 240 prompt tokens new to "
                                        "it, 80 seen before (evicted 80)")


def test_the_brief_names_the_interpreter_not_where_the_bench_is_checked_out(
        tmp_path: Path) -> None:
    # a path in the test command made two checkouts of one commit give the 0.5B different
    # prompts, and different results
    row = run_scripted(tmp_path, "mean_bug", [call("write", path="stats.py", content=MEAN_FIXED)])
    brief = (Path(row["run_dir"]) / "round-1" / "brief.md").read_text()
    assert TEST_CMD in brief and "/" not in TEST_CMD
    assert str(Path(sys.executable).parent) not in brief
    assert row["pass_final"]  # the command the brief names is the one the gate ran


def test_a_second_round_that_fixes_it_passes_finally_but_not_in_round_one(
        tmp_path: Path) -> None:
    coder = [call("write", path="stats.py", content=MEAN_HALF_FIXED),
             call("finish", summary="half"),
             call("write", path="stats.py", content=MEAN_FIXED)]

    class ThenPass(LoopScript):  # the review refuses round 1 (rightly) and accepts round 2
        reviews = ["fail", "pass"]

        def chat(self, messages: list[dict[str, Any]], **options: Any) -> Reply:
            if "verdict" in (options.get("response_format") or {}).get("properties", {}):
                self.review = self.reviews.pop(0)
            return super().chat(messages, **options)

    cfg = configure({"rounds": 2, "turns": 4}, quick=True)
    row = run_one(task("mean_bug"), ThenPass(coder), cfg, tmp_path)
    assert (row["rounds"], row["pass_round1"], row["pass_final"]) == (2, False, True)


# ------------------------------------------------------------------------------ command line


def test_tasks_dir_outside_the_repo_prints_one_json_object(tmp_path: Path) -> None:
    tasks_dir = own_tasks(tmp_path / "my-tasks")
    env = {**os.environ, "BENCH_SMOKE": "1", "STUDIO_CODER_HOME": str(tmp_path / "home")}
    done = subprocess.run([sys.executable, "-m", "bench.agent_tasks", "--tasks-dir",
                           str(tasks_dir), "--json", "--keep", str(tmp_path / "kept")],
                          cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout)  # stdout holds the JSON object and nothing else
    assert out["tasks_dir"] == str(tasks_dir.resolve())
    assert {"model", "limits", "tasks", "pass_rate_round1", "pass_rate_final", "failures",
            "tokens_generated", "prompt_tokens", "cached_prompt_tokens", "cache_share",
            "cache_by_stage", "wall_s"} <= set(out)
    rows = {r["name"]: r for r in out["tasks"]}
    assert set(rows) == {"fizzbuzz", "shout"}
    for r in rows.values():
        assert ROW_KEYS <= set(r)
        for key in ROW_KEYS - {"name", "pass_round1", "pass_final", "failure"}:
            assert isinstance(r[key], int | float) and not isinstance(r[key], bool), key
        assert isinstance(r["pass_round1"], bool) and isinstance(r["pass_final"], bool)
    assert rows["fizzbuzz"]["pass_final"] and rows["fizzbuzz"]["failure"] is None
    # The smoke model knows no fix for the user's own task and changes nothing.
    assert not rows["shout"]["pass_final"] and rows["shout"]["failure"] == "no_change"
    assert out["failures"] == {"no_change": 1} and out["pass_rate_final"] == 0.5
    report = Path(rows["shout"]["run_dir"]) / "report.html"  # --keep kept the run record
    assert report.is_file() and report.is_relative_to(tmp_path / "kept")


def test_check_names_a_task_without_a_solution(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    tasks_dir = own_tasks(tmp_path / "my-tasks")
    assert agent_tasks.main(["--check", "--json", "--tasks-dir", str(tasks_dir)]) == 1
    out = json.loads(capsys.readouterr().out)
    problems = {t["name"]: t["problems"] for t in out["tasks"]}
    assert all("no solution/" in p for p in problems["shout"] + problems["fizzbuzz"])


@pytest.mark.parametrize("args, message", [
    (["--tasks-dir", "/no/such/folder"], "no tasks folder at /no/such/folder"),
    (["--tasks", "no_such_task"], "no task 'no_such_task'"),
    (["--model", "no-such-model"], "inference-node install no-such-model"),
    (["--vision", "v"], "--vision names a model on --target"),
    (["--keep", str(REPO / "kept-runs")], "whose pytest configuration (pyproject.toml)"),
])
def test_bad_input_exits_2_and_says_what_to_do(
        args: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("STUDIO_CODER_HOME", str(tmp_path))
    monkeypatch.delenv("BENCH_SMOKE", raising=False)
    assert agent_tasks.main(args) == 2
    assert message in capsys.readouterr().err


def test_a_task_folder_without_hidden_tests_is_refused(tmp_path: Path) -> None:
    shutil.copytree(TASKS / "fizzbuzz", tmp_path / "t")
    shutil.rmtree(tmp_path / "t" / "hidden")
    with pytest.raises(TaskError, match="no hidden/test_"):
        load_tasks(tmp_path)


def test_an_unreachable_target_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    from studio_common.net import free_port

    assert agent_tasks.main(["--target", f"127.0.0.1:{free_port()}", "--tasks", "fizzbuzz"]) == 3
    assert "unreachable" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--prompt-lookup", "--no-prompt-lookup"])
def test_prompt_lookup_is_for_the_local_node_only(flag: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert agent_tasks.main(["--target", "127.0.0.1:1", flag]) == 2
    err = capsys.readouterr().err
    assert f"{flag} sets up the local node" in err
    assert "unset is on for a coder with no draft" in err  # the node's default, not the flag's


@pytest.mark.parametrize("lookup", [False, True])
def test_the_local_node_decodes_with_prompt_lookup_unless_told_not_to(
        lookup: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        chain_models: dict[str, Path]) -> None:
    """The loop model repeats a-f: after one turn of it, the request's own tokens say what
    comes next, and the node checks those proposals in one pass."""
    from agent_node.client import Client, GrpcModel
    from agent_node.config import AgentConfig
    from agent_node.loop.coder import model_call

    monkeypatch.setenv("STUDIO_CODER_HOME", str(tmp_path / "home"))
    (tmp_path / "home" / "models").mkdir(parents=True)
    shutil.copytree(chain_models["loop"], tmp_path / "home" / "models" / "loop")
    with inference("", "loop", tmp_path / "srv", prompt_lookup=lookup) as (target, _, info):
        cfg = AgentConfig()
        cfg.inference.target = target
        with Client(cfg) as client:
            reply = GrpcModel(client, ["loop"]).chat([{"role": "user", "content": "go"}],
                                                     max_tokens=40)
    assert reply.usage.completion_tokens == 40
    assert info.get("prompt_lookup", False) is lookup
    event = model_call(reply, role="coder", round_no=1)  # what the run record keeps
    if lookup:
        assert event.accepted_draft_tokens > 20
        assert event.draft_tokens >= event.accepted_draft_tokens
    else:
        assert (event.draft_tokens, event.accepted_draft_tokens) == (0, 0)


def test_a_model_in_the_store_is_served_by_a_local_node(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chain_models: dict[str, Path]) -> None:
    from agent_node.client import Client
    from agent_node.config import AgentConfig

    monkeypatch.setenv("STUDIO_CODER_HOME", str(tmp_path / "home"))
    (tmp_path / "home" / "models").mkdir(parents=True)
    shutil.copytree(chain_models["hello"], tmp_path / "home" / "models" / "tiny-coder")
    assert store_model("tiny-coder") == tmp_path / "home" / "models" / "tiny-coder"
    with inference("", "tiny-coder", tmp_path / "srv") as (target, name, info):
        cfg = AgentConfig()
        cfg.inference.target = target
        with Client(cfg) as client:
            assert [m.name for m in client.list_models()] == ["tiny-coder"] == [name]
    assert info["path"] == str(tmp_path / "home" / "models" / "tiny-coder")
