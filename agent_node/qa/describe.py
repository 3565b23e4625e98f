"""Describe each screenshot with the vision model, through a `Describer`; keep the text.

A description is evidence for the judge, never a verdict (rule 1). With no describer (no
vision model configured) each viewport says so plainly and carries no text: nothing here ever
makes a description up. Errors from the inference node propagate to the caller.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from agent_node import prompts
from agent_node.model import Describer
from agent_node.qa.capture import Capture

NO_VISION = (
    "not described: no vision model is available (none in [inference] vision of "
    "agent-node.toml, or none of them served), so the verdict rests on the measured facts alone"
)


@dataclass
class ViewportDescription:
    viewport: str
    text: str | None  # None: there is no description; `note` says why
    model: str = ""
    note: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def describe_capture(
    describer: Describer | None, capture: Capture
) -> dict[str, ViewportDescription]:
    out: dict[str, ViewportDescription] = {}
    for name, vc in capture.viewports.items():
        if describer is None:
            out[name] = ViewportDescription(name, None, note=NO_VISION)
            continue
        vp = vc.viewport
        instruction = prompts.render("qa/describe", viewport=name, width=vp.width, height=vp.height)
        started = time.monotonic()
        d = describer.describe(vc.screenshot, instruction)
        seconds = d.seconds or time.monotonic() - started
        text = (d.text or "").strip()
        if not text:
            out[name] = ViewportDescription(
                name, None, d.model, f"the vision model {d.model or describer.name} returned an "
                "empty description; judged from the facts alone", seconds
            )
        else:
            out[name] = ViewportDescription(name, text, d.model or describer.name, d.note, seconds)
    return out
