"""Measured facts against a page, derived from a capture: what the judge cannot argue with.

Kinds (the names an `allow:` rule in a spec uses):

    console-error   a console message at level error (or assert)         hard
    page-error      an uncaught exception or unhandled rejection         hard
    request-failed  a request that failed, or a response with status >= 400   hard
    overflow        the document is wider than the viewport              hard
    small-text      text rendered smaller than qa.min_font_px (phone)    soft
    broken-image    an <img> that loaded nothing (naturalWidth 0)        soft

A hard fact fails the page on its own unless the spec allows it; a soft fact goes to the judge
as evidence. Chromium echoes a failed resource in the console ("Failed to load resource"); that
echo is folded into the request's fact, which then also answers to `console-error`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agent_node.qa.capture import Capture, ViewportCapture

HARD_KINDS = ("console-error", "page-error", "request-failed", "overflow")
SOFT_KINDS = ("small-text", "broken-image")
KINDS = HARD_KINDS + SOFT_KINDS
RESOURCE_ECHO = "Failed to load resource"


@dataclass
class Fact:
    kind: str
    viewport: str
    message: str  # one line a person reads
    detail: dict[str, Any] = field(default_factory=dict)
    also: list[str] = field(default_factory=list)  # other kinds this fact answers to
    allowed_by: str = ""  # the spec's allow rule that excuses it, if any

    @property
    def hard(self) -> bool:
        return self.kind in HARD_KINDS

    @property
    def counts(self) -> bool:
        """A hard fact no allow rule excuses: it fails the page."""
        return self.hard and not self.allowed_by

    def subject(self) -> str:
        """The text an allow rule's pattern is matched against."""
        parts = [self.message] + [str(v) for v in self.detail.values() if isinstance(v, str)]
        return "\n".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "viewport": self.viewport,
            "message": self.message,
            "hard": self.hard,
            "allowed_by": self.allowed_by,
            "also": self.also,
            "detail": self.detail,
        }


def facts_of(capture: Capture, *, min_font_px: float = 12.0) -> list[Fact]:
    facts: list[Fact] = []
    for vc in capture.viewports.values():
        facts += _viewport_facts(vc, min_font_px)
    return facts


def _viewport_facts(vc: ViewportCapture, min_font_px: float) -> list[Fact]:
    vp = vc.viewport.name
    facts: list[Fact] = []
    echoed = {
        c.url for c in vc.console if c.level == "error" and c.text.startswith(RESOURCE_ECHO)
    }
    seen: set[str] = set()
    for r in vc.requests:
        what = f"HTTP {r.status}" if r.status is not None else r.failure
        facts.append(
            Fact(
                "request-failed", vp, f"{r.resource_type} {r.url} -> {what}",
                {"url": r.url, "status": r.status, "failure": r.failure,
                 "resource_type": r.resource_type, "method": r.method},
                also=["console-error"] if r.url in echoed else [],
            )
        )
        seen.add(r.url)
    for c in vc.console:
        if c.level not in ("error", "assert"):
            continue
        if c.text.startswith(RESOURCE_ECHO) and c.url in seen:
            continue  # folded into the request's fact above
        where = f" at {c.url}:{c.line}:{c.column}" if c.url else ""
        facts.append(
            Fact("console-error", vp, f"console.{c.level}: {c.text}{where}",
                 {"text": c.text, "url": c.url, "line": c.line, "column": c.column})
        )
    for e in vc.page_errors:
        facts.append(
            Fact("page-error", vp, f"uncaught: {e.message}", {"text": e.message, "stack": e.stack})
        )
    lay = vc.layout
    if lay and lay.get("document_width", 0) > lay.get("viewport_width", 0) + 1:
        worst = ", ".join(
            f"{o['selector']} ({o['width']}px wide at x={o['left']}, {o['overshoot']}px past)"
            for o in lay.get("offenders", [])[:3]
        )
        facts.append(
            Fact(
                "overflow", vp,
                f"document is {lay['document_width']}px wide in a {lay['viewport_width']}px "
                f"viewport{'; past the right edge: ' + worst if worst else ''}",
                {"document_width": lay["document_width"], "viewport_width": lay["viewport_width"],
                 "offenders": lay.get("offenders", []),
                 "selectors": " ".join(o["selector"] for o in lay.get("offenders", []))},
            )
        )
    small = lay.get("small_text", {}) if lay else {}
    if vc.viewport.mobile and small.get("count"):
        ex = "; ".join(f"{e['selector']} at {e['px']}px" for e in small["examples"][:3])
        hint = "" if lay.get("viewport_meta") else (
            " (no <meta name=viewport>: the phone lays the page out 980px wide and shrinks it)"
        )
        facts.append(
            Fact("small-text", vp,
                 f"{small['count']} text element(s) render under {min_font_px:g}px: {ex}{hint}",
                 {"count": small["count"], "examples": small["examples"],
                  "scale": lay.get("scale", 1)})
        )
    for img in lay.get("broken_images", []) if lay else []:
        facts.append(
            Fact("broken-image", vp, f"image {img['selector']} loaded nothing: {img['src']}",
                 {"selector": img["selector"], "src": img["src"]})
        )
    return facts
