"""`agent-node run | approve | reject | runs`.

Exit codes: 0 pass / done, 1 the work failed or was refused, 2 bad usage or input,
3 the inference node is unreachable, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
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
from agent_node.loop.errors import RefusedError, UsageError
from agent_node.loop.worktree import GitError, apply_to_current_branch, remove_worktree, repo_root
from agent_node.report import write_report
from agent_node.runs import RunRecord, find_run, list_runs, summarize

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
    p = _Parser(prog="agent-node run", description="Run a coding task in a private worktree.")
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
    try:
        repo_root(Path(args.repo).expanduser().resolve())
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
    from agent_node.loop.orchestrator import run_task
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
    try:
        run_dir = find_run(run_id)
    except ValueError as e:
        raise UsageError(str(e)) from None
    summary = summarize(run_dir)
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


def approve_main(argv: list[str]) -> int:
    p = _Parser(prog="agent-node approve", description="Commit a run's change onto your branch.")
    p.add_argument("run_id")
    p.add_argument("--force", action="store_true",
                   help="approve a run that did not pass; keep your local edits in touched files")
    args = p.parse_args(argv)
    try:
        run_dir, s = _open_run(args.run_id)
        if s["verdict"] != "pass" and not args.force:
            raise RefusedError(f"run {s['run_id']} did not pass (verdict: {s['verdict']}); "
                               f"see {run_dir / 'report.html'}, or pass --force to approve anyway")
        repo = Path(s["repo"])
        commit, kept = apply_to_current_branch(repo, s["base"], s["run_branch"],
                                               _commit_message(s), force=args.force)
        removed = remove_worktree(repo, Path(s["worktree"]), s["run_branch"])
        _record(run_dir, "approved", commit=commit, kept_local=kept, removed=removed)
    except UsageError as e:
        _say(f"agent-node approve: {e}")
        return EXIT_USAGE
    except (RefusedError, GitError) as e:
        _say(f"agent-node approve: {e}")
        return EXIT_FAIL
    _say(f"approved run {s['run_id']}: commit {commit[:12]} on {repo}")
    if kept:
        _say(f"kept your local edits in: {', '.join(kept)} (`git diff` shows them)")
    return EXIT_PASS


def reject_main(argv: list[str]) -> int:
    p = _Parser(prog="agent-node reject", description="Drop a run's worktree and branch.")
    p.add_argument("run_id")
    args = p.parse_args(argv)
    try:
        run_dir, s = _open_run(args.run_id)
        removed = remove_worktree(Path(s["repo"]), Path(s["worktree"]), s["run_branch"])
        _record(run_dir, "rejected", removed=removed)
    except UsageError as e:
        _say(f"agent-node reject: {e}")
        return EXIT_USAGE
    except (RefusedError, GitError) as e:
        _say(f"agent-node reject: {e}")
        return EXIT_FAIL
    _say(f"rejected run {s['run_id']}: removed {', '.join(removed) or 'nothing (already gone)'}")
    return EXIT_PASS


def _record(run_dir: Path, kind: str, **fields: Any) -> None:
    record = RunRecord(run_dir)
    try:
        record.emit(kind, **fields)
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
