"""A stylesheet's rules asked for alone when the page fails its visual checks.

    [loop] restyle = true

Asked to make a blog's navigation wrap on a phone and to add a Contact link, Qwen2.5-Coder 0.5B
added the link to index.html in every round of every run and never touched style.css, told
each time that the sixth link stood 321 px past the phone's edge: shown two whole files, a
small model writes back the one it can change. So when a round's change fails the visual
checks, the page's stylesheet is asked for on its own before the next round: the task, what
the visual checks found, the stylesheet as it is, and "write the rules that must change or be
added". Each rule that comes back is merged into the stylesheet's rule of the same selector
(`merged`), or added at its end; the next round's coder is shown the result. The rules are the
model's; only their place is the loop's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from agent_node import prompts
from agent_node.events import Note
from agent_node.loop.coder import Emit, model_call
from agent_node.loop.context import read_file
from agent_node.loop.pysource import FENCE
from agent_node.model import Model, Reply

RESTYLE_TOKENS = 500  # a few rules
MAX_STYLESHEET = 16_000  # characters: a bigger stylesheet is left to the coder
LINKED = re.compile(r"""<link\b[^>]*\brel=["']?stylesheet[^>]*>""", re.I)
HREF = re.compile(r"""\bhref=["']?([^"' >]+)""", re.I)


@dataclass(frozen=True)
class Rule:
    """One top-level rule (or at-rule block): its selector as written, normalised, and its
    text from the selector to the closing brace."""

    selector: str
    text: str
    start: int
    end: int


@dataclass(frozen=True)
class Restyled:
    path: str
    reply: Reply
    source: str  # the stylesheet with the rules put in; "" when none was
    why: str = ""


def stylesheet(root: Path, page: str, files: list[str]) -> str:
    """The stylesheet the page links that the checkout holds (the first), else the only .css
    file it holds; "" when there is none, or it is a link or too big."""
    linked: list[str] = []
    html = root / page if page else None
    if html is not None and html.is_file() and not html.is_symlink():
        base = page.rsplit("/", 1)[0] + "/" if "/" in page else ""
        for tag in LINKED.findall(html.read_text(errors="replace")):
            m = HREF.search(tag)
            if m and "://" not in m.group(1):
                linked.append(base + m.group(1).lstrip("./"))
    css = [f for f in files if f.endswith(".css")]
    for path in [p for p in linked if p in css] or (css if len(css) == 1 else []):
        f = root / path
        if (not f.is_symlink() and f.is_file() and f.resolve().is_relative_to(root.resolve())
                and f.stat().st_size <= MAX_STYLESHEET):
            return path
    return ""


def rules(css: str) -> list[Rule]:
    """The top-level rules of `css`, in order; comments are skipped, an at-rule's block is one
    rule. [] when its braces do not balance."""
    out: list[Rule] = []
    depth, start, i, n = 0, 0, 0, len(css)
    while i < n:
        if css.startswith("/*", i):
            end = css.find("*/", i + 2)
            i = n if end < 0 else end + 2
            if depth == 0:
                start = i
            continue
        c = css[i]
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth < 0:
                return []
            if depth == 0:
                text = css[start:i + 1]
                head = text[:text.index("{")]
                lead = len(text) - len(text.lstrip())
                out.append(Rule(" ".join(head.split()), text.strip(), start + lead, i + 1))
                start = i + 1
        i += 1
    return out if depth == 0 else []


def put_in(css: str, reply_css: str) -> str:
    """`css` with each rule of `reply_css` merged into its rule of the same selector (see
    `merged`), or added at its end; "" when the reply has no rule, or changes nothing."""
    new = rules(reply_css)
    old = rules(css)
    if not new or (not old and css.strip()):
        return ""
    out, added = css, []
    for rule in new:
        same = [r for r in rules(out) if r.selector == rule.selector]
        if same:
            r = same[0]
            out = out[:r.start] + merged(r.text, rule.text) + out[r.end:]
        else:
            added.append(rule.text)
    if added:
        out = out.rstrip("\n") + "\n" + "\n".join(added) + "\n"
    return "" if out == css else out


def merged(old: str, new: str) -> str:
    """The rule `old` with each declaration of `new` (a rule of the same selector) in it: a
    property both set takes `new`'s value where `old` had it, one only `new` sets goes before
    the closing brace, and what only `old` sets stays (the 0.5B writes `nav ul { flex-wrap:
    wrap; }` and means the rest to stay). An at-rule's block is replaced whole."""
    if old.startswith("@") or "{" in new[new.index("{") + 1:]:
        return new
    out = old
    for prop, value in DECLARATION.findall(new[new.index("{") + 1:new.rindex("}")]):
        at = re.search(rf"(?<![\w-]){re.escape(prop)}\s*:\s*([^;}}]*)", out[out.index("{"):])
        if at:
            i = out.index("{")
            out = out[:i + at.start(1)] + value.strip() + out[i + at.end(1):]
        else:
            body = out[:out.rindex("}")].rstrip()
            sep = "" if body.endswith((";", "{")) else ";"
            out = f"{body}{sep} {prop}: {value.strip()}; }}"
    return out


DECLARATION = re.compile(r"([\w-]+)\s*:\s*([^;{}]+)")


def first_css(text: str) -> str:
    """The first fenced block of `text`, or the whole text when it has none."""
    if FENCE not in text:
        return text
    body = text.split(FENCE, 1)[1]
    body = body.split("\n", 1)[1] if "\n" in body else ""
    return body.split(FENCE, 1)[0]


def ask(model: Model, task: str, path: str, source: str, found: list[str]) -> Restyled:
    """Ask `model` for the rules of the stylesheet `path` (now `source`) that must change for
    the page to pass, told what the visual checks `found`."""
    prompt = prompts.render("loop/restyle", task=task, path=path, source=source.rstrip("\n"),
                            found=found)
    reply = model.chat([{"role": "user", "content": prompt}], max_tokens=RESTYLE_TOKENS)
    new = put_in(source, first_css(reply.text))
    return Restyled(path, reply, new, "" if new else
                    "its reply has no rule that changes the stylesheet")


def before_next_round(model: Model, task: str, work: Path, page: str, files: list[str],
                      found: list[str], emit: Emit, round_no: int) -> None:
    """Round `round_no`'s change failed the visual checks (`found`): ask for the page's
    stylesheet's rules alone and put what comes back in the checkout, for the next round's coder
    to be shown; said in the record either way."""
    path = stylesheet(work, page, files)
    source = read_file(work, path) if path else ""
    if not source or not found:
        return
    got = ask(model, task, path, source, found)
    emit(model_call(got.reply, role="coder", round_no=round_no))
    if not got.source:
        emit(Note(text=f"the page failed its visual checks; {path}'s rules asked for alone: "
                  f"{got.why}", round=round_no))
        return
    (work / path).write_text(got.source)
    emit(Note(text=f"the page failed its visual checks; {path}'s rules asked for alone and put "
              f"in {path}, for round {round_no + 1} to start from", round=round_no))
