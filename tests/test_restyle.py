"""[loop] restyle: a round whose change fails the visual checks has the page's stylesheet asked
for on its own before the next round, and the rules the model writes merged into it
(agent_node/loop/restyle.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from scripted_model import ScriptedModel, as_json, call, text
from user_repo import PASS, isolate, make_repo, run

from agent_node.config import AgentConfig
from agent_node.loop.restyle import merged, put_in, rules, stylesheet
from agent_node.qa.result import Failure, QAResult, VisualVerdict
from agent_node.runs import read_events

CSS = """\
* { box-sizing: border-box; }
/* the navigation: one row */
nav ul { display: flex; flex-wrap: nowrap; list-style: none; margin: 0; }
nav a { padding: 8px 28px;
        white-space: nowrap; }
@media (max-width: 600px) { main { padding: 8px; } }
"""
PAGE = ('<!doctype html>\n<html><head><link rel="stylesheet" href="style.css"></head>\n'
        '<body><nav><ul><li><a href="/">Home</a></li></ul></nav></body></html>\n')


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    isolate(monkeypatch, tmp_path)


def test_a_stylesheets_rules_are_read_with_comments_and_at_rules_as_one() -> None:
    assert [r.selector for r in rules(CSS)] == ["*", "nav ul", "nav a",
                                                "@media (max-width: 600px)"]
    assert rules("a { color: red; ") == [] and rules("a { } }") == []


def test_a_rule_the_reply_writes_is_merged_into_the_rule_of_its_selector() -> None:
    # the 0.5B writes the one declaration it changes, and means the rest to stay
    assert merged("nav ul { display: flex; flex-wrap: nowrap; margin: 0; }",
                  "nav ul {\n  flex-wrap: wrap;\n  gap: 4px\n}") == (
        "nav ul { display: flex; flex-wrap: wrap; margin: 0; gap: 4px; }")
    out = put_in(CSS, "```css\nnav ul { flex-wrap: wrap; }\n.button { color: #fff; }\n```"
                 .split("```css\n")[1].split("```")[0])
    assert "nav ul { display: flex; flex-wrap: wrap; list-style: none; margin: 0; }" in out
    assert out.endswith(".button { color: #fff; }\n")
    assert out.replace("flex-wrap: wrap", "flex-wrap: nowrap").replace(
        ".button { color: #fff; }\n", "") == CSS
    # an at-rule's block is replaced whole; a reply with no rule, or none that changes, is none
    assert "@media (max-width: 600px) { nav ul { flex-wrap: wrap; } }" in put_in(
        CSS, "@media (max-width: 600px) { nav ul { flex-wrap: wrap; } }")
    assert put_in(CSS, "I would let it wrap.") == ""
    assert put_in(CSS, "nav a { padding: 8px 28px; }") == ""


def test_the_stylesheet_is_the_one_the_page_links(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text(PAGE)
    for name in ("style.css", "print.css"):
        (tmp_path / name).write_text(CSS)
    assert stylesheet(tmp_path, "index.html", ["index.html", "print.css", "style.css"]) == \
        "style.css"
    assert stylesheet(tmp_path, "", ["index.html", "print.css", "style.css"]) == ""  # which?
    assert stylesheet(tmp_path, "", ["index.html", "print.css"]) == "print.css"
    (tmp_path / "style.css").unlink()
    (tmp_path / "style.css").symlink_to(tmp_path / "print.css")  # a link is never read
    assert stylesheet(tmp_path, "index.html", ["index.html", "style.css"]) == ""


def wraps_or_not(calls: list[str]) -> Any:
    """A scripted visual check: the phone overflows until the stylesheet lets the row wrap."""

    def check(url: str, spec: list[str], out_dir: Path) -> QAResult:
        import urllib.request

        served = urllib.request.urlopen(url.rsplit("/", 1)[0] + "/style.css", timeout=5).read()
        calls.append(served.decode())
        if b"flex-wrap: wrap" in served:
            return QAResult(url, out_dir, VisualVerdict("pass", []), {})
        return QAResult(url, out_dir, VisualVerdict("fail", [Failure(
            statement=spec[0], viewport="phone 390x844",
            evidence="document is 711px wide in a 390px viewport; past the right edge: "
                     "header > nav > ul > li:nth-of-type(6) (321px past)",
            fix="body > nav > ul is a flex row that does not wrap (flex-wrap: nowrap): let it "
                "wrap")]), {})

    return check


def test_a_page_that_fails_its_visual_checks_gets_its_stylesheet_asked_for_alone(
        tmp_path: Path) -> None:
    # ui_nav_wrap: the 0.5B added the link to index.html in every round and never touched
    # style.css, told each time that the sixth link stood 321 px past the phone's edge
    repo = make_repo(tmp_path, {"index.html": PAGE, "style.css": CSS})
    ui = {"ui": True, "asks_for_change": True, "page": "index.html", "reason": "layout"}
    spec = {"statements": ["nothing is wider than the screen at phone width"]}
    linked = PAGE.replace("Home</a></li>", "Home</a></li><li><a href='c.html'>Contact</a></li>")
    coder = ScriptedModel([call("write", path="index.html", content=linked),
                           call("finish", summary="added the link"),
                           text("```css\nnav ul {\n  flex-wrap: wrap;\n}\n```"),
                           call("finish", summary="nothing more")], name="coder")
    cfg = AgentConfig()
    cfg.loop.max_rounds, cfg.loop.restyle = 2, True
    served: list[str] = []
    summary = run(tmp_path, repo, ScriptedModel([as_json(ui), as_json(spec), as_json(PASS)]),
                  coder, cfg=cfg, test_cmd="", qa=wraps_or_not(served),
                  task="Make the navigation wrap on a phone, and add a Contact link.")

    assert summary["verdict"] == "pass" and summary["rounds"] == 2
    (asked,) = coder.calls[2]["messages"]  # alone: the task, what was found, the stylesheet
    assert "321px past" in asked["content"] and "nav a { padding: 8px 28px;" in asked["content"]
    assert "flex-wrap: wrap" not in served[0] and "flex-wrap: wrap" in served[1]
    diff = (Path(summary["run_dir"]) / "round-2" / "diff.patch").read_text()
    assert "+nav ul { display: flex; flex-wrap: wrap; list-style: none; margin: 0; }" in diff
    notes = [e["text"] for e in read_events(Path(summary["run_dir"])) if e["type"] == "note"]
    assert any("style.css's rules asked for alone and put in style.css" in n for n in notes)
