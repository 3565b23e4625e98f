"""`report.html` for a run, rebuilt from `events.jsonl` and the files the events name.

Everything from the record is escaped; screenshots are shown inline by relative path, so the
report reads in a browser straight from the run directory.
"""

from __future__ import annotations

import dataclasses
import json
from html import escape
from pathlib import Path
from typing import Any

from agent_node.events import (
    Approved,
    Classified,
    CoderDone,
    Error,
    GateChecked,
    Note,
    Rejected,
    RoundStarted,
    RoundVerdict,
    SpecWritten,
    VisualQAChecked,
    parse_events,
)
from agent_node.runs import load_record, summarize, write_private

CSS = """
body{font:14px/1.45 system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.4em} h2{font-size:1.15em;margin-top:2em;border-bottom:1px solid #ddd}
pre{background:#f6f6f6;padding:.8em;overflow:auto;max-height:40em;font-size:12px}
.pass{color:#176f2c;font-weight:600} .fail,.error,.interrupted,.incomplete{color:#b3261e;
font-weight:600} table{border-collapse:collapse} td,th{padding:.2em .6em;text-align:left;
vertical-align:top;border-bottom:1px solid #eee} img{max-width:100%;border:1px solid #ccc}
.shots{display:flex;gap:1em;flex-wrap:wrap;align-items:flex-start} .shots figure{margin:0}
"""


def _read(run_dir: Path, name: str | None, limit: int = 400_000) -> str:
    if not name:
        return ""
    path = run_dir / name
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return f"({name} is missing)"
    return text if len(text) <= limit else text[:limit] + f"\n[... {len(text) - limit} cut ...]"


def _list(items: list[Any]) -> str:
    if not items:
        return ""
    return "<ul>" + "".join(f"<li><pre style='margin:0;white-space:pre-wrap'>{escape(str(i))}"
                            "</pre></li>" for i in items) + "</ul>"


def _verdict(v: str) -> str:
    return f"<span class='{escape(v)}'>{escape(v)}</span>"


def _sandbox(info: Any) -> str:
    if not info or not isinstance(info, dict):  # a record from before sandboxes
        return ""
    if info.get("backend") == "none":
        return f"NONE ({info.get('reason', '')}); memory: {info.get('memory', '')}"
    net = "network on" if info.get("network") else "no network"
    return f"{info.get('backend', '')}; {net}; memory: {info.get('memory', '')}"


def render_report(run_dir: Path) -> str:
    events, problem = load_record(run_dir)
    s = summarize(run_dir, events, problem)
    out = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>studio-coder run {escape(s['run_id'])}</title><style>{CSS}</style></head><body>",
        f"<h1>Run {escape(s['run_id'])}: {_verdict(s['verdict'])}</h1>",
        "<table>",
    ]
    rows = [
        ("task", s.get("task")), ("repository", s.get("repo")), ("branch", s.get("branch")),
        ("base", s.get("base")), ("run branch", s.get("run_branch")),
        ("rounds", s["rounds"]), ("models", ", ".join(s["models"])),
        ("tokens", ", ".join(f"{k} {v:,}" for k, v in s["tokens"].items())),
        ("state", s.get("state") or "awaiting approve/reject"),
        ("sandbox", _sandbox(s.get("sandbox"))),
    ]
    out += [f"<tr><th>{escape(k)}</th><td>{escape(str(v or ''))}</td></tr>" for k, v in rows]
    out.append("</table>")
    if s["reasons"]:
        out.append("<h2>Verdict</h2>" + _list(s["reasons"]))
    if problem:
        out.append(f"<p class='fail'>This record cannot be trusted: {escape(problem)}. Only the "
                   "lines before that one are shown; approve refuses this run.</p>")
    if isinstance(s.get("sandbox"), dict) and s["sandbox"].get("backend") == "none":
        out.append("<p class='fail'>The coder's commands ran WITHOUT a sandbox "
                   f"({escape(str(s['sandbox'].get('reason', '')))}): they could reach your "
                   "repository, your files, the network and this record.</p>")
    if s["verdict"] == "incomplete":
        out.append("<p class='incomplete'>No verdict was recorded: the run is still going, or "
                   "it was killed. Everything below was done before that.</p>")

    for e in parse_events(events):
        match e:
            case Note():
                out.append(f"<p><b>Note:</b> {escape(e.text)}</p>")
            case Classified():
                out.append(f"<p><b>Classified:</b> {'UI' if e.ui else 'not UI'}; "
                           f"{escape(e.reason)}</p>")
            case SpecWritten():
                out.append("<h2>Design spec</h2>" + _list(e.statements))
            case RoundStarted():
                out.append(f"<h2>Round {e.round}</h2><details><summary>brief</summary><pre>"
                           f"{escape(_read(run_dir, e.brief_file))}</pre></details>")
            case CoderDone():
                out.append(f"<p><b>Coder</b> ({e.turns} turns, {e.tokens} tokens, stopped by "
                           f"{escape(e.stopped)}) reported (a claim, not evidence):</p>"
                           f"<pre>{escape(e.report)}</pre>")
            case GateChecked():
                out.append(_gate(run_dir, e))
            case VisualQAChecked():
                out.append(_qa(e))
            case RoundVerdict():
                out.append(f"<p><b>Round {e.round} verdict:</b> {_verdict(e.verdict)}</p>"
                           + _list(e.reasons))
            case Error() | Approved() | Rejected():
                detail = {k: v for k, v in dataclasses.asdict(e).items() if k != "t"}
                out.append(f"<p><b>{escape(e.type)}:</b> "
                           f"{escape(json.dumps(detail, default=str))}</p>")

    out.append("<h2>Events</h2><details><summary>events.jsonl</summary><pre>")
    out += [escape(json.dumps(e, default=str, ensure_ascii=False)) + "\n" for e in events]
    out.append("</pre></details></body></html>")
    return "".join(out)


def _gate(run_dir: Path, e: GateChecked) -> str:
    parts = [f"<p><b>Gate:</b> {_verdict('pass' if e.passed else 'fail')}; "
             f"{len(e.files)} file(s) changed; test command "
             f"<code>{escape(e.test_cmd or '(none)')}</code> exited "
             f"{escape(str(e.test_exit))}</p>"]
    parts.append(_list(e.flags))
    parts.append(f"<details open><summary>diff</summary><pre>"
                 f"{escape(_read(run_dir, e.diff_file) or '(empty diff)')}</pre></details>")
    if e.test_log:
        parts.append(f"<details><summary>test output</summary><pre>"
                     f"{escape(_read(run_dir, e.test_log))}</pre></details>")
    return "".join(parts)


def _qa(e: VisualQAChecked) -> str:
    parts = [f"<p><b>Visual QA:</b> {_verdict('pass' if e.passed else 'fail')}"
             f"{' — ' + escape(e.note) if e.note else ''}</p><div class='shots'>"]
    for shot in e.screenshots:
        parts.append(f"<figure><img src='{escape(shot, quote=True)}' alt=''>"
                     f"<figcaption>{escape(shot)}</figcaption></figure>")
    parts.append("</div>")
    rows = [f"<tr><td>{escape(f.get('viewport', ''))}</td><td>"
            f"{escape(f.get('statement', ''))}</td><td>{escape(f.get('evidence', ''))}"
            f"</td><td>{escape(f.get('fix', ''))}</td></tr>" for f in e.failures]
    if rows:
        parts.append("<table><tr><th>viewport</th><th>statement</th><th>evidence</th><th>fix"
                     "</th></tr>" + "".join(rows) + "</table>")
    return "".join(parts)


def write_report(run_dir: Path) -> Path:
    # Atomic: a kill mid-write leaves the old report, never half of a new one.
    return write_private(run_dir / "report.html", render_report(run_dir))
