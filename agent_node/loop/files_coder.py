"""The coder in whole-file form: each reply rewrites the files to change, and no tools are called.

    [loop] coder = "files"      # the default is "tools" (coder.py)

aider's "whole" edit format, for models too small to drive tools: the brief shows the files
(`[loop] brief_chars`), and the model answers the way it was trained to, with each changed file's
path on a line and its whole new content in a fenced block. The loop writes those files (through
the `write` tool, so its path checks hold and the record shows each write), runs the test command
and, while the tests fail and turns remain, shows the model their output and asks again. A reply
whose tests pass ends the round; so does a reply with no file in it, after one reminder. A file
given back exactly as it was is not written, and while the task's change is still missing (a
diff of blank lines and line-end spaces is none) the model is told so before any test runs.
Nor is a Python file written that would not compile where it compiles as it stands: the model is
told the line and why, and the checkout keeps the file's last good version (both Qwen coders
copied the `+`/`-` marks of a diff into files they wrote). After each reply the model is told
which files the round has changed so far, by how many lines, and not shown the diff itself.
A greedy small model told its reply was wrong gives the same reply again, so `retry` (from
`[loop] retry_temperature`) samples every reply after a round's first, and the first too in a
round that starts again from the start (`sample_first`, `[loop] retry_from_start`). Sampled,
the 1.5B still gave the same files back (bank_errors: one reply eight times over, two rounds
of four turns); with `[loop] refuse_repeats` a reply that gives back the files the reply before
it gave, path for path and byte for byte, ends the round at once (stopped "repeat"): the
checkout already holds them, the tests' verdict on it is known, and the turns left would ask
from where this did.
With `[loop] keep_definitions`, what a reply's Python file left out that the file had and the task
does not name (a method, a constant, the docstring) is put back before it is written (keep.py).
With `[loop] rewrite_named`, a reply that leaves the checkout as it was, whether it gave the files
back or gave no file at all, gets the task's functions asked for afresh, once a round (rewrite.py).
With `[loop] task_examples` too, a reply whose change gets one of the task's own examples wrong
(examples.py) has them asked for afresh the same way, told which examples it got wrong, up to
EXAMPLE_TRIES times (the run's first ask greedy, the rest sampled) until one gets them all right;
what comes back is kept only when it gets fewer of the examples wrong.
An existing test file the task does not name is not written when the reply changes or removes a
line of it (new lines, and new test files, are): the tests are what the change is checked by,
and the 0.5B bent a test's expectations to code it had left as it was (signup_email).

A path is taken from the line just before a block (`stats.py`, `**stats.py**`, `# stats.py`,
`File: stats.py:`) or from the fence's info string (```` ```python stats.py ````); a block with no
path is the one source file shown, when the brief showed only one (`sources`: the source files
it showed whole, tests left out, the ones the task names first). A block holding only a path
names the block after it, and is never a file's content. What the model writes outside the
blocks is its report.
"""

from __future__ import annotations

import difflib
import re
import time
from pathlib import Path
from typing import Any

from agent_node import prompts
from agent_node.events import Note
from agent_node.exceptions import DeadlineExceeded
from agent_node.loop import asks, keep
from agent_node.loop.coder import (
    CoderChecks,
    CoderLimits,
    CoderResult,
    Emit,
    model_call,
    write_file,
)
from agent_node.loop.context import inside, is_test_path, named_in, read_file
from agent_node.model import Model

REPLY_TOKENS = 4096  # one reply's bound when [loop] coder_reply_tokens is 0: whole files
# Asks for the task's functions afresh when a reply gets the task's examples wrong, until one
# gets them all right: the 0.5B, asked for `f_to_c` with the examples it got wrong, wrote it
# right in 1 of 3 samples (0 of 9 not told).
EXAMPLE_TRIES = 3
DIFF_MARK = re.compile(r"^[+-]")  # a line a diff marks as added or removed
FENCE = re.compile(r"^(`{3,}|~{3,})([^\n`]*)\n(.*?)\n?^\1[ \t]*$", re.M | re.S)
TESTS_KEPT = ("it is an existing test, and the tests are what your change is checked by, as they "
              "are: change the code until they pass")
PATH = re.compile(r"[\w.\-/]*\w\.[A-Za-z0-9]+|[\w.\-/]*(?:Makefile|Dockerfile)")


def parse_files(text: str, known: list[str], default: str = "") -> list[tuple[str, str]]:
    """[(path, content)] in the order written; a path written twice keeps its last content.
    `default` names a block with no path only when no block has one (an example after the
    file must not replace it)."""
    out: dict[str, str] = {}
    unnamed: list[str] = []
    named = ""  # a block holding only a path names the block after it (the 0.5B's habit)
    for m in FENCE.finditer(text):
        body = m.group(3)
        if _names_a_file(body.strip()) and "\n" not in body.strip():
            named = _path_in(body, known)
            continue
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        path = _path_in(m.group(2), known) or _path_in(before, known) or named
        named = ""
        body = body if body.endswith("\n") or not body else body + "\n"
        if path:
            out.pop(path, None)
            out[path] = body
        else:
            unnamed.append(body)
    if not out and default and unnamed:
        return [(default, unnamed[0])]
    return list(out.items())


def _path_in(line: str, known: list[str]) -> str:
    """A path named on a line: a known file first, else anything shaped like a path."""
    words = re.findall(r"[^\s`*'\":()\[\]]+", line)
    for word in words:
        if word.strip("./") in known:
            return word.strip().removeprefix("./")
    found = [w for w in words if PATH.fullmatch(w)]
    return found[-1].removeprefix("./") if found else ""


def report_of(text: str) -> str:
    """What the model wrote outside its blocks, less the lines that only name a block's file."""
    lines = [ln for ln in FENCE.sub("", text).splitlines() if not _names_a_file(ln)]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _names_a_file(line: str) -> bool:
    words = re.findall(r"[^\s`*'\":()\[\]#]+", line.removeprefix("File"))
    return len(words) == 1 and bool(PATH.fullmatch(words[0]))


def run_files_coder(
    model: Model,
    system_prompt: str,
    brief: str,
    tools: dict[str, Any],
    limits: CoderLimits,
    *,
    emit: Emit,
    round_no: int,
    root: Path,
    known: list[str],
    sources: list[str],
    checks: CoderChecks | None = None,
    retry: dict[str, Any] | None = None,
    task: str = "",
    keep_definitions: bool = False,
    rewrite_named: bool = False,
    sample_first: bool = False,
) -> CoderResult:
    """One round's coder in the whole-file form (see the module docstring). `sample_first`:
    the round's first reply and its first ask afresh are sampled too (`retry`), as in a round
    that starts again from the start (`[loop] retry_from_start`): greedy, they would be the
    first round's again."""
    checks = checks or CoderChecks()
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": system_prompt},
        {"role": "user", "content": brief},
    ]
    start = time.monotonic()
    turns = tokens = 0
    reminded = False
    report = ""
    last: tuple[tuple[str, str], ...] = ()  # the files the reply before gave
    rewrote = not rewrite_named  # the task's functions asked for afresh (rewrite.py), once
    # ... and as the round found them, for the ones a passing change leaves alone, once
    named = asks.named_at_start(task, root, sources + known) if rewrite_named else {}
    afresh = 0  # ... and how often since a reply got the task's examples wrong

    def result(stopped: str, why: str = "") -> CoderResult:
        # The coder's own words, or none: what it wrote and what the tests said are facts the
        # gate and the record have; a report of the loop's making would read as the coder's.
        note = f"({why})" if why and stopped != "finish" else ""
        return CoderResult("\n\n".join(t for t in (report, note) if t), turns, tokens, stopped,
                           messages)

    while True:
        if turns >= limits.max_turns:
            return result("max_turns", f"stopped at {limits.max_turns} turns")
        if tokens >= limits.max_tokens:
            return result("max_tokens", f"stopped at {tokens} tokens")
        if time.monotonic() - start >= limits.wall_s:
            return result("wall_time", f"stopped at {limits.wall_s:.0f} s")
        try:
            # the first reply greedy, the ones after it sampled (`retry`), each turn its seed
            sampling = {**retry, "seed": round_no * 1000 + turns} \
                if retry and (turns or sample_first) else None
            reply = model.chat(messages, max_tokens=limits.reply_tokens or REPLY_TOKENS,
                               sampling=sampling)
        except DeadlineExceeded as e:
            kept = ""
            if e.partial:  # not written (no whole reply), but kept: the round's coder.json
                messages.append({"role": "assistant", "content": e.partial})
                kept = (f"; the {len(e.partial):,} characters it had written are in the "
                        "round's coder.json")
            emit(Note(text=f"coder turn {turns + 1} ran past the stream's deadline "
                      f"([inference] timeout_s = {limits.timeout_s:.0f} s){kept}; the round goes "
                      "on to the gate with what is in the checkout", round=round_no))
            return result("deadline", "stopped at the stream's deadline")
        turns += 1
        tokens += reply.usage.completion_tokens
        emit(model_call(reply, role="coder", round_no=round_no))
        messages.append({"role": "assistant", "content": reply.text})
        files = parse_files(reply.text, known, sources[0] if len(sources) == 1 else "")
        report = report_of(reply.text) or report
        if checks.repeats and files:
            if tuple(files) == last:
                return result("repeat", f"reply {turns} gave back the files of the one before")
            last = tuple(files)
        said = ""
        if files:
            said, broken = _put(files, tools, root, task, keep_definitions, checks, emit,
                                round_no)
            if broken:  # nothing to test: the checkout is not what the reply meant
                messages.append({"role": "user", "content": prompts.render(
                    "loop/files_again", written=said, tests="")})
                continue
        unchanged = checks.changed is not None and not checks.changed()
        if not files or unchanged:
            # The checkout is as it was, whether the reply gave its files back or gave no file
            # at all (the 0.5B answered stubs with the task's own words, or with the path in an
            # empty block): the task's functions asked for afresh, once a round (rewrite.py).
            rewritten = ""
            if unchanged and not rewrote:
                rewritten = asks.rewrite_named(
                    model, task, root, sources + known, tools, emit, round_no,
                    {**retry, "seed": round_no * 1000 + 400} if retry and sample_first else None)
                rewrote = True
            if not rewritten or (checks.changed is not None and not checks.changed()):
                if files:
                    messages.append({"role": "user", "content": prompts.render(
                        "loop/files_unchanged", written=said)})
                    continue
                if reminded or reply.finish_reason == "length":
                    why = "cut off before a whole file" if reply.finish_reason == "length" \
                        else ""
                    return result("answer", why)
                reminded = True
                example = sources[0] if sources else ""
                messages.append({"role": "user", "content": prompts.render(
                    "loop/files_none", example=example, current=read_file(root, example))})
                continue
            said = "\n".join(t for t in (said, rewritten) if t)
        if checks.tests is None:
            return result("finish")
        passed, tests = checks.tests()
        if not passed and checks.missing is not None:
            put_in = asks.define_missing(model, task, checks.missing(), tools, root, emit,
                                         round_no)
            if put_in:
                said += "\n" + put_in
                passed, tests = checks.tests()
        if not passed and checks.renamed is not None and (carried := checks.renamed()):
            said += "\n" + carried
            passed, tests = checks.tests()
        wrong = checks.examples() if not passed and rewrite_named and checks.examples else []
        if wrong:  # the run's first ask greedy, the ones after it sampled, each its seed
            seeds = [None if i == 0 and afresh == 0 and round_no == 1 else
                     round_no * 1000 + 500 + 10 * afresh + i for i in range(EXAMPLE_TRIES)]
            afresh += 1
            rewritten = asks.rewrite_for_examples(
                model, task, root, sources + known, tools, emit, round_no, wrong, checks,
                [None if seed is None else {**retry, "seed": seed} for seed in seeds]
                if retry else [None])
            if rewritten:
                said += "\n" + rewritten
                passed, tests = checks.tests()
        if passed:
            if named:
                asks.complete_named(
                    model, task, root, sources + known, tools, emit, round_no, named, checks,
                    {**retry, "seed": round_no * 1000 + 700} if retry and sample_first else None)
            return result("finish", "the tests pass")
        messages.append({"role": "user", "content": prompts.render(
            "loop/files_again", written=said, tests=tests)})


def _put(files: list[tuple[str, str]], tools: dict[str, Any], root: Path, task: str,
         keep_definitions: bool, checks: CoderChecks, emit: Emit,
         round_no: int) -> tuple[str, bool]:
    """Write a reply's files: what the model is told of it, and whether a file was refused
    because it would not compile (then nothing is worth testing)."""
    put_back: list[str] = []
    if keep_definitions:  # what a whole file left out and the task never named (keep.py)
        files, put_back = _keep_definitions(files, root, task, emit, round_no)
    refused, kept = [], []
    for path, content in files:
        if _edits_a_test(root, path, content, task):
            refused.append(f"{path}: not written: {TESTS_KEPT}")
        else:
            kept.append((path, content))
    files = kept
    broken = {path: why for path, content in files if (why := _breaks(root, path, content))}
    results = [(path, False, f"{path}: not written: {broken[path]}") if path in broken
               else write_file(tools, root, path, content, emit, round_no)
               for path, content in files]
    said = "\n".join(put_back + refused + [output for _, _, output in results])
    if checks.diff is not None:
        said += "\n\n" + prompts.render("loop/files_diff", changed=_numstat(checks.diff()))
    return said, bool(broken)


def _kept_name(name: str) -> str:
    # keep.put_back reports a file's docstring as "docstring", a name no message should quote
    return "its docstring" if name == "docstring" else f"`{name}`"


def _kept_said(path: str, names: tuple[str, ...]) -> str:
    """What the coder is told of what keep.put_back put back into `path`: the definitions the
    task does not name, and the imports of names the file still reads."""
    defs = ", ".join(_kept_name(n) for n in names if not n.startswith("import "))
    imports = ", ".join(f"`{n.removeprefix('import ')}`" for n in names
                        if n.startswith("import "))
    said = [f"{path}: your file left out {defs}, which {path} had and the task does not name; "
            "put back as it was."] if defs else []
    if imports:
        said.append(f"{path} still reads {imports}, and your file dropped the import; the "
                    f"import {path} had is back.")
    return " ".join(said) + " Keep it when you write the file again."


def _keep_definitions(files: list[tuple[str, str]], root: Path, task: str, emit: Emit,
                      round_no: int) -> tuple[list[tuple[str, str]], list[str]]:
    """The reply's files with what each Python file left out put back (keep.py), and a line
    for the coder per file that had something put back."""
    defined = {path: keep.top_level_names(content) for path, content in files
               if path.endswith(".py")}
    out, said = [], []
    for path, content in files:
        old = read_file(root, path) if path.endswith(".py") else ""
        if old:
            elsewhere = frozenset().union(*(n for p, n in defined.items() if p != path))
            kept = keep.put_back(old, content, task, elsewhere)
            if kept.names:
                said.append(_kept_said(path, kept.names))
                what = ", ".join(_kept_name(n) for n in kept.names)
                emit(Note(text=f"{path}: the reply left out {what}; put back as it was",
                          round=round_no))
                content = kept.content
        out.append((path, content))
    return out, said


def _edits_a_test(root: Path, path: str, content: str, task: str) -> bool:
    """Whether writing `content` changes or removes a line of an existing test file that the
    task does not name: the tests are what the change is checked by. A new test file, and new
    lines in one, are written; blank lines and line-end spaces are not counted."""
    if not is_test_path(path) or named_in(path, task):
        return False
    old, new = (_lines(text) for text in (read_file(root, path), content))
    ops = difflib.SequenceMatcher(None, old, new, autojunk=False).get_opcodes()
    return any(op in ("replace", "delete") for op, *_ in ops)


def _lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.splitlines() if line.strip()]


def _breaks(root: Path, path: str, content: str) -> str:
    """Why writing `content` to a Python file that compiles as it stands would break it; "" when
    it would not (or the file is new, is not Python, or does not compile now either: a file in
    a newer Python than this one's is not judged)."""
    if not (path.endswith(".py") and inside(root, root / path)) \
            or _compile_error(read_file(root, path), path) is not None:
        return ""
    e = _compile_error(content, path)
    if e is None:
        return ""
    if isinstance(e, ValueError):  # a null byte
        return f"it would not compile: {e}. {path} stays as it was."
    line = (e.text or "").rstrip("\n")
    why = f"it would not compile: line {e.lineno}: {e.msg}"
    why += f": `{line.strip()}`" if line.strip() else ""
    if DIFF_MARK.match(line):
        why += ("; a line starting with + or - is a diff's mark, not code: write each line as "
                "the file must read")
    return why + f". {path} stays as it was."


def _compile_error(text: str, path: str) -> SyntaxError | ValueError | None:
    """What stops `text` compiling; None when it compiles, or when it nests past what the
    compiler takes (RecursionError, the parser's MemoryError): that is not judged."""
    try:
        compile(text, path, "exec", dont_inherit=True)
    except (SyntaxError, ValueError) as e:
        return e
    except (RecursionError, MemoryError):
        pass
    return None


def _numstat(numstat: str) -> list[tuple[str, int, int]]:
    """`git diff --numstat` as [(path, lines added, lines removed)]; a binary file counts 0."""
    out = []
    for row in numstat.splitlines():
        added, removed, path = (row.split("\t", 2) + ["", ""])[:3]
        if path:
            out.append((path, int(added) if added.isdigit() else 0,
                        int(removed) if removed.isdigit() else 0))
    return out
