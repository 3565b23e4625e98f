"""The coder's tools: one file per tool, each a factory returning a `Tool`.

    tools = make_tools(checkout, timeout_s=cfg.loop.tool_timeout_s,
                       output_limit=cfg.loop.output_limit, sandbox=sandbox)
    specs = [t.spec() for t in tools.values()]          # what Model.chat(tools=...) takes
    result = run_tool(tools, call.name, call.arguments)  # never raises
    messages.append({"role": "tool", "tool_call_id": call.id, "name": call.name,
                     "content": result.output})
    if result.finished:                                  # the coder called finish successfully
        report = call.arguments                          # {"summary", "files_changed", "tests"}

The contract:
- `run_tool` never raises (except KeyboardInterrupt/SystemExit). An unknown tool, arguments that
  are not a JSON object or do not match the tool's schema, a `ToolError`, or any other exception
  comes back as `ToolResult(ok=False, output="error: ...")`: the message names the thing and
  what to do, and it goes to the model as the tool's result. The loop goes on.
- `ok=True` means the tool did its job. For `bash` that includes a command that exited non-zero
  (the output starts with its exit code); a command that timed out is `ok=False`.
- Every path is relative to the checkout root; nothing outside it is read or written, and
  nothing named `.git` (`paths.confine`). `bash` runs in the sandbox (`agent_node.sandbox`):
  it writes only to the checkout and a private /tmp, reads the checkout's git but never
  writes it, and has no network; with no sandbox available it is refused (fail closed) unless
  the config opts out.
- Output is bounded by `output_limit` characters (head and tail kept, `truncate.marker`).
- `finish` ends the coder's round: `run_tool` sets `finished=True` on its result when its
  arguments were valid; `output` is the report as text, and the arguments themselves are the
  structured report (`summary`: str, `files_changed`: list[str], `tests`: str). The report is
  the coder's belief only; the gate checks the real diff and runs the tests itself.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jsonschema

if TYPE_CHECKING:
    from agent_node.sandbox import Sandbox

__all__ = ["FINISH", "Tool", "ToolError", "ToolResult", "make_tools", "run_tool"]

FINISH = "finish"


class ToolError(Exception):
    """A failure the model should read: it names the thing and what to do instead."""


@dataclass
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]  # a JSON Schema object
    execute: Callable[[dict[str, Any]], str]

    def spec(self) -> dict[str, Any]:
        """The tool as `Model.chat(tools=...)` takes it."""
        return {"name": self.name, "description": self.description, "parameters": self.parameters}


@dataclass
class ToolResult:
    ok: bool
    output: str
    finished: bool = False  # True only for a successful call to `finish`


def make_tools(
    root: Path, *, timeout_s: float = 120, output_limit: int = 12_000,
    sandbox: Sandbox | None = None,
) -> dict[str, Tool]:
    """Every tool the coder can call, bound to the checkout at `root`, by name.

    `sandbox` runs `bash`; None: the default one (SandboxUnavailable when there is none)."""
    # Imported here: the tool modules import Tool and ToolError from this package.
    from agent_node.tools.bash import make_bash
    from agent_node.tools.edit import make_edit
    from agent_node.tools.find import make_find
    from agent_node.tools.finish import make_finish
    from agent_node.tools.grep import make_grep
    from agent_node.tools.read import make_read
    from agent_node.tools.write import make_write

    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"checkout {root} is not a directory")
    made = [
        make_read(root, output_limit=output_limit),
        make_write(root),
        make_edit(root),
        make_find(root, output_limit=output_limit),
        make_grep(root, output_limit=output_limit),
        make_bash(root, timeout_s=timeout_s, output_limit=output_limit, sandbox=sandbox),
        make_finish(),
    ]
    return {t.name: t for t in made}


def _signature(tool: Tool) -> str:
    """`read(path: string, offset?: integer, limit?: integer)`: what a bad call should have been."""
    props = tool.parameters.get("properties", {})
    required = set(tool.parameters.get("required", []))
    parts = []
    for key, schema in props.items():
        kind = schema.get("type", "any")
        if kind == "array":
            kind = f"array of {schema.get('items', {}).get('type', 'any')}"
        parts.append(f"{key}{'' if key in required else '?'}: {kind}")
    return f"{tool.name}({', '.join(parts)})"


def _check_arguments(tool: Tool, arguments: Any) -> dict[str, Any]:
    if isinstance(arguments, str):  # some models send the JSON text itself
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as e:
            raise ToolError(
                f"arguments for {tool.name} are not valid JSON ({e.msg} at character {e.pos}); "
                f"call it as {_signature(tool)}"
            ) from e
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        raise ToolError(
            f"arguments for {tool.name} must be a JSON object, got {type(arguments).__name__}; "
            f"call it as {_signature(tool)}"
        )
    validator = jsonschema.Draft202012Validator(tool.parameters)
    errors = sorted(validator.iter_errors(arguments), key=jsonschema.exceptions.relevance)
    if errors:
        problems = []
        for error in errors[:3]:
            where = "/".join(str(p) for p in error.absolute_path)
            problems.append(error.message + (f" (at '{where}')" if where else ""))
        raise ToolError(
            f"bad arguments for {tool.name}: {'; '.join(problems)}; call it as {_signature(tool)}"
        )
    return arguments


def run_tool(tools: dict[str, Tool], name: str, arguments: Any) -> ToolResult:
    """Run one tool call; a failure of any kind becomes the result text with ok=False."""
    tool = tools.get(name)
    if tool is None:
        return ToolResult(
            False, f"error: unknown tool {name!r}; the tools are: {', '.join(sorted(tools))}"
        )
    try:
        args = _check_arguments(tool, arguments)
        output = tool.execute(args)
    except ToolError as e:
        return ToolResult(False, f"error: {e}")
    except Exception as e:  # a bug or an OS error must not end the loop; the model reads it
        return ToolResult(False, f"error: {name} failed: {type(e).__name__}: {e}")
    return ToolResult(True, output, finished=name == FINISH)
