"""A user's own folder of tasks for the bench's command-line tests, outside the repository."""

from __future__ import annotations

import shutil
from pathlib import Path

from bench.task_grading import TASKS


def own_tasks(root: Path) -> Path:
    """A user's folder of tasks, outside the repository: a copy of fizzbuzz and one of theirs."""
    shutil.copytree(TASKS / "fizzbuzz", root / "fizzbuzz", ignore=shutil.ignore_patterns(
        "solution"))
    own = root / "shout"
    (own / "repo" / "tests").mkdir(parents=True)
    (own / "hidden").mkdir()
    (own / "task.md").write_text("Make `shout(text)` in `loud.py` return the text upper-cased.")
    (own / "repo" / "loud.py").write_text("def shout(text):\n    return text\n")
    (own / "repo" / "tests" / "test_loud.py").write_text(
        "from loud import shout\n\n\ndef test_empty():\n    assert shout('') == ''\n")
    (own / "hidden" / "test_hidden_loud.py").write_text(
        "from loud import shout\n\n\ndef test_shout():\n    assert shout('hi') == 'HI'\n")
    return root
