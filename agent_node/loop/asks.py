"""What the whole-file coder asks for alone, outside its conversation, and puts in itself.

- `define_missing` ([loop] define_missing): the one import a name the change reads needs, put
  in; a name nothing defines, or an attribute its class never sets, asked for alone (define.py).
- `rewrite_named` ([loop] rewrite_named): a reply that changed nothing gets the functions the
  task names asked for afresh, their bodies left out (rewrite.py); when the repository defines
  none of them, the new functions the task names are asked for alone (`add_named`, added.py);
  and once the checks pass, the named functions the change left as they were while it changed
  others are asked for afresh, kept only if the checks still pass (`complete_named`).
- `rewrite_for_examples` ([loop] task_examples): a change that gets the task's own examples wrong
  gets those functions asked for afresh, told which examples, and kept only when more are right.

Each says in the record what it asked and what it put in, and returns what the coder is told of
it ("" when nothing was put in). The code is the model's; only its place is the loop's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent_node.events import Note
from agent_node.loop import added, define, rewrite
from agent_node.loop.coder import CoderChecks, Emit, model_call, write_file
from agent_node.loop.context import read_file
from agent_node.loop.names import Unbound, Unset
from agent_node.loop.pysource import add_import
from agent_node.model import Model


def define_missing(model: Model, task: str, missing: list[Unbound | Unset],
                    tools: dict[str, Any], root: Path, emit: Emit, round_no: int) -> str:
    """Put in the one import of each name the change reads with one to write (names.py), then
    ask for each name nothing defines (and each attribute a class reads and never sets), alone,
    and put in what comes back (define.py). What the coder is told of it: one line per name;
    "" if none was put in."""
    said = []
    asked = {(u.path, getattr(u, "owner", ""), u.name): u for u in missing}
    imports = {key: line for key, u in asked.items()
               if isinstance(u, Unbound) and (line := u.import_line())}
    for key, line in imports.items():
        b, source = asked[key], read_file(root, asked[key].path)
        new = add_import(source, line) if source else ""
        if not new:
            continue
        _, ok, output = write_file(tools, root, b.path, new, emit, round_no)
        emit(Note(text=f"{b.path}:{b.line} reads `{b.name}`, never imported: `{line}` put at "
                  f"its top" + ("" if ok else f", and not written: {output}"), round=round_no))
        if ok:
            said.append(f"{b.path}: `{b.name}` was read and never imported; `{line}` is now at "
                        f"the top of {b.path}. Keep it when you write the file again.")
    for u in [u for key, u in asked.items() if key not in imports][:define.MAX_ASKED]:
        source = read_file(root, u.path)
        if not source:
            continue
        got = define.ask(model, task, u, source)
        emit(model_call(got.reply, role="coder", round_no=round_no))
        member = isinstance(u, Unset)
        what = f"`{u.owner}.{u.name}`" if isinstance(u, Unset) else f"`{u.name}`"
        if not got.source:
            why = "its class never sets it" if member else "nothing defines it"
            emit(Note(text=f"asked for the definition of {what} alone ({u.path}:{u.line} "
                      f"reads it, and {why}): {got.why}", round=round_no))
            continue
        _, ok, output = write_file(tools, root, u.path, got.source, emit, round_no)
        if not ok:
            emit(Note(text=f"the definition of {what} was not written: {output}",
                      round=round_no))
        elif isinstance(u, Unset):
            said.append(f"{u.path}: `{u.owner}` read `self.{u.name}` and never set it; asked "
                        f"for it alone, you wrote it, and it is now in `{u.owner}`'s body. "
                        "Keep it when you write the file again.")
        else:
            said.append(f"{u.path}: `{u.name}` was not defined anywhere; asked for it alone, "
                        f"you wrote its definition, and it is now in {u.path}, after the "
                        "imports. Keep it when you write the file again.")
    return "\n".join(said)


def rewrite_named(model: Model, task: str, root: Path, paths: list[str], tools: dict[str, Any],
                   emit: Emit, round_no: int, sampling: dict[str, Any] | None = None) -> str:
    """Ask for the functions the task names afresh, their bodies left out, and put what comes
    back in their place (rewrite.py); `sampling` None: greedy. What the coder is told of it; ""
    if nothing was put in."""
    path, names, source = _named_source(task, root, paths)
    if not source:
        return add_named(model, task, root, paths, tools, emit, round_no, sampling)
    got = rewrite.ask(model, task, path, names, source, sampling)
    what = ", ".join(f"`{n}`" for n in names)
    return _put_in(got, tools, root, emit, round_no,
                   f"the reply changed nothing; asked for {what} afresh, their bodies left out",
                   f"the reply changed nothing; {what} asked for afresh, their bodies left out, "
                   f"and put in {path}",
                   f"{path}: your reply changed nothing; asked to write {what} afresh from "
                   f"their signatures, you wrote them, and they are now in {path}.")


def add_named(model: Model, task: str, root: Path, paths: list[str], tools: dict[str, Any],
              emit: Emit, round_no: int, sampling: dict[str, Any] | None = None) -> str:
    """Ask for the new functions the task names alone, and put what comes back at the end of
    their class or file (added.py); `sampling` None: greedy. What the coder is told of it; ""
    if nothing was put in."""
    want = added.wanted(task, root, list(dict.fromkeys(paths)))
    source = read_file(root, want.path) if want else ""
    if want is None or not source:
        return ""
    got = added.ask(model, task, want, source, sampling)
    what = ", ".join(f"`{n}`" for n in want.names)
    where = f"`{want.owner}` in {want.path}" if want.owner else want.path
    return _put_in(got, tools, root, emit, round_no,
                   f"the reply changed nothing; asked for {what}, new in {where}, alone",
                   f"the reply changed nothing; {what} asked for alone and put at the end of "
                   f"{where}",
                   f"{want.path}: your reply changed nothing; asked to write {what} alone, you "
                   f"wrote them, and they are now at the end of {where}.")


def _put_in(got: rewrite.Rewritten, tools: dict[str, Any], root: Path, emit: Emit,
            round_no: int, asked: str, done: str, told: str) -> str:
    """Record an ask's reply and write the file it gave (`got.source`, when it gave one): the
    record says `asked` and why nothing was put in, or `done`; the coder is told `told`, or ""
    when nothing was put in."""
    emit(model_call(got.reply, role="coder", round_no=round_no))
    if not got.source:
        emit(Note(text=f"{asked}: {got.why}", round=round_no))
        return ""
    _, ok, output = write_file(tools, root, got.path, got.source, emit, round_no)
    if not ok:
        emit(Note(text=f"{asked}: not written: {output}", round=round_no))
        return ""
    emit(Note(text=done, round=round_no))
    return told


def named_at_start(task: str, root: Path, paths: list[str]) -> dict[str, str]:
    """The functions the task names as the round found them: `path:name` -> source."""
    path, names, source = _named_source(task, root, paths)
    return {f"{path}:{n}": text for n, text in rewrite.function_sources(source, names).items()}


def complete_named(model: Model, task: str, root: Path, paths: list[str], tools: dict[str, Any],
                   emit: Emit, round_no: int, before: dict[str, str], checks: CoderChecks,
                   sampling: dict[str, Any] | None = None) -> None:
    """The checks pass, and the change rewrote some of the functions the task names but left
    others as the round found them (`before`: `named_at_start`): the 0.5B made `withdraw` raise
    for an amount of zero and left `deposit`, which the task names beside it, as it was. Ask for
    those afresh, their bodies left out (rewrite.py), and keep what comes back only if the
    checks still pass with it; else the file goes back as the change left it."""
    path, names, source = _named_source(task, root, paths)
    now = rewrite.function_sources(source, names) if source else {}
    same = tuple(n for n in now if before.get(f"{path}:{n}") == now[n])
    if not same or len(same) == len(now) or checks.tests is None:
        return
    got = rewrite.ask(model, task, path, same, source, sampling)
    emit(model_call(got.reply, role="coder", round_no=round_no))
    what = ", ".join(f"`{n}`" for n in same)
    asked = (f"the checks pass, and the change left {what}, which the task names, as it was; "
             f"asked for afresh, the body left out")
    if not got.source:
        emit(Note(text=f"{asked}: {got.why}", round=round_no))
        return
    _, ok, output = write_file(tools, root, path, got.source, emit, round_no)
    if ok and checks.tests()[0]:
        emit(Note(text=f"{asked}: put in {path}, and the checks still pass", round=round_no))
        return
    write_file(tools, root, path, source, emit, round_no)
    emit(Note(text=f"{asked}: " + (f"not written: {output}" if not ok else
                                   f"the checks fail with it, so {path} stays as the change "
                                   "left it"), round=round_no))


def _named_source(task: str, root: Path, paths: list[str]) -> tuple[str, tuple[str, ...], str]:
    """The file defining the functions the task names, those names, and the file as it is now
    ("" when there is none to ask for): what both asks afresh start from (rewrite.py)."""
    path, names = rewrite.named_functions(task, root, list(dict.fromkeys(paths)))
    return path, names, read_file(root, path) if path else ""


def rewrite_for_examples(model: Model, task: str, root: Path, paths: list[str],
                          tools: dict[str, Any], emit: Emit, round_no: int, wrong: list[str],
                          checks: CoderChecks, samplings: list[dict[str, Any] | None]) -> str:
    """The reply got the task's examples wrong (`wrong`): ask for the functions the task names
    afresh, their bodies left out and those examples said, once per entry of `samplings` (None:
    greedy) until what comes back gets them all right, with the imports it needs put in ([loop]
    define_missing). The version that gets the fewest wrong is kept if it gets fewer wrong than
    the reply did; else the reply's file goes back. What the coder is told; "" if none kept."""
    path, names, source = _named_source(task, root, paths)
    if not source:
        return ""
    what = ", ".join(f"`{n}`" for n in names)
    best, fewest, why = "", wrong, ""
    for sampling in samplings:
        got = rewrite.ask(model, task, path, names, source, sampling, wrong)
        emit(model_call(got.reply, role="coder", round_no=round_no))
        if not got.source:
            why = got.why
            continue
        _, ok, output = write_file(tools, root, path, got.source, emit, round_no)
        if not ok:
            why = f"not written: {output}"
            continue
        if checks.missing is not None:
            define_missing(model, task, [m for m in checks.missing() if m.path == path], tools,
                            root, emit, round_no)
        still = checks.examples() if checks.examples else []
        if len(still) < len(fewest):
            best, fewest = read_file(root, path), still
        if not still:
            break
    asked = f"{what} asked for afresh {len(samplings)} time(s) at most, their bodies left out"
    if not best:
        write_file(tools, root, path, source, emit, round_no)
        emit(Note(text=f"the change got the task's examples wrong; {asked}: none got more of "
                  f"them right, so {path} stays as the reply wrote it"
                  + (f" (last: {why})" if why else ""), round=round_no))
        return ""
    if read_file(root, path) != best:
        write_file(tools, root, path, best, emit, round_no)
    emit(Note(text=f"the change got the task's examples wrong; {asked}: put in {path} "
              f"({len(wrong) - len(fewest)} of {len(wrong)} now right)", round=round_no))
    return (f"{path}: your change got the task's examples wrong; asked to write {what} afresh "
            f"from their signatures, you wrote them, and they are now in {path}.")
