"""Agent-loop task bench: small repositories, a task each, graded by tests the agent never sees.

    python -m bench.agent_tasks [--tasks-dir DIR] [--tasks a,b] [--json]
                                [--model NAME | --target HOST:PORT [--model NAME] [--vision V]]
                                [--rounds N] [--turns N] [--max-tokens N] [--quick] [--keep DIR]
                                [--parallel N] [--config FILE] [--record FILE]
                                [--no-prompt-lookup]
    python -m bench.agent_tasks --check [--tasks-dir DIR]    # are the tasks well made?

Each task (bench/tasks/<name>/, or any folder of them with --tasks-dir; the format is in
bench/tasks/README.md) is copied to a temp folder and committed; `agent_node.loop.run_task` works
on it with the repository's visible tests as the gate's test command, and for UI tasks (those with
a spec.md) the visual gate too: Chromium captures two viewports with their logs, the describer
says what the screenshots show and the model under test judges the page against the spec.

Afterwards the diff of round 1 and of the final round (round-N/diff.patch in the run record) are
graded by `bench.task_grading.grade`: applied to a fresh start, test files put back, hidden tests
added, pytest. A task passes when the loop accepted the round, the graded diff passes, and for UI
work the visual gate passed in that round. A task that does not pass gets one failure class from
its run record (`bench.task_failures`).

Models: `--target` uses a running inference node (`--model` names one it serves); `--model NAME`
alone starts a local node serving `$STUDIO_CODER_HOME/models/NAME` (what `inference-node install`
or `import-gguf` put there), with prompt lookup as a node has it by default unless
`--no-prompt-lookup`; neither serves the embedded SmolLM2. BENCH_SMOKE=1 swaps in a
scripted model (the bench's plumbing in seconds). Limits are small by default so it runs on a
CPU; the flags or BENCH_AGENT_ROUNDS / _TURNS / _MAX_TOKENS raise them.

Exit codes: 0 the bench ran (whatever the pass rate), 1 --check found a badly made task, 2 bad
usage or a bad task folder, 3 the inference node is unreachable.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.stats import smoke
from bench.task_failures import classify, read_rounds
from bench.task_grading import (
    TASKS,
    TEST_CMD,
    Grade,
    Task,
    TaskError,
    check_tasks,
    grade,
    load_tasks,
    python_on_path,
    start_repo,
)
from bench.task_models import SMOKE_CALLS, MeteredModel, SmokeModel, inference, log
from bench.task_record import Record
from bench.task_totals import add_recomputed, add_stage, table, totals, usage
from bench.task_totals import targets as task_targets

QUICK_TASKS = ["fizzbuzz", "mean_bug"]
SMOKE_TASKS = ["fizzbuzz", "ui_signup_button"]  # one plain task, one through the visual gate

# (judge model, the spec's allow rules) -> the gate's QACheck with a close(), or None
QAFactory = Callable[[Any, list[Any]], Any]


def limits(quick: bool) -> dict[str, Any]:
    if smoke():
        base: dict[str, Any] = {"names": SMOKE_TASKS, "rounds": 1, "turns": 3, "max_tokens": 8}
    elif quick:
        base = {"names": QUICK_TASKS, "rounds": 1, "turns": 2, "max_tokens": 96}
    else:
        base = {"names": None, "rounds": 2, "turns": 4, "max_tokens": 256}
    for key in ("rounds", "turns", "max_tokens"):
        env = os.environ.get(f"BENCH_AGENT_{key.upper()}")
        if env:
            base[key] = int(env)
    return base


def configure(lim: dict[str, Any], quick: bool, config: Path | None = None) -> Any:
    """The loop's configuration: `config` (an agent-node.toml; None: the defaults) with the
    bench's limits over it."""
    from agent_node.config import AgentConfig, ConfigError, load_config

    try:
        cfg = load_config(config) if config is not None else AgentConfig()
    except (ConfigError, OSError) as e:
        raise TaskError(f"--config {config}: {e}") from None
    cfg.loop.max_rounds = lim["rounds"]
    cfg.loop.coder_max_turns = lim["turns"]
    cfg.loop.json_retries = 0 if quick or smoke() else cfg.loop.json_retries
    cfg.loop.test_timeout_s = 120.0
    cfg.qa.judge_attempts = 1 if quick or smoke() else cfg.qa.judge_attempts
    return cfg


# ------------------------------------------------------------------------------ one task


def run_one(task: Task, model: Any, cfg: Any, work: Path, *, qa_for: QAFactory | None = None,
            max_tokens: int | None = None) -> dict[str, Any]:
    """Run `task` through the loop with `model`, grade it, classify a failure; one result row."""
    from agent_node.exceptions import InferenceUnavailable
    from agent_node.loop import run_task
    from agent_node.runs import read_events

    python_on_path()  # TEST_CMD names the interpreter, not its path
    here = work / task.name
    repo = start_repo(task, here / "repo")
    spec, allow = _read_spec(task)
    loop_model = MeteredModel(model, max_tokens)
    judge = MeteredModel(model, max_tokens)
    qa = qa_for(judge, allow) if spec and qa_for is not None else None
    summary: dict[str, Any] = {}
    error = ""
    t0 = time.monotonic()
    try:
        summary = run_task(task.text, repo, model=loop_model, cfg=cfg, home=here / "home",
                           spec=spec, test_cmd=TEST_CMD, qa=qa)
    except InferenceUnavailable:
        raise  # the node was lost (or the run is stopping): no result of the task's; exit 3
    except Exception as e:  # noqa: BLE001 - a crashed run is a result too
        error = f"{type(e).__name__}: {e}"
    finally:
        if qa is not None:
            qa.close()
    wall = time.monotonic() - t0
    run_dirs = sorted((here / "home" / "runs").glob("*"))
    run_dir = run_dirs[-1] if run_dirs else here / "no-run"
    events = read_events(run_dir)
    rounds = read_rounds(run_dir, events)
    verdict = str(summary.get("verdict") or _last_verdict(events) or "error")

    graded: list[Grade] = []
    for r in rounds[:1] + rounds[1:][-1:]:  # round 1, and the final round when it is another
        graded.append(grade(task, run_dir / r.diff_file if r.diff_file else None,
                            here / f"grade-{r.number}"))
    if not graded:
        graded.append(grade(task, None, here / "grade-none"))

    def passed(i: int) -> bool:  # 0: round 1, -1: the final round (graded[i] is its grade)
        r = rounds[i] if rounds else None
        return bool(r and r.accepted and graded[i].passed and (not spec or r.qa_passed))

    pass_round1, pass_final = passed(0), passed(-1)
    failure, detail = (None, "") if pass_final else classify(
        rounds, verdict=verdict, graded=graded[-1], ui=bool(spec), run_error=error)
    tokens = usage(events)
    for k, v in judge.usage.items():  # the judge's calls are not in the run record
        tokens[k] = tokens.get(k, 0) + v
    for cause, n in judge.recomputed.items():
        add_recomputed(tokens["recomputed"], cause, n)
    if judge.usage["calls"]:
        add_stage(tokens["stages"], "visual_judge", judge.usage["calls"], judge.usage["prompt"],
                   judge.usage["cached"], sum(judge.recomputed.values()))
    return {
        "name": task.name,
        "ui": bool(spec),
        "pass_round1": pass_round1,
        "pass_final": pass_final,
        "rounds": len(rounds),
        "tokens_generated": tokens["generated"],
        "prompt_tokens": tokens["prompt"],
        "cached_prompt_tokens": tokens["cached"],
        "model_calls": tokens["calls"],
        "proposed_tokens": tokens["proposed"],
        "accepted_proposals": tokens["accepted"],
        "cache_by_stage": tokens["stages"],
        "recomputed_by_cause": tokens["recomputed"],
        "wall_s": round(wall, 1),
        "tool_calls": sum(r.tool_calls for r in rounds),
        "malformed_tool_calls": sum(r.malformed for r in rounds),
        "tool_errors": sum(r.tool_failures for r in rounds),
        "replies_without_tool_call": sum(r.replies_without_tool_call for r in rounds),
        "failure": failure,
        "failure_detail": detail,
        "verdict": verdict,
        "hidden_tests_pass_final": graded[-1].passed,
        "review_final": rounds[-1].review if rounds else "",
        "visual_qa_final": (rounds[-1].qa_passed if rounds and rounds[-1].qa_ran else None)
        if spec else None,
        "grade_final": graded[-1].to_dict(),
        "run_dir": str(run_dir),
        "error": error,
    }


def _read_spec(task: Task) -> tuple[list[str] | None, list[Any]]:
    if task.spec is None:
        return None, []
    from agent_node.loop.cli import read_spec

    statements, allow = read_spec(task.spec)
    return statements, allow


def _last_verdict(events: list[dict[str, Any]]) -> str:
    from agent_node.events import RunVerdict, parse_events

    verdicts = [e for e in parse_events(events) if isinstance(e, RunVerdict)]
    return verdicts[-1].verdict if verdicts else ""


# ------------------------------------------------------------------------------ a bench run


def run(quick: bool, overrides: dict[str, Any] | None = None, target: str = "",
        model_name: str = "", tasks_dir: Path = TASKS, vision: str = "",
        keep: Path | None = None, parallel: int = 1, config: Path | None = None,
        record: Path | None = None, prompt_lookup: bool = True) -> dict[str, Any]:
    """The whole bench; `python -m bench` calls run(quick) and records what it returns.

    `keep`: an empty (or new) folder where each task's checkout, run record and grading copies
    stay; by default they go in a temp folder that is removed at the end. `parallel`: tasks run
    at once against the one node (it batches their decoding); each task's `wall_s` is then
    inflated by the others sharing the machine, the run's `wall_s` is what it took. `record`: a
    file each finished task is written to (`bench.task_record`); its tasks are not run again.
    `prompt_lookup`: whether the local node decodes a lone stream with prompt lookup (as a
    node does by default)."""
    if parallel < 1:
        raise TaskError(f"--parallel {parallel}: give 1 or more tasks to run at once")
    if keep is not None and keep.exists() and any(keep.iterdir()):
        raise TaskError(f"--keep {keep} is not empty; give a new or empty folder" + (
            " (a run that goes on from --record keeps the tasks it runs now in a folder of "
            "their own)" if record is not None else ""))
    outer = pytest_config_above(keep) if keep is not None else None
    if outer is not None:
        raise TaskError(f"--keep {keep} is inside {outer.parent}, whose pytest configuration "
                        f"({outer.name}) would apply to the tasks' tests; keep them in a folder "
                        "outside any Python project")
    lim = {**limits(quick), **(overrides or {})}
    names = lim.pop("names", None)
    if Path(tasks_dir).resolve() != TASKS and "names" not in (overrides or {}):
        names = None  # the quick and smoke picks are bundled tasks; a user's folder runs whole
    tasks = load_tasks(tasks_dir, names)
    cfg = configure(lim, quick, config)
    scripted = smoke() and not target
    t_start = time.monotonic()
    recorded: list[str] = []  # tasks taken from `record`, not run here

    def run_all(model: str, one: Callable[[Task], dict[str, Any]]) -> list[dict[str, Any]]:
        done = Record(record, {"model": model, "tasks_dir": str(Path(tasks_dir).resolve()),
                               "limits": lim, "loop": loop_settings(cfg, config),
                               **({"prompt_lookup": prompt_lookup} if not (target or scripted)
                                  else {})})
        todo = [t for t in tasks if t.name not in done.rows]
        recorded.extend(t.name for t in tasks if t.name in done.rows)
        if len(todo) < len(tasks):
            log(f"--record {record}: {len(tasks) - len(todo)} of {len(tasks)} tasks are done "
                f"already; running the other {len(todo)}")

        def one_kept(t: Task) -> dict[str, Any]:
            r = one(t)
            if done.add(r):
                log(f"{t.name}: {'pass' if r['pass_final'] else r['failure']} "
                    f"({r['rounds']} round(s), {r['wall_s']} s)")
            else:  # it ended in the stop's own errors, not its result
                log(f"{t.name}: cut off by the stop, no result kept; it runs again when the "
                    "run goes on")
            return r

        try:
            _run_all(todo, lim, one_kept, parallel)
        except BaseException:  # SIGTERM, ^C, a lost node: the tasks cut off leave no row
            done.stop()
            raise
        return [done.rows[t.name] for t in tasks]

    with _work_dir(keep) as tmp:
        if scripted:
            rows = run_all(SmokeModel.name, lambda t: run_one(
                t, SmokeModel(SMOKE_CALLS.get(t.name, [])), cfg, tmp,
                qa_for=_qa_factory(cfg, None), max_tokens=lim["max_tokens"]))
            model_info: dict[str, Any] = {"name": SmokeModel.name,
                                          "note": "smoke run: a scripted stand-in"}
            describer_name = ""
        else:
            from agent_node.client import Client, GrpcModel

            with inference(target, model_name, tmp, prompt_lookup) as (where, served,
                                                                        model_info):
                cfg.inference.target = where
                cfg.inference.vision = [vision] if vision else []
                with Client(cfg) as client:
                    client.health()  # InferenceUnavailable: exit 3, before any task starts
                    describer = client.describer()
                    describer_name = describer.name if describer is not None else ""
                    rows = run_all(str(model_info["name"]), lambda t: run_one(
                        t, GrpcModel(client, [served] if served else []), cfg, tmp,
                        qa_for=_qa_factory(cfg, describer), max_tokens=lim["max_tokens"]))
    done = totals(rows)
    targets = task_targets(str(model_info.get("name", "")), done["cache_share"])
    return {
        "model": model_info,
        "tasks_dir": str(Path(tasks_dir).resolve()),
        "limits": {**lim, "tasks": len(rows), "parallel": parallel},
        # `wall_s` is this invocation's: the recorded tasks' rows keep their own
        **({"record": str(record), "from_record": recorded} if record is not None else {}),
        "loop": loop_settings(cfg, config),
        "visual_qa": {"describer": describer_name or None, "judge": "the model under test",
                      "capture": "Chromium, desktop 1280x800 and phone 390x844, console, "
                                 "page errors, failed requests, overflow"},
        "tasks": rows,
        **done,
        **({"targets": targets} if targets else {}),
        "wall_s": round(time.monotonic() - t_start, 1),
    }


def loop_settings(cfg: Any, config: Path | None) -> dict[str, Any]:
    """The loop's configuration the run used (`[loop]`), and where it came from. A key that
    changes nothing in this configuration is left out, so a record made before it existed
    goes on (`stop_when_stalled` where the coder samples its retries, `task_examples` and
    `retry_from_start` off)."""
    from dataclasses import asdict

    settings = asdict(cfg.loop)
    if not cfg.loop.stops_when_stalled():
        del settings["stop_when_stalled"]
    for lever in ("task_examples", "retry_from_start"):  # off: as before they existed
        if not getattr(cfg.loop, lever):
            del settings[lever]
    return {"config": str(config) if config else "defaults", **settings}


def pytest_config_above(path: Path) -> Path | None:
    """The pytest configuration file pytest would find above `path`, if any."""
    markers = {"pytest.ini": "", "pyproject.toml": "[tool.pytest.ini_options]",
               "tox.ini": "[pytest]", "setup.cfg": "[tool:pytest]"}
    for folder in [path.expanduser().resolve(), *path.expanduser().resolve().parents]:
        for name, section in markers.items():
            f = folder / name
            if f.is_file() and section in f.read_text(errors="replace"):
                return f
    return None


@contextmanager
def _work_dir(keep: Path | None) -> Iterator[Path]:
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep.resolve()
        return
    # a task a stop left in flight may still write there as it ends: that stops no stop
    with tempfile.TemporaryDirectory(prefix="agent-tasks-", ignore_cleanup_errors=True) as d:
        yield Path(d)


def _run_all(tasks: list[Task], lim: dict[str, Any], one: Callable[[Task], dict[str, Any]],
             parallel: int) -> list[dict[str, Any]]:
    """`one(task)` for every task, `parallel` at a time; the rows in the tasks' order."""
    if parallel <= 1:
        return [one(t) for t in _announce(tasks, lim)]
    from concurrent.futures import ThreadPoolExecutor

    numbered = {t.name: i for i, t in enumerate(tasks, 1)}

    def started(t: Task) -> dict[str, Any]:  # said when it starts, not when it is queued
        _say(numbered[t.name], len(tasks), t, lim)
        return one(t)

    pool = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="task")
    try:
        return list(pool.map(started, tasks))
    finally:  # stopped (SIGTERM, ^C, the node lost): no waiting for the tasks in flight; they
        pool.shutdown(wait=False, cancel_futures=True)  # end as the node stops, unrecorded


def _announce(tasks: list[Task], lim: dict[str, Any]) -> Iterator[Task]:
    for i, t in enumerate(tasks, 1):
        _say(i, len(tasks), t, lim)
        yield t


def _say(i: int, n: int, t: Task, lim: dict[str, Any]) -> None:
    log(f"[{i}/{n}] {t.name}: rounds<={lim['rounds']} turns<={lim['turns']} "
        f"max_tokens/reply={lim['max_tokens']}")


def _qa_factory(cfg: Any, describer: Any) -> QAFactory:
    """The demo's visual QA: Chromium, the node's describer (None: none is served), a judge."""
    def make(judge: Any, allow: list[Any]) -> Any:
        from agent_node.loop.visual import default_qa

        return default_qa(cfg, judge, describer, allow)

    return make


# ------------------------------------------------------------------------------ command line


def check(tasks_dir: Path, names: list[str] | None) -> dict[str, Any]:
    tasks = load_tasks(tasks_dir, names)
    with tempfile.TemporaryDirectory(prefix="task-check-") as d:
        checks = check_tasks(tasks, Path(d))
    return {"tasks_dir": str(tasks_dir), "ok": all(c.ok for c in checks),
            "tasks": [vars(c) for c in checks]}


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # so `finally` stops the inference node this run started


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _terminated)
    p = argparse.ArgumentParser(prog="python -m bench.agent_tasks",
                                description="Run the agent loop on coding tasks and grade it.")
    p.add_argument("--tasks-dir", type=Path, default=TASKS, metavar="DIR",
                   help="a folder of tasks (or one task folder); default: bench/tasks")
    p.add_argument("--tasks", metavar="A,B", help="comma-separated task names (default: all; "
                   "--quick: " + ", ".join(QUICK_TASKS) + ")")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--check", action="store_true",
                   help="check the tasks instead: hidden tests fail at the start and the "
                        "reference solution (solution/) passes")
    p.add_argument("--quick", action="store_true",
                   help="two easy tasks, one round of two turns, 96 tokens a reply")
    p.add_argument("--rounds", type=int, metavar="N", help="fix rounds (default: 2)")
    p.add_argument("--turns", type=int, metavar="N", help="coder turns a round (default: 4)")
    p.add_argument("--max-tokens", type=int, metavar="N",
                   help="cap on one model reply (default: 256)")
    p.add_argument("--target", default="", metavar="HOST:PORT",
                   help="a running inference node")
    p.add_argument("--model", default="", metavar="NAME",
                   help="the model to bench: one served by --target, or without --target a "
                        "model in $STUDIO_CODER_HOME/models, served by a local node")
    p.add_argument("--keep", type=Path, metavar="DIR",
                   help="keep each task's checkout, run record (report.html) and grading "
                        "copies in DIR (default: a temp folder, removed at the end)")
    p.add_argument("--parallel", type=int, default=1, metavar="N",
                   help="run N tasks at once against the one inference node, which batches "
                        "their decoding (default: 1); per-task wall times then include the "
                        "sharing")
    p.add_argument("--config", type=Path, metavar="FILE",
                   help="an agent-node.toml whose [loop] settings the run uses (the bench's "
                        "--rounds and --turns still apply); default: the built-in defaults")
    p.add_argument("--record", type=Path, metavar="FILE",
                   help="write each finished task to FILE (JSON Lines) as it ends; run again "
                        "with the same FILE and settings, the tasks in it are not run again "
                        "(a long run that stopped goes on)")
    p.add_argument("--prompt-lookup", action=argparse.BooleanOptionalAction,
                   help="whether the local node decodes a lone stream with prompt lookup "
                        "([[models]] prompt_lookup; default: on, as in a node); a node given "
                        "by --target keeps its own setting")
    p.add_argument("--vision", default="", metavar="NAME",
                   help="with --target: a vision model it serves, to describe the screenshots")
    a = p.parse_args(argv)
    from inference_node import blas

    blas.drop_from_environ()  # Chromium hangs with OpenBLAS preloaded; the node gets it back
    names = [n.strip() for n in a.tasks.split(",") if n.strip()] if a.tasks else None
    try:
        if a.check:
            result = check(a.tasks_dir, names)
            print(json.dumps(result, indent=2) if a.json else "\n".join(
                f"{t['name']:<22} {'ok' if not t['problems'] else '; '.join(t['problems'])}"
                for t in result["tasks"]))
            return 0 if result["ok"] else 1
        if a.prompt_lookup is not None and a.target:
            flag = "--prompt-lookup" if a.prompt_lookup else "--no-prompt-lookup"
            raise TaskError(f"{flag} sets up the local node; the node at --target decodes as "
                            "its own [[models]] entry says (prompt_lookup: unset is on for a "
                            "coder with no draft on one host, false turns it off)")
        if a.vision and not a.target:
            raise TaskError("--vision names a model on --target; a local node serves no vision "
                            "model")
        over: dict[str, Any] = {k: v for k, v in (("rounds", a.rounds), ("turns", a.turns),
                                                  ("max_tokens", a.max_tokens)) if v is not None}
        if names:
            over["names"] = names
        result = run(a.quick, over, a.target, a.model, a.tasks_dir, a.vision, a.keep,
                     a.parallel, a.config, a.record, a.prompt_lookup is not False)
    except TaskError as e:
        log(str(e))
        return 2
    except Exception as e:
        from agent_node.exceptions import InferenceUnavailable

        if isinstance(e, InferenceUnavailable | ConnectionError):
            log(f"the inference node is unreachable: {e}" + (
                f"; the tasks that finished are in {a.record}, and the same command goes on "
                "from there" if a.record else ""))
            return 3
        raise
    print(json.dumps(result, indent=2) if a.json else table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
