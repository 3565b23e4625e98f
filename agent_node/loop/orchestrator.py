"""The orchestrator: classify → [spec] → brief → fresh coder → gate → review → fix rounds.

    summary = run_task("make the header sticky", Path("~/site"), model=model, cfg=cfg)
    summary["verdict"]  # "pass" | "fail" | "interrupted" | "error"

Nothing reaches the user's branch here: the coder works in a private checkout of its own
(`checkout.py`), every command from its side runs in the sandbox, the gate tests one commit of
that checkout, and only that commit comes back, as the run's branch. The record (events.jsonl,
diffs, test logs, report.html), which the sandbox cannot see, is written as the run goes and
again in `finally`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Literal

from agent_node import activity, prompts
from agent_node.config import AgentConfig
from agent_node.events import (
    Classified,
    CoderDone,
    Error,
    Note,
    RoundStarted,
    RoundVerdict,
    RunStarted,
    RunVerdict,
    ScreenEvent,
    Setup,
    SpecWritten,
    Stage,
    VisualQAChecked,
)
from agent_node.loop import examples as task_examples
from agent_node.loop import rename, restyle
from agent_node.loop.between import Between
from agent_node.loop.checkout import Checkout, checkouts_root
from agent_node.loop.coder import CoderChecks, CoderLimits, CoderResult, model_call, run_coder
from agent_node.loop.context import FILES_BRIEF_CHARS, repo_context, shown_sources
from agent_node.loop.errors import StructuredOutputError, UnfinishedJSON, UsageError
from agent_node.loop.files_coder import run_files_coder
from agent_node.loop.gate import (
    GateResult,
    QACheck,
    detect_test_cmd,
    gate_event,
    run_gate,
    run_tests,
    tail,
)
from agent_node.loop.names import (
    Unbound,
    Unset,
    unbound_in_change,
    unset_in_change,
)
from agent_node.loop.repo import current_branch, dirty_paths, head_commit, repo_root
from agent_node.loop.review import Reviewer, decide_round
from agent_node.loop.stale import broken_by_change
from agent_node.loop.structured import REVIEW, SPEC, ask_json
from agent_node.loop.visual import serve_directory
from agent_node.model import Model, Reply
from agent_node.report import write_report
from agent_node.runs import Listener, RunRecord, make_private, summarize
from agent_node.sandbox import Sandbox, SandboxUnavailable
from agent_node.schemas import classify_schema
from agent_node.tools.bash import checkout_git

ToolsFactory = Callable[[Path], dict[str, Any]]
MAX_FILES_LISTED = 200
TESTS_SHOWN_CHARS = 2_500  # the end of a test run's output, as the coder is shown it


def default_tools(cfg: AgentConfig, sandbox: Sandbox) -> ToolsFactory:
    def make(root: Path) -> dict[str, Any]:
        from agent_node.tools import make_tools

        return dict(make_tools(root, timeout_s=cfg.loop.tool_timeout_s,
                               output_limit=cfg.loop.output_limit, sandbox=sandbox))

    return make


def sandbox_for(cfg: AgentConfig) -> Sandbox:
    """The sandbox the coder's commands run in; UsageError when there is none and the config
    does not opt out (fail closed)."""
    try:
        return Sandbox.from_config(cfg.sandbox, "" if cfg.source == "built-in defaults"
                                   else cfg.source)
    except SandboxUnavailable as e:
        raise UsageError(str(e)) from None


def run_task(
    task: str,
    repo: Path,
    *,
    model: Model,
    cfg: AgentConfig | None = None,
    coder_model: Model | None = None,
    spec: list[str] | None = None,
    test_cmd: str | None = None,
    qa: QACheck | None = None,
    tools_factory: ToolsFactory | None = None,
    home: Path | None = None,
    listeners: Iterable[Listener] = (),
    refuse_dirty: bool = False,
) -> dict[str, Any]:
    """Run one task to a verdict; returns the run's summary (see `runs.summarize`).

    `model` classifies, writes the spec and reviews; `coder_model` (default: `model`) codes.
    `spec` skips writing one (and makes the task UI work). `qa` checks a served page against
    the spec. Raises UsageError before anything is created when `repo` is not usable, or when
    no sandbox is available and the config does not opt out of one.
    """
    cfg = cfg or AgentConfig()
    task = task.strip()
    if not task:
        raise UsageError("the task is empty; say what to do: agent-node run \"TASK\" --repo DIR")
    root = repo_root(repo.expanduser().resolve())
    dirty = dirty_paths(root)
    if dirty and refuse_dirty:
        raise UsageError(f"{root} has {len(dirty)} uncommitted file(s) ({', '.join(dirty[:5])}); "
                         "commit or stash them, or run without --refuse-dirty to base on HEAD")
    sandbox = sandbox_for(cfg)
    try:
        overridden = prompts.overrides()  # a stray file in the user's prompts folder: say so now
    except prompts.PromptError as e:
        raise UsageError(str(e)) from None
    record = RunRecord.create(home)
    record.listeners.extend(listeners)
    for m in {id(model): model, id(coder_model): coder_model}.values():
        if getattr(m, "on_progress", False) is None:  # a GrpcModel's hook, not yet taken
            setattr(m, "on_progress", activity.call_progress)  # noqa: B010
    run = _Run(record, task, root, dirty, model, coder_model or model, cfg, spec, test_cmd, qa,
               tools_factory or default_tools(cfg, sandbox), sandbox, home)
    if overridden:
        record.emit(Note(text=f"prompts from {prompts.user_dir()} replace the built-in ones: "
                         + ", ".join(overridden)))
    try:
        with activity.reporting(lambda e: _on_activity(record, e)):
            run.go()
    except KeyboardInterrupt:
        record.emit(RunVerdict(verdict="interrupted", rounds=run.round,
                               reasons=["interrupted (Ctrl-C)"], commit="", run_branch=""))
        raise
    except BaseException as e:
        record.emit(Error(error=f"{type(e).__name__}: {e}"))
        record.emit(RunVerdict(verdict="error", rounds=run.round,
                               reasons=[f"{type(e).__name__}: {e}"], commit="", run_branch=""))
        raise
    finally:
        shutil.rmtree(run.checkout.dir, ignore_errors=True)  # the run's branch holds its commit
        record.close()
        write_report(record.dir)
    return summarize(record.dir)


def _on_activity(record: RunRecord, event: ScreenEvent) -> None:
    """Stages go into the record; a call's in-flight progress only to the listeners."""
    if isinstance(event, Stage):
        record.emit(event)
        return
    for listener in record.listeners:
        listener(event)


class _Run:
    def __init__(self, record: RunRecord, task: str, root: Path, dirty: list[str], model: Model,
                 coder_model: Model, cfg: AgentConfig, spec: list[str] | None,
                 test_cmd: str | None, qa: QACheck | None, tools_factory: ToolsFactory,
                 sandbox: Sandbox, home: Path | None) -> None:
        self.record, self.task, self.root, self.dirty = record, task, root, dirty
        self.model, self.coder_model, self.cfg = model, coder_model, cfg
        self.spec, self.test_cmd, self.qa, self.tools_factory = spec, test_cmd, qa, tools_factory
        self.sandbox = sandbox
        self.emit = record.emit
        # Out of the record's folder: the coder's sandbox sees this checkout and nothing of it.
        self.checkout = Checkout(checkouts_root(home) / record.run_id, "run")
        self.run_branch = f"studio-coder/{record.run_id}"
        self.tested = ""  # the last commit the gate tested; the one approve can bring over
        self.start = ""  # the tree the next round's coder starts from, when not `tested`
        self.round = 0  # the round running now (or the last one)
        self.examples: list[task_examples.Example] = []  # the task's own, to check ([loop])

    def go(self) -> None:
        base = head_commit(self.root)
        self.emit(RunStarted(
            task=self.task, repo=str(self.root), base=base, branch=current_branch(self.root),
            run_branch=self.run_branch, checkout=str(self.checkout.work), dirty=self.dirty,
            pid=os.getpid(),
            models={"orchestrator": self.model.name, "coder": self.coder_model.name},
            sandbox=self.sandbox.describe()))
        if not self.sandbox.confined:
            self.emit(Note(text=f"the coder's commands run WITHOUT a sandbox "
                           f"({self.sandbox.unconfined_reason}): they can reach your "
                           "repository, your files, the network and this record"))
        if self.dirty:
            self.emit(Note(text=f"{len(self.dirty)} uncommitted file(s) in {self.root} are not "
                           f"part of this run (it is based on HEAD {base[:12]}); they are left "
                           "as they are"))
        self.checkout = Checkout.create(self.root, self.checkout.dir, base)
        between = Between(self.checkout, self.emit, self.record.run_id, self.cfg.loop,
                          self.tests_now)
        work = self.checkout.work
        files = self.checkout.files()

        with activity.stage("classify"):
            kind = self.classify(files)
        spec = self.spec
        if spec is None and kind.ui:
            with activity.stage("spec"):
                spec = self.write_spec()
        elif spec is not None:
            self.emit(SpecWritten(statements=spec, source="file"))
        page = self.cfg.loop.ui_page or kind.page
        if spec and not page and (work / "index.html").exists():
            page = "index.html"
        test_cmd = self.test_cmd or self.cfg.loop.test_cmd or detect_test_cmd(work)
        self.emit(Setup(test_cmd=test_cmd, page=page, ui=bool(spec),
                        asks_for_change=kind.asks_for_change))

        failures: list[str] = []
        start_tests = ""
        if test_cmd and self.cfg.loop.tests_first:
            with activity.stage("tests", when="start"):
                start_tests = self.tests_now(test_cmd, "before any change")[1]
        if self.cfg.loop.task_examples and kind.asks_for_change:
            self.examples = self.find_examples(files)
        verdict: Literal["fail", "pass"] = "fail"
        reasons, last_round = ["no round ran"], 0
        stalled = ""
        again = False  # this round starts from the start (retry_from_start)
        for round_no in range(1, self.cfg.loop.max_rounds + 1):
            last_round = self.round = round_no
            shown = repo_context(work, files, self.task, self.brief_chars())
            brief = prompts.render(
                "loop/brief", task=self.task, files=files[:MAX_FILES_LISTED],
                files_more=len(files) if len(files) > MAX_FILES_LISTED else 0,
                shown=shown.whole, outlines=shown.outlines,
                start_tests=start_tests if round_no == 1 or again else "",
                test_cmd=test_cmd, asks_for_change=kind.asks_for_change, spec=spec or [],
                page=page, failures=failures, round=round_no, again=again,
                files_form=files_example(shown.whole) if self.cfg.loop.coder == "files"
                else "")
            self.record.write_text(f"round-{round_no}/brief.md", brief)
            self.emit(RoundStarted(round=round_no, brief_file=f"round-{round_no}/brief.md"))
            with activity.stage("coder", round_no=round_no):
                coder = self.code(round_no, brief, base, test_cmd, kind.asks_for_change,
                                  shown.whole, again)
            self.record.write_text(f"round-{round_no}/coder.json",
                                   json.dumps(coder.messages, indent=1, default=str))
            self.emit(CoderDone(round=round_no, report=coder.report, turns=coder.turns,
                                tokens=coder.tokens, stopped=coder.stopped))

            with activity.stage("gate", round_no=round_no):
                gate = self.gate(round_no, base, test_cmd, kind.asks_for_change, spec, page)
            passed, reasons, fixes, review, tests_ok = decide_round(
                gate, self.reviewer(round_no), task=self.task, spec=spec, report=coder.report,
                test_cmd=test_cmd)
            verdict = "pass" if passed else "fail"
            self.emit(RoundVerdict(round=round_no, verdict=verdict, reasons=reasons,
                                   fixes=fixes, review=review))
            if passed:
                break
            nxt = between.after(round_no, base, gate, fixes, tests_ok, test_cmd)
            failures, self.start, again, stalled = nxt.failures, nxt.start, nxt.again, nxt.stalled
            seen = [f for f in gate.failures if f.startswith("visual QA")]
            if self.cfg.loop.restyle and seen and not (again or stalled) \
                    and round_no < self.cfg.loop.max_rounds:
                restyle.before_next_round(self.coder_model, self.task, work, page,
                                          self.checkout.files(), seen, self.emit, round_no)
            if stalled:
                break
        if stalled:
            reasons = [stalled, *reasons]
        elif verdict == "fail" and last_round == self.cfg.loop.max_rounds:
            reasons = [f"still failing after {last_round} round(s) (loop.max_rounds = "
                       f"{self.cfg.loop.max_rounds})", *reasons]
        if self.tested:  # the only commit that leaves the checkout, as the run's own branch
            self.checkout.publish(self.root, self.tested, self.run_branch)
        self.emit(RunVerdict(verdict=verdict, rounds=last_round, reasons=reasons,
                             commit=self.tested,
                             run_branch=self.run_branch if self.tested else ""))

    # -- steps ---------------------------------------------------------------------------------

    def brief_chars(self) -> int:
        chars = self.cfg.loop.brief_chars
        return (chars or FILES_BRIEF_CHARS) if self.cfg.loop.coder == "files" else chars

    def code(self, round_no: int, brief: str, base: str, test_cmd: str, asks_for_change: bool,
             shown: list[tuple[str, str]], again: bool = False) -> CoderResult:
        """One round's fresh coder, in the form `[loop] coder` names; `again`: the round
        starts from the start (retry_from_start), so the files coder samples its first reply."""
        loop = self.cfg.loop
        limits = CoderLimits(loop.coder_max_turns, loop.coder_max_tokens, loop.coder_wall_s,
                             loop.coder_reply_tokens or None, self.cfg.inference.timeout_s)
        # a fix round must change something since the tree the gate judged (less any test
        since = self.start or self.tested or base  # edits put back)
        checks = self.coder_checks(since, test_cmd, asks_for_change)
        tools = self.tools_factory(self.checkout.work)
        if loop.coder == "files":
            if test_cmd:  # the form's own loop: write, test, and again while they fail
                checks.tests = lambda: self.tests_now(test_cmd, base=base)
            if asks_for_change:  # and a reply that changes nothing (but blank lines and
                # spaces at line ends) is sent back at once
                checks.changed = lambda: self.checkout.changed(since)
            checks.diff = lambda: self.checkout.changes(since, "--numstat")
            if loop.define_missing:  # names the round's lines read and no file defines, and
                checks.missing = lambda: self.missing(base)  # attributes no class sets, and
                checks.renamed = lambda: rename.carry(  # a rename's uses it missed
                    self.checkout.work, self.checkout.changes(base), self.emit, round_no)
            if self.examples:  # the task's own, which a reply got wrong
                checks.examples = self.examples_now
            sources = shown_sources(shown)
            return run_files_coder(
                self.coder_model, prompts.render("loop/coder_files_system"), brief, tools,
                limits, emit=self.emit, round_no=round_no, root=self.checkout.work,
                known=self.checkout.files(),
                sources=sources, checks=checks,
                retry={"temperature": loop.retry_temperature, "top_p": 0.8}
                if loop.retry_temperature > 0 else None, task=self.task,
                keep_definitions=loop.keep_definitions, rewrite_named=loop.rewrite_named,
                sample_first=again)
        return run_coder(self.coder_model, prompts.render("loop/coder_system"), brief, tools,
                         limits, emit=self.emit, round_no=round_no, checks=checks)

    def find_examples(self, files: list[str]) -> list[task_examples.Example]:
        """The task's examples that the code before the change does not already give, said in
        the record."""
        work = self.checkout.work
        found = task_examples.find(self.task, work, files)
        if not found:
            return []
        kept, dropped = task_examples.usable(found, work, self.sandbox,
                                             read_only=checkout_git(work))
        self.emit(Note(text=task_examples.said(kept, dropped)))
        return kept

    def examples_now(self) -> list[str]:
        """What the task's examples say of the coder's checkout as it stands: each one it gets
        wrong, with what it gave."""
        work = self.checkout.work
        return [o.failure() for o in task_examples.run(
            self.examples, work, self.sandbox, read_only=checkout_git(work)) if not o.holds]

    def missing(self, base: str) -> list[Unbound | Unset]:
        """What the change since `base` reads and nothing binds, that the loop can put in: names
        with one import to write (names.Unbound.import_line), names no file of the checkout
        defines (one that two files define is the coder's import to choose), then attributes
        their class never sets."""
        work, patch = self.checkout.work, self.checkout.changes(base)
        names: list[Unbound | Unset] = [u for u in unbound_in_change(work, patch)
                                        if u.import_line() or not (u.defined_in or u.stdlib)]
        return names + list(unset_in_change(work, patch))

    def tests_now(self, test_cmd: str, when: str = "after this change",
                  base: str = "") -> tuple[bool, str]:
        """The test command on the coder's checkout as it stands (in the sandbox, its git
        read-only), as the coder is shown it: passed or not, and the end of the output. With
        `base`, the gate's names checks of the change since `base` too: a read of a name nothing
        defines, or a use elsewhere of a name the change took away, fails as the gate would fail
        it (names.py, stale.py)."""
        work = self.checkout.work
        loop = self.cfg.loop  # bounded as the gate bounds it, and as any coder command is
        t = run_tests(test_cmd, work, min(loop.test_timeout_s, loop.tool_timeout_s),
                      sandbox=self.sandbox,
                      output_limit=self.cfg.loop.output_limit, read_only=checkout_git(work))
        text = prompts.render(
            "loop/tests_run", when=when, passed=t.passed, cmd=test_cmd,
            exit="timed out" if t.timed_out else f"exit {t.exit_code}",
            output=tail(t.output.strip(), TESTS_SHOWN_CHARS))
        if not base:
            return t.passed, text
        unbound = broken_by_change(work, self.checkout.changes(base))
        if unbound:
            text += "\n" + prompts.render("loop/names_unbound", failures=unbound)
        wrong = self.examples_now() if self.examples else []
        if wrong:
            text += "\n" + prompts.render("loop/examples_wrong", failures=wrong)
        return t.passed and not unbound and not wrong, text

    def coder_checks(self, base: str, test_cmd: str, asks_for_change: bool) -> CoderChecks:
        loop = self.cfg.loop
        return CoderChecks(
            changed=(lambda: self.checkout.changed(base)) if asks_for_change
            and loop.finish_needs_change else None,
            tests=(lambda: self.tests_now(test_cmd)) if test_cmd and loop.test_after_edit
            else None,
            repeats=loop.refuse_repeats,
            first=("edit", "write") if loop.edit_first and loop.brief_chars > 0
            and asks_for_change else ())

    def ask(self, role: str, system: str, prompt: str, schema: dict[str, Any],
            round_no: int = 0) -> Any:
        """`role`'s structured call: `system`, its instructions, the same for every task (the
        node pins the KV of a system part), then `prompt`, this task's part."""
        def log(reply: Reply) -> None:
            self.emit(model_call(reply, role=role, round_no=round_no))

        messages = [{"role": "system", "content": system}, {"role": "user", "content": prompt}]
        return ask_json(self.model, messages, schema,
                        retries=self.cfg.loop.json_retries, on_reply=log,
                        max_tokens=self.cfg.loop.json_max_tokens or None, step=role,
                        budget_key="[loop] json_max_tokens",
                        timeout_s=self.cfg.inference.timeout_s)

    def reviewer(self, round_no: int) -> Reviewer:
        return Reviewer(functools.partial(self.ask, "review", prompts.render("loop/review_system"),
                                          schema=REVIEW, round_no=round_no),
                        self.unfinished, self.cfg.loop, round_no)

    def unfinished(self, e: StructuredOutputError, fallback: str) -> None:
        """Say plainly that a structured call gave nothing usable, and what the run does now."""
        note = Note(text=f"{e}; {fallback}")
        if isinstance(e, UnfinishedJSON):
            note = dataclasses.replace(note, step=e.step, model=e.model, tokens=e.tokens,
                                       ran_out=e.why)
        self.emit(note)

    def classify(self, files: list[str]) -> Classified:
        if self.spec is not None:
            kind = Classified(ui=True, asks_for_change=True, page="", reason="a spec was given")
        else:
            prompt = prompts.render("loop/classify", task=self.task,
                                    files=files[:MAX_FILES_LISTED])
            try:
                kind = Classified(**self.ask("classify", prompts.render("loop/classify_system"),
                                             prompt, classify_schema(files)))
            except StructuredOutputError as e:
                fallback = "assuming a non-UI change"
                self.unfinished(e, fallback)
                kind = Classified(ui=False, asks_for_change=True, page="",
                                  reason=f"classification failed, {fallback}: {e}")
        self.emit(kind)
        return kind

    def write_spec(self) -> list[str]:
        source = "model"
        try:
            statements = list(self.ask("spec", prompts.render("loop/spec_system"),
                                       prompts.render("loop/spec", task=self.task),
                                       SPEC)["statements"])
        except StructuredOutputError as e:
            statements = ["no horizontal overflow at desktop or phone width", "no console errors"]
            self.unfinished(e, "the spec could not be written; using a minimal one")
            source = "minimal (the model's spec was unusable)"
        self.emit(SpecWritten(statements=statements, source=source))
        return statements

    def gate(self, round_no: int, base: str, test_cmd: str, asks_for_change: bool,
             spec: list[str] | None, page: str) -> GateResult:
        # The checkout as it stands becomes one commit; the tests run on exactly its files.
        co = self.checkout
        commit = co.snapshot(base, f"studio-coder run {self.record.run_id} round {round_no}: "
                                   f"{self.task[:60]}")
        tree = co.export(commit, co.dir / "gate")
        qa_dir = self.record.dir / f"round-{round_no}" / "qa"
        serving = serve_directory(tree) if spec and page else nullcontext("")
        with serving as url:
            gate = run_gate(
                tree, co.diff(base, commit), test_cmd=test_cmd,
                timeout_s=self.cfg.loop.test_timeout_s, asks_for_change=asks_for_change,
                output_limit=self.cfg.loop.output_limit, ui_url=f"{url}/{page}" if url else "",
                spec=spec, qa=self.qa, qa_dir=qa_dir, sandbox=self.sandbox,
                examples=self.examples)
        if qa_dir.exists():
            make_private(qa_dir)  # screenshots the browser wrote
        self.tested = commit
        diff_file = self.record.write_text(f"round-{round_no}/diff.patch", gate.diff.patch)
        test_log = ""
        if gate.tests:
            log = self.record.write_text(f"round-{round_no}/tests.log", gate.tests.output)
            test_log = str(log.relative_to(self.record.dir))
        self.emit(gate_event(gate, round_no=round_no, commit=commit, test_log=test_log,
                             diff_file=str(diff_file.relative_to(self.record.dir))))
        if gate.qa:
            self.emit(VisualQAChecked(
                round=round_no, passed=gate.qa.passed, note=gate.qa.note,
                failures=[dataclasses.asdict(f) for f in gate.qa.failures],
                screenshots=[_relative(str(p), self.record.dir)
                             for p in gate.qa.screenshots.values()]))
        return gate


def files_example(shown: list[tuple[str, str]]) -> str:
    """The path the whole-file form's instructions use as their example: a source file the
    brief showed (the one the task names first), so the model never copies a made-up one."""
    return next(iter(shown_sources(shown)), "path/to/file.py")


def _relative(path: str, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(root.resolve()))
    except ValueError:
        return path
