"""A UI spec: checkable statements, one per line, and the exceptions the page is allowed.

    # Pricing page                      <- a heading: ignored
    - The three plans sit side by side on the desktop and stack on the phone.
    - The "Start free" button is visible without scrolling on both viewports.
    Prices are in euros.                <- list markers are optional

    allow: console-error /favicon\\.ico/
    allow:
    - page-error /ResizeObserver loop/
    - request-failed /analytics\\.example/

Every non-blank line that is not a heading (`#`) or a comment (`<!-- -->`) is a statement.
`allow: KIND [/REGEX/]` excuses the measured facts of that kind whose text matches REGEX
(searched, Python syntax, case-sensitive; no pattern excuses every fact of the kind); a bare
`allow:` line makes every later line an allow rule. KIND is one of console-error, page-error,
request-failed, overflow, small-text, broken-image (see `agent_node.qa.facts`) or `any`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from agent_node.qa.errors import SpecError
from agent_node.qa.facts import KINDS, Fact

LIST_MARKER = re.compile(r"^(?:[-*+]|\d+[.)])\s+")
RULE = re.compile(r"^(?P<kind>[a-z-]+)(?:\s+/(?P<pattern>.*)/)?$")


@dataclass
class AllowRule:
    kind: str
    pattern: str = ""
    line: int = 0

    def matches(self, fact: Fact) -> bool:
        if self.kind != "any" and self.kind != fact.kind and self.kind not in fact.also:
            return False
        return not self.pattern or re.search(self.pattern, fact.subject()) is not None

    def __str__(self) -> str:
        return f"allow: {self.kind}" + (f" /{self.pattern}/" if self.pattern else "")


@dataclass
class Spec:
    statements: list[str]
    allow: list[AllowRule] = field(default_factory=list)
    source: str = "<text>"

    def apply(self, facts: list[Fact]) -> None:
        """Mark each fact an allow rule excuses (first matching rule wins)."""
        for fact in facts:
            rule = next((r for r in self.allow if r.matches(fact)), None)
            fact.allowed_by = str(rule) if rule else ""


def parse_spec(text: str, source: str = "<text>") -> Spec:
    statements: list[str] = []
    rules: list[AllowRule] = []
    in_allow = False
    text = re.sub(r"<!--.*?-->", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S)
    for n, raw in enumerate(text.splitlines(), 1):
        line = LIST_MARKER.sub("", raw.strip()).strip()
        if not line or line.startswith("#"):
            continue
        if line.lower().startswith("allow:"):
            rest = line[len("allow:"):].strip()
            if not rest:
                in_allow = True
                continue
            rules.append(_rule(rest, source, n))
        elif in_allow:
            rules.append(_rule(line, source, n))
        else:
            statements.append(line)
    if not statements:
        raise SpecError(
            f"{source}: no checkable statements; write one per line, e.g. "
            "'- The menu collapses behind a button on the phone.'"
        )
    return Spec(statements, rules, source)


def _rule(text: str, source: str, n: int) -> AllowRule:
    m = RULE.match(text)
    if not m or (m["kind"] not in KINDS and m["kind"] != "any"):
        raise SpecError(
            f"{source}:{n}: cannot read allow rule {text!r}; write 'allow: KIND [/REGEX/]' "
            f"with KIND one of {', '.join(KINDS)}, any"
        )
    pattern = m["pattern"] or ""
    try:
        re.compile(pattern)
    except re.error as e:
        raise SpecError(f"{source}:{n}: bad pattern /{pattern}/ in allow rule: {e}") from None
    return AllowRule(m["kind"], pattern, n)


def load_spec(path: Path) -> Spec:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"spec file {path} does not exist; pass --spec with a text file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(f"spec file {path} cannot be read: {e}") from None
    return parse_spec(text, str(path))
