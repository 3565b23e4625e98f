"""finish: end the coder's round with a report of what it did.

The loop recognizes it by name (`FINISH` in this package): `run_tool` returns it with
`finished=True`. The report is what the coder believes; the gate checks the real diff and runs
the real tests itself, so nothing here is taken as proof.
"""

from __future__ import annotations

from typing import Any

from agent_node.tools import FINISH, Tool

DESCRIPTION = (
    "Finish your work and hand back a report. Call this once, when the task is done (or when you "
    "cannot go further: say why in the summary). Your round ends with this call. The reviewer "
    "will look at the real diff and run the tests, so report plainly what you did and did not do."
)

PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "summary": {"type": "string", "description": "What you changed and why; what is left."},
        "files_changed": {
            "type": "array",
            "items": {"type": "string"},
            "description": "Paths you created, edited or deleted, relative to the checkout root.",
        },
        "tests": {
            "type": "string",
            "description": "What you ran and saw, e.g. 'pytest: 14 passed' or 'did not run'.",
        },
    },
    "required": ["summary"],
    "additionalProperties": False,
}


def format_report(args: dict[str, Any]) -> str:
    files = args.get("files_changed") or []
    lines = ["finished.", "summary: " + args["summary"].strip()]
    lines.append("files changed: " + (", ".join(files) if files else "(none reported)"))
    lines.append("tests: " + (args.get("tests") or "(not reported)").strip())
    return "\n".join(lines)


def make_finish() -> Tool:
    return Tool(FINISH, DESCRIPTION, PARAMETERS, format_report)
