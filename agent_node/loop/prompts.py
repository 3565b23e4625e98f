"""Prompts are configuration: Jinja files in `agent_node/prompts/loop/`, loaded by name."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import jinja2

PROMPT_DIR = Path(__file__).resolve().parent.parent / "prompts" / "loop"


@cache
def _env(directory: str) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(directory),
        undefined=jinja2.StrictUndefined,  # a misspelt variable is an error, not an empty string
        keep_trailing_newline=False,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )


def render(name: str, directory: Path | None = None, **variables: Any) -> str:
    """Render `<name>.md.j2` from the prompt directory with `variables`."""
    return _env(str(directory or PROMPT_DIR)).get_template(f"{name}.md.j2").render(**variables)
