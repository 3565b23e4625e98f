"""Prompts are configuration: text files in `agent_node/prompts/`, loaded by name.

`load_prompt("qa_judge", url=...)` reads `qa_judge.md` (or `.txt`) and fills `$name`
placeholders (string.Template: `$$` is a literal dollar); a placeholder left unfilled is an error.
"""

from __future__ import annotations

from pathlib import Path
from string import Template

PROMPTS_DIR = Path(__file__).resolve().parent.parent / "prompts"


def load_prompt(name: str, **values: object) -> str:
    for suffix in (".md", ".txt"):
        path = PROMPTS_DIR / f"{name}{suffix}"
        if path.exists():
            text = path.read_text(encoding="utf-8")
            try:
                return Template(text).substitute({k: str(v) for k, v in values.items()}).strip()
            except KeyError as e:
                raise KeyError(f"prompt {path} needs a value for ${e.args[0]}") from None
    raise FileNotFoundError(f"no prompt named {name!r} in {PROMPTS_DIR} (.md or .txt)")
