"""Every text the agent sends a model is a Jinja template in this folder, loaded by name.

    from agent_node import prompts
    prompts.render("loop/brief", task=..., files=[...], ...)   # loop/brief.md.j2
    prompts.render("qa/judge_system")

The templates are configuration, not code: `loop/` holds the orchestrator's and the coder's
(classify, spec, brief, coder_system, review, the coder's nudges), `qa/` the describer's and
the visual judge's, `structured/` the re-ask after a reply that is not the JSON asked for.

A user overrides any of them without touching the installation: a file with the same relative
name in the prompts folder, `$STUDIO_CODER_PROMPTS` (default `~/.config/studio-coder/prompts`,
beside `agent-node.toml`), is used instead of the built-in one; the others stay built-in. A file
there that overrides nothing (a misspelt name) is an error that lists the names there are, and
so is a template that uses a variable the caller does not give (StrictUndefined): a prompt that
silently lost its task would be worse than no run. `overrides()` says which are in effect; a
run notes them in its record.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path
from typing import Any

import jinja2

__all__ = ["BUILT_IN", "PromptError", "names", "overrides", "render", "user_dir"]

BUILT_IN = Path(__file__).resolve().parent
SUFFIX = ".md.j2"
DEFAULT_USER_DIR = "~/.config/studio-coder/prompts"


class PromptError(ValueError):
    """A prompt that cannot be rendered: the message names the file and what to change."""


def user_dir() -> Path:
    """The folder whose templates override the built-in ones (it need not exist)."""
    return Path(os.environ.get("STUDIO_CODER_PROMPTS") or DEFAULT_USER_DIR).expanduser()


def names(directory: Path = BUILT_IN) -> list[str]:
    """The prompt names under `directory`: relative paths without the suffix, sorted."""
    if not directory.is_dir():
        return []
    return sorted(str(p.relative_to(directory))[: -len(SUFFIX)]
                  for p in directory.rglob(f"*{SUFFIX}") if p.is_file())


def overrides() -> list[str]:
    """The built-in prompts the user's folder replaces now (PromptError for a stray file)."""
    return list(_environment(str(user_dir()))[1])


def render(name: str, **variables: Any) -> str:
    """`<name>.md.j2` (the user's, else the built-in one) filled with `variables`, stripped."""
    env, _ = _environment(str(user_dir()))
    try:
        template = env.get_template(name + SUFFIX)
    except jinja2.TemplateNotFound:
        raise PromptError(f"no prompt named {name!r} (the prompts are: "
                          f"{', '.join(names())})") from None
    except jinja2.TemplateSyntaxError as e:
        raise PromptError(f"prompt {e.filename or name}: line {e.lineno}: {e.message}; fix the "
                          "template (Jinja syntax)") from None
    try:
        return template.render(**variables).strip()
    except jinja2.UndefinedError as e:
        given = ", ".join(sorted(variables)) or "none"
        raise PromptError(f"prompt {template.filename}: {e.message}; the variables it gets "
                          f"are: {given}") from None


@cache
def _environment(user: str) -> tuple[jinja2.Environment, tuple[str, ...]]:
    """The loader for one user folder (looked at once per process), and what it overrides."""
    folder = Path(user)
    built_in = set(names())
    theirs = names(folder)
    stray = [n for n in theirs if n not in built_in]
    if stray:
        raise PromptError(
            f"{folder} holds prompt(s) that override nothing: "
            f"{', '.join(n + SUFFIX for n in stray)}; a prompt there replaces the built-in one "
            f"with the same name, one of: {', '.join(n + SUFFIX for n in sorted(built_in))}")
    search = [str(folder), str(BUILT_IN)] if theirs else [str(BUILT_IN)]
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(search),
        undefined=jinja2.StrictUndefined,  # a misspelt variable is an error, not an empty string
        keep_trailing_newline=False,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    return env, tuple(theirs)
