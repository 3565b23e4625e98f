"""`agent-node run | approve | reject | runs`.

Exit codes: 0 pass / done, 1 the work failed or was refused, 2 bad usage or input,
3 the inference node is unreachable, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from agent_node.config import (
    DEFAULT_CONFIG,
    AgentConfig,
    ConfigError,
    load_default_config,
    studio_home,
)
from agent_node.events import Approved, Event, Rejected
from agent_node.loop.approve import drop_run_branch, land
from agent_node.loop.checkout import checkouts_root
from agent_node.loop.errors import RefusedError, UsageError
from agent_node.loop.repo import GitError, current_branch, git, head_commit, repo_root
from agent_node.record_key import RecordKeyError
from agent_node.report import write_report
from agent_node.runs import RecordTampered, RunRecord, find_run, list_runs, summarize

EXIT_PASS, EXIT_FAIL, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse exits 2 itself; keep it, with our prefix
        self.print_usage(sys.stderr)
        print(f"agent-node {self.prog.split()[-1]}: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _say(message: str) -> None:
    print(message, file=sys.stderr)


_config = load_default_config


def read_spec(path: Path) -> tuple[list[str], list[Any]]:
    """(statements, allow rules) from a spec file, in `agent_node.qa.spec`'s format."""
    from agent_node.qa import load_spec
    from agent_node.qa.errors import SpecError

    try:
        spec = load_spec(path)
    except SpecError as e:
        raise UsageError(str(e)) from None
    return list(spec.statements), list(spec.allow)


def _connect(cfg: AgentConfig) -> Any:
    """A live client: the node answered a health check (raises InferenceUnavailable if not)."""
    from agent_node.client import connect

    client = connect(cfg)
    try:
        client.health()
    except BaseException:
        client.close()
        raise
    return client


def _is_unreachable(e: BaseException) -> bool:
    try:
        from agent_node.exceptions import DeadlineExceeded, InferenceUnavailable
    except ImportError:
        return isinstance(e, ConnectionError)
    return isinstance(e, InferenceUnavailable | DeadlineExceeded | ConnectionError)


def _inference_error(e: BaseException) -> bool:
    try:
        from agent_node.exceptions import InferenceError
    except ImportError:
        return False
    return isinstance(e, InferenceError)


def run_main(argv: list[str]) -> int:
    p = _Parser(prog="agent-node run", description="Run a coding task in a private checkout.")
    p.add_argument("task")
    p.add_argument("--repo", required=True, help="the git checkout to work on")
    p.add_argument("--spec", help="design spec for UI work: one checkable statement per line")
    p.add_argument("--test-cmd", help="the test command (default: [loop] test_cmd, else detected)")
    p.add_argument("--config", help=f"agent-node.toml (default: {DEFAULT_CONFIG} if present)")
    p.add_argument("--refuse-dirty", action="store_true",
                   help="refuse a repo with uncommitted changes instead of basing the run on HEAD")
    p.add_argument("--json", action="store_true", help="print only the final summary as JSON")
    args = p.parse_args(argv)
    try:
        cfg = _config(args.config)
        spec, allow = read_spec(Path(args.spec).expanduser()) if args.spec else (None, [])
    except (ConfigError, UsageError) as e:
        _say(f"agent-node run: {e}")
        return EXIT_USAGE
    from agent_node.loop.orchestrator import run_task, sandbox_for

    try:
        repo_root(Path(args.repo).expanduser().resolve())
        sandbox_for(cfg)  # no sandbox and no opt-out: refused before anything starts
    except UsageError as e:
        _say(f"agent-node run: {e}")
        return EXIT_USAGE
    try:
        client = _connect(cfg)
    except Exception as e:
        if not (_is_unreachable(e) or _inference_error(e)):
            raise
        _say(f"agent-node run: cannot reach the inference node at {cfg.inference.target}: {e}; "
             "check `agent-node status`")
        return EXIT_UNREACHABLE
    from agent_node.loop.progress import Progress
    from agent_node.loop.visual import default_qa

    qa = None
    try:
        model = client.model(role="coder")
        qa = default_qa(cfg, model, client.describer(), allow)
        summary = run_task(
            args.task, Path(args.repo), model=model, cfg=cfg, spec=spec, test_cmd=args.test_cmd,
            qa=qa, listeners=[Progress()], refuse_dirty=args.refuse_dirty)
    except UsageError as e:
        _say(f"agent-node run: {e}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        _say("agent-node run: interrupted; the run's record is kept and your branch is untouched")
        return EXIT_INTERRUPTED
    except GitError as e:
        _say(f"agent-node run: git failed, your branch is untouched: {e}")
        return EXIT_FAIL
    except Exception as e:
        if _is_unreachable(e):
            _say(f"agent-node run: the inference node became unreachable: {e}")
            return EXIT_UNREACHABLE
        if _inference_error(e):
            _say(f"agent-node run: the inference node refused: {e}")
            return EXIT_FAIL
        raise
    finally:
        if qa is not None:
            qa.close()
        client.close()
    return _finish(summary, args.json)


def _finish(summary: dict[str, Any], as_json: bool) -> int:
    keys = ("run_id", "verdict", "rounds", "run_dir", "models", "tokens", "reasons", "run_branch")
    out = {k: summary.get(k) for k in keys}
    if as_json:
        print(json.dumps(out))
    else:
        _say(f"\nrun {out['run_id']}: {out['verdict']} after {out['rounds']} round(s)")
        for reason in out["reasons"] or []:
            _say(f"  - {str(reason)[:500]}")
        _say(f"report: {Path(str(out['run_dir'])) / 'report.html'}")
        if out["verdict"] == "pass":
            _say(f"bring it onto your branch: agent-node approve {out['run_id']}")
    return EXIT_PASS if out["verdict"] == "pass" else EXIT_FAIL


def _open_run(run_id: str) -> tuple[Path, dict[str, Any]]:
    """The run and its summary, from a record agent-node wrote; refused otherwise."""
    try:
        run_dir = find_run(run_id)
    except ValueError as e:
        raise UsageError(str(e)) from None
    summary = summarize(run_dir)
    if summary["integrity"]:
        raise RefusedError(f"run {run_dir.name}: {summary['integrity']}. approve and reject act "
                           "only on records agent-node wrote; nothing was changed")
    if not summary.get("repo"):
        raise UsageError(f"run {run_dir.name} has no start record; nothing to act on")
    if summary["state"]:
        raise RefusedError(f"run {run_dir.name} was already {summary['state']}")
    return run_dir, summary


def _commit_message(summary: dict[str, Any]) -> str:
    task = " ".join(str(summary.get("task", "")).split())
    subject = task if len(task) <= 64 else task[:61] + "..."
    return (f"{subject}\n\nTask: {task}\nstudio-coder run {summary['run_id']} "
            f"({summary['verdict']} after {summary['rounds']} round(s))\n")


def _branch_name(branch: str) -> str:
    return f"branch {branch}" if branch else "a detached HEAD"


def approve_main(argv: list[str]) -> int:
    p = _Parser(prog="agent-node approve",
                description="Commit the change a run's gate tested onto your branch.")
    p.add_argument("run_id")
    p.add_argument("--force", action="store_true",
                   help="approve a run that did not pass, and keep your local edits (staged "
                        "and unstaged) in the files it touches")
    p.add_argument("--onto-current", action="store_true",
                   help="land it on the branch you are on, when that is not the one the run "
                        "started from")
    args = p.parse_args(argv)
    try:
        run_dir, s = _open_run(args.run_id)
        tested = str(s.get("commit") or "")
        if s["verdict"] == "incomplete" or not tested:
            raise RefusedError(f"run {s['run_id']} has no tested commit (verdict: "
                               f"{s['verdict']}): it was killed mid-way or never reached the "
                               "gate, so there is nothing to approve; `agent-node reject` "
                               "cleans it up")
        if s["verdict"] != "pass" and not args.force:
            raise RefusedError(f"run {s['run_id']} did not pass (verdict: {s['verdict']}); "
                               f"see {run_dir / 'report.html'}, or pass --force to approve anyway")
        repo = Path(s["repo"])
        started_on, now_on = str(s.get("branch") or ""), current_branch(repo)
        if now_on != started_on and not args.onto_current:
            switch = f"`git switch {started_on}`" if started_on else "check that commit out"
            raise RefusedError(
                f"you are on {_branch_name(now_on)} in {repo}, but run {s['run_id']} started "
                f"from {_branch_name(started_on)}; {switch} and approve again, or pass "
                f"--onto-current to land it on {_branch_name(now_on)}")
        branch = f"studio-coder/{run_dir.name}"  # from the run id, never from a record field
        if not _has_commit(repo, tested):
            raise RefusedError(f"the tested commit {tested[:12]} is no longer in {repo} (was "
                               f"branch {branch} deleted?); nothing to approve")
        head = head_commit(repo)
        commit, kept = land(repo, str(s["base"]), tested, _commit_message(s), force=args.force)
        removed = [r for r in [drop_run_branch(repo, branch, tested)] if r]
        _record(run_dir, Approved(commit=commit, tested=tested, branch=now_on, kept_local=kept,
                                  removed=removed))
    except UsageError as e:
        _say(f"agent-node approve: {e}")
        return EXIT_USAGE
    except (RefusedError, GitError, RecordTampered, RecordKeyError) as e:
        _say(f"agent-node approve: {e}")
        return EXIT_FAIL
    _say(f"approved run {s['run_id']}: commit {commit[:12]} on {_branch_name(now_on)} of "
         f"{repo}, holding the change of the tested commit {tested[:12]}")
    if head != s["base"]:
        _say(f"your branch had moved since the run started (from {str(s['base'])[:12]} to "
             f"{head[:12]}): the change was applied on top, and that combination was not tested")
    if kept:
        _say(f"kept your local edits in: {', '.join(kept)} (`git diff` and `git diff --cached` "
             "show them against the new commit)")
    return EXIT_PASS


def _has_commit(repo: Path, commit: str) -> bool:
    return bool(git(["rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}"], repo,
                    check=False).strip())


def reject_main(argv: list[str]) -> int:
    p = _Parser(prog="agent-node reject",
                description="Drop a run: its branch and anything left of its checkout.")
    p.add_argument("run_id")
    args = p.parse_args(argv)
    try:
        run_dir, s = _open_run(args.run_id)
        removed = []
        tested = str(s.get("commit") or "")
        if tested:  # only the branch this run made, and only while it holds the run's commit
            dropped = drop_run_branch(Path(s["repo"]), f"studio-coder/{run_dir.name}", tested)
            removed += [dropped] if dropped else []
        leftover = checkouts_root() / run_dir.name  # a run killed mid-way leaves its checkout
        if leftover.exists():
            shutil.rmtree(leftover)
            removed.append(f"checkout {leftover}")
        _record(run_dir, Rejected(removed=removed))
    except UsageError as e:
        _say(f"agent-node reject: {e}")
        return EXIT_USAGE
    except (RefusedError, GitError, RecordTampered, RecordKeyError) as e:
        _say(f"agent-node reject: {e}")
        return EXIT_FAIL
    _say(f"rejected run {s['run_id']}: {'; '.join(removed) or 'nothing left to remove'}")
    return EXIT_PASS


def _record(run_dir: Path, event: Event) -> None:
    record = RunRecord(run_dir)
    try:
        record.emit(event)
    finally:
        record.close()
        write_report(run_dir)


def runs_main(argv: list[str]) -> int:
    p = _Parser(prog="agent-node runs", description="List runs and their verdicts.")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    runs = list_runs()
    for r in runs:  # a run killed before its `finally` gets its report rebuilt here
        run_dir = Path(r["run_dir"])
        report, events = run_dir / "report.html", run_dir / "events.jsonl"
        if not report.exists() or report.stat().st_mtime < events.stat().st_mtime:
            write_report(run_dir)
    if args.json:
        print(json.dumps(runs))
        return EXIT_PASS
    if not runs:
        _say(f"no runs yet under {studio_home() / 'runs'}")
        return EXIT_PASS
    for r in runs:
        task = " ".join(str(r.get("task") or "").split())
        print(f"{r['run_id']}  {r['verdict']:<11} {r['state'] or '-':<8} "
              f"rounds {r['rounds']}  {task[:60]}")
    return EXIT_PASS
