"""What visual QA finds: one failure type, the visual judge's verdict, and the page's result.

`check_page` returns a QAResult, and the gate takes that same type from whatever QACheck it is
given (the Chromium one, or a test's), reading `passed`, `failures`, `screenshots` and `note`.

    result.passed           # the visual judge's verdict is "pass"
    result.failures         # [Failure(statement, evidence, viewport, fix, source)]
    result.note             # why it could not judge, and what it could not check, in a line
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent_node.qa.describe import ViewportDescription
    from agent_node.qa.facts import Fact


@dataclass
class Failure:
    statement: str
    evidence: str
    viewport: str  # desktop | phone | both
    fix: str
    source: str = "judge"  # judge: the visual judge's finding; fact: a measured hard fact


@dataclass
class VisualVerdict:
    """The visual judge's verdict on a page (not a round's or a run's: see agent_node.events)."""

    status: str  # pass | fail | error
    failures: list[Failure] = field(default_factory=list)
    judged_by: str = ""  # the model's name, or "facts only"
    attempts: int = 0
    error: str = ""  # why the judge's reply could not be used, or QA could not run
    notes: list[str] = field(default_factory=list)
    allowed: list[str] = field(default_factory=list)  # facts the spec excused

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    def to_dict(self) -> dict[str, Any]:
        return {"pass": self.passed, **asdict(self)}


@dataclass
class QAResult:
    url: str
    out_dir: Path
    verdict: VisualVerdict
    screenshots: dict[str, Path] = field(default_factory=dict)  # viewport -> PNG
    facts: list[Fact] = field(default_factory=list)
    descriptions: dict[str, ViewportDescription] = field(default_factory=dict)
    capture_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)  # the capture's (a viewport it could not set)

    @classmethod
    def could_not_run(cls, url: str, out_dir: Path, why: str) -> QAResult:
        """No browser, an unreachable page: a failed check that says why."""
        return cls(url, out_dir, VisualVerdict("error", error=why))

    @property
    def passed(self) -> bool:
        return self.verdict.passed

    @property
    def failures(self) -> list[Failure]:
        return self.verdict.failures

    @property
    def note(self) -> str:
        error = [self.verdict.error] if self.verdict.error else []
        return "; ".join([*error, *self.notes, *self.verdict.notes])

    def to_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "pass": self.verdict.passed,
            "status": self.verdict.status,
            "out_dir": str(self.out_dir),
            "screenshots": {k: str(v) for k, v in self.screenshots.items()},
            "facts": [f.to_dict() for f in self.facts],
            "descriptions": {k: d.to_dict() for k, d in self.descriptions.items()},
            "verdict": self.verdict.to_dict(),
            "capture_seconds": round(self.capture_seconds, 3),
            "notes": self.notes,
        }
