"""A user's repository for the loop tests: made, fingerprinted, and run against.

`fingerprint` is everything of the user's that a run must never change before `approve`:
refs, HEAD, index, config, hooks, stash and every file in the working tree, ignored ones too.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from scripted_model import ScriptedModel, call

from agent_node.config import AgentConfig
from agent_node.model import Reply

GOOD_CALC = "def add(a, b):\n    return a + b\n"
BAD_CALC = "def add(a, b):\n    return a - b\n"
TEST_CALC = (
    "import sys\n\nsys.path.insert(0, '.')\nimport calc\n\n"
    "assert calc.add(2, 3) == 5, f'add(2, 3) = {calc.add(2, 3)}'\n"
)
NOT_UI = {"ui": False, "asks_for_change": True, "page": "", "reason": "a Python fix"}
RUN_BRANCHES = "refs/heads/studio-coder/"
PASS = {"verdict": "pass", "reasons": ["add is fixed"], "fixes": [], "tests_change_ok": True}


def isolate(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A git identity, no global git config, and a studio-coder home, key and prompts folder
    under tmp_path."""
    for who in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{who}_NAME", "Test User")
        monkeypatch.setenv(f"GIT_{who}_EMAIL", "test@example.com")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "gitconfig"))
    monkeypatch.setenv("STUDIO_CODER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("STUDIO_CODER_KEY", str(tmp_path / "config" / "record.key"))
    monkeypatch.setenv("STUDIO_CODER_PROMPTS", str(tmp_path / "prompts"))  # none of the user's


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True,
                          text=True).stdout


def make_repo(tmp_path: Path, files: dict[str, str] | None = None) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    for name, content in (files or {"calc.py": BAD_CALC, "tests/test_calc.py": TEST_CALC}).items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(content)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "initial")
    return repo


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fingerprint(repo: Path) -> dict[str, Any]:
    """Everything of the user's that must not change: refs (but the run's own branch), HEAD,
    index, config, hooks, stash and every file (ignored ones included)."""
    files = {}
    for path in sorted(repo.rglob("*")):
        if ".git" in path.relative_to(repo).parts or not path.is_file():
            continue
        files[str(path.relative_to(repo))] = _digest(path)
    dot_git = repo / ".git"
    return {
        "head": git(repo, "rev-parse", "HEAD"),
        "branch": git(repo, "symbolic-ref", "HEAD"),
        "refs": [ref for ref in git(repo, "for-each-ref", "--format=%(refname) %(objectname)")
                 .splitlines() if not ref.startswith(RUN_BRANCHES)],
        "stash": git(repo, "stash", "list"),
        "index": _digest(dot_git / "index"),
        "config": (dot_git / "config").read_text(),
        "hooks": {p.name: _digest(p) for p in sorted((dot_git / "hooks").iterdir())},
        "status": git(repo, "status", "--porcelain", "--ignored"),
        "files": files,
    }


def calc_test_cmd() -> str:
    return f"{sys.executable} tests/test_calc.py"


def run(tmp_path: Path, repo: Path, orch: ScriptedModel, coder: ScriptedModel,
        **kw: Any) -> dict[str, Any]:
    from agent_node.loop.orchestrator import run_task

    cfg = kw.pop("cfg", AgentConfig())
    return run_task(kw.pop("task", "make add() add"), repo, model=orch, coder_model=coder,
                    cfg=cfg, test_cmd=kw.pop("test_cmd", calc_test_cmd()),
                    home=tmp_path / "home", **kw)


def fix_calc() -> list[Reply]:
    return [call("write", path="calc.py", content=GOOD_CALC),
            call("finish", summary="fixed add")]


def bash(command: str) -> Reply:
    return call("bash", command=command)
