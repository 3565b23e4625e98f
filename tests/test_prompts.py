"""Prompts are configuration: one Jinja loader, built-in templates, a user folder that overrides."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from scripted_model import ScriptedModel, as_json
from user_repo import NOT_UI, PASS, fix_calc, isolate, make_repo, run

from agent_node import prompts
from agent_node.loop.errors import UsageError
from agent_node.runs import read_events

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    isolate(monkeypatch, tmp_path)


def _rendered_names() -> list[tuple[str, str]]:
    """(file, name) for every prompts.render("name", ...) in agent_node."""
    out = []
    for path in (ROOT / "agent_node").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "render" and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == "prompts"):
                first = node.args[0]
                assert isinstance(first, ast.Constant), f"{path}: a prompt name must be literal"
                out.append((str(path.relative_to(ROOT)), first.value))
    return out


def test_every_prompt_the_code_renders_is_a_built_in_template() -> None:
    used = _rendered_names()
    assert len(used) >= 10
    missing = [(f, n) for f, n in used if n not in prompts.names()]
    assert not missing
    assert {n for _, n in used} == set(prompts.names())  # and no template is left unused


def test_no_message_text_is_written_in_code() -> None:
    """A message sent to a model gets its content from a template, never a string literal."""
    offenders = []
    for path in (ROOT / "agent_node").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Dict):
                continue
            keys = [k.value if isinstance(k, ast.Constant) else None for k in node.keys]
            if "role" not in keys or "content" not in keys:
                continue
            role = node.values[keys.index("role")]
            content = node.values[keys.index("content")]
            if (isinstance(role, ast.Constant) and role.value in ("system", "user")
                    and isinstance(content, ast.Constant | ast.JoinedStr | ast.BinOp)):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


def test_a_prompt_in_the_users_folder_replaces_the_built_in_one(tmp_path: Path) -> None:
    (tmp_path / "prompts" / "loop").mkdir(parents=True)
    (tmp_path / "prompts" / "loop" / "coder_cut_off.md.j2").write_text("Go on. Call a tool.\n")
    assert prompts.render("loop/coder_cut_off") == "Go on. Call a tool."
    assert prompts.overrides() == ["loop/coder_cut_off"]
    assert "Reply again" in prompts.render("structured/retry", problem="x", schema="")


def test_a_run_uses_the_users_brief_and_says_so_in_its_record(tmp_path: Path) -> None:
    (tmp_path / "prompts" / "loop").mkdir(parents=True)
    (tmp_path / "prompts" / "loop" / "brief.md.j2").write_text(
        "MY BRIEF: {{ task }} (round {{ round }})\n")
    coder = ScriptedModel(fix_calc(), name="coder")
    summary = run(tmp_path, make_repo(tmp_path), ScriptedModel([as_json(NOT_UI), as_json(PASS)]),
                  coder)
    assert summary["verdict"] == "pass"
    assert coder.calls[0]["messages"][1]["content"] == "MY BRIEF: make add() add (round 1)"
    notes = [e["text"] for e in read_events(Path(summary["run_dir"])) if e["type"] == "note"]
    assert any("loop/brief" in n and str(tmp_path / "prompts") in n for n in notes)


def test_a_stray_file_in_the_users_folder_is_refused_before_a_run_starts(tmp_path: Path) -> None:
    (tmp_path / "prompts" / "loop").mkdir(parents=True)
    (tmp_path / "prompts" / "loop" / "breif.md.j2").write_text("typo\n")
    with pytest.raises(UsageError) as e:
        run(tmp_path, make_repo(tmp_path), ScriptedModel([]), ScriptedModel([]))
    assert "loop/breif.md.j2" in str(e.value) and "loop/brief.md.j2" in str(e.value)
    assert not (tmp_path / "home" / "runs").exists() or not any(
        (tmp_path / "home" / "runs").iterdir())


def test_a_variable_the_template_needs_but_is_not_given_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "prompts" / "qa").mkdir(parents=True)
    (tmp_path / "prompts" / "qa" / "describe.md.j2").write_text("{{ viewprot }} view\n")
    with pytest.raises(prompts.PromptError) as e:
        prompts.render("qa/describe", viewport="phone", width=390, height=844)
    assert "describe.md.j2" in str(e.value) and "viewprot" in str(e.value)
    assert "viewport" in str(e.value)  # what it does get
