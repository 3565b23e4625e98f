"""The verdict: the strong model reads the spec, the descriptions and the measured facts.

    verdict = judge(spec, facts, descriptions, model=model, url=url)   # a VisualVerdict
    verdict.status            # "pass" | "fail" | "error" (the judge's reply was unusable)
    verdict.failures          # [Failure(statement, evidence, viewport, fix, source)]

The spec is a text file of checkable statements, one per line, plus optional `allow:` rules
that excuse measured facts (`agent_node.qa.spec` has the full format):

    - The three plans sit side by side on the desktop and stack on the phone.
    - The "Start free" button is visible without scrolling on both viewports.
    allow: console-error /favicon\\.ico/

The model is asked for JSON with `response_format` = VERDICT_SCHEMA (bounded, from
`agent_node.schemas`; the server constrains decoding to it) and the reply is validated with
jsonschema anyway. A malformed reply is retried, with the reason, up to `attempts` times in
all, then reported as status "error": never taken as a pass. A reply cut off by max_tokens, or
a call whose deadline passes, is not retried: it is status "error" at once, with a message
that names the model, the tokens it produced and what to change. Hard facts (console error,
uncaught exception, failed request, horizontal overflow) fail the page on their own whatever
the model says, unless the spec allows them. With no model the verdict comes from the facts
alone and says so. Prompts live in `agent_node/prompts/qa/judge*.md.j2`.
"""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema

from agent_node import activity, prompts
from agent_node.exceptions import DeadlineExceeded
from agent_node.model import Model
from agent_node.qa.describe import ViewportDescription
from agent_node.qa.facts import Fact
from agent_node.qa.result import Failure, VisualVerdict
from agent_node.qa.spec import Spec
from agent_node.schemas import VERDICT, answer_chars
from agent_node.unfinished import TIME, cut_off, explain

VERDICT_SCHEMA: dict[str, Any] = VERDICT  # bounded: see agent_node.schemas
FACT_STATEMENTS = {
    "console-error": "No errors in the browser console",
    "page-error": "No uncaught exceptions",
    "request-failed": "Every request the page makes succeeds",
    "overflow": "Nothing is wider than the viewport (no horizontal scrolling)",
}


class Malformed(ValueError):
    """The judge's reply is not a verdict; the message says why, for the retry."""


def judge(
    spec: Spec,
    facts: list[Fact],
    descriptions: dict[str, ViewportDescription],
    *,
    model: Model | None,
    url: str = "",
    attempts: int = 3,
    max_tokens: int | None = None,
    timeout_s: float = 0.0,
) -> VisualVerdict:
    spec.apply(facts)
    fact_failures = failures_from_facts(facts)
    allowed = [f"[{f.viewport}] {f.message} ({f.allowed_by})" for f in facts if f.allowed_by]
    if model is None:
        return VisualVerdict(
            "fail" if fact_failures else "pass", fact_failures, "facts only", 0,
            notes=[f"no model: the spec's {len(spec.statements)} statement(s) were not checked; "
                   "this verdict covers the measured facts only"],
            allowed=allowed,
        )
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": prompts.render("qa/judge_system")},
        {"role": "user", "content": prompts.render(
            "qa/judge", url=url or "(not given)", spec_source=spec.source,
            statements="\n".join(f"{i}. {s}" for i, s in enumerate(spec.statements, 1)),
            facts=facts_text(facts), descriptions=descriptions_text(descriptions),
        )},
    ]
    why = ""
    for attempt in range(1, max(1, attempts) + 1):
        try:
            reply = model.chat(messages, response_format=VERDICT_SCHEMA, max_tokens=max_tokens)
        except DeadlineExceeded as e:
            last = activity.last_call()
            deadline = explain("judge", e.model or model.name, TIME,
                               tokens=last.tokens if last else None,
                               reasoning_tokens=last.reasoning_tokens if last else 0,
                               seconds=last.seconds if last else 0.0,
                               budget_key="[qa] judge_max_tokens", timeout_s=timeout_s)
            return VisualVerdict("error", fact_failures, model.name, attempt, allowed=allowed,
                                 error=deadline + ". The page is not passed.")
        try:
            model_pass, model_failures = parse_verdict(reply.text, reply.finish_reason,
                                                       reply.cut_off_while_reasoning)
        except Malformed as e:
            why = str(e)
            ran_out = cut_off(reply)
            if ran_out:  # asking again would run out the same way
                used = reply.usage.completion_tokens  # reasoning included
                return VisualVerdict("error", fact_failures, reply.model or model.name, attempt,
                               allowed=allowed, error=explain(
                                   "judge", reply.model or model.name, ran_out, tokens=used,
                                   reasoning_tokens=reply.usage.reasoning_tokens,
                                   seconds=reply.seconds, limit=max_tokens,
                                   budget_key="[qa] judge_max_tokens",
                                   answer_chars=answer_chars(VERDICT_SCHEMA))
                               + ". The page is not passed.")
            messages += [
                {"role": "assistant", "content": reply.text},
                {"role": "user", "content": prompts.render("structured/retry", problem=why,
                                                           schema="")},
            ]
            continue
        failures = fact_failures + model_failures
        return VisualVerdict(
            "pass" if model_pass and not failures else "fail", failures,
            reply.model or model.name, attempt, allowed=allowed,
        )
    return VisualVerdict(
        "error", fact_failures, model.name, attempts,
        error=f"the judge ({model.name}) gave no usable verdict in {attempts} attempt(s); "
              f"last problem: {why}. The page is not passed; rerun, or check the judge model.",
        allowed=allowed,
    )


def parse_verdict(text: str, finish_reason: str = "stop",
                  cut_off: bool = False) -> tuple[bool, list[Failure]]:
    if cut_off:
        raise Malformed("the reply was cut off while still reasoning; no verdict came out")
    body = re.sub(r"^```(?:json)?\s*|\s*```$", "", text.strip())
    if not body:
        raise Malformed(f"the reply was empty (finish reason {finish_reason!r})")
    try:
        obj = json.loads(body)
    except json.JSONDecodeError as e:
        cut = " (cut off at max_tokens)" if finish_reason == "length" else ""
        raise Malformed(f"not valid JSON{cut}: {e.msg} at character {e.pos}") from None
    # The two branches of the schema, named plainly before the schema's own anyOf message.
    if isinstance(obj, dict) and isinstance(obj.get("failures"), list):
        if obj.get("pass") is True and obj["failures"]:
            raise Malformed(f'"pass" is true but {len(obj["failures"])} failure(s) are listed')
        if obj.get("pass") is False and not obj["failures"]:
            raise Malformed('"pass" is false but no failure is listed; name each one')
    schema = VERDICT_SCHEMA
    if isinstance(obj, dict) and isinstance(obj.get("pass"), bool):  # its branch: clearer errors
        schema = VERDICT_SCHEMA["anyOf"][0 if obj["pass"] else 1]
    try:
        jsonschema.validate(obj, schema)
    except jsonschema.ValidationError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "the top level"
        raise Malformed(f"does not match the schema at {where}: {e.message}") from None
    return obj["pass"], [Failure(**f) for f in obj["failures"]]


def failures_from_facts(facts: list[Fact]) -> list[Failure]:
    """One failure per distinct hard fact that counts; the same fact on both viewports is one."""
    by_key: dict[tuple[str, str], list[Fact]] = {}
    for f in facts:
        if f.counts:
            by_key.setdefault((f.kind, f.message), []).append(f)
    out = []
    for (kind, message), group in by_key.items():
        vps = {f.viewport for f in group}
        viewport = "both" if len(vps) > 1 else group[0].viewport
        out.append(Failure(FACT_STATEMENTS[kind], message, viewport, _fix(group[0]), "fact"))
    return out


def _fix(f: Fact) -> str:
    d = f.detail
    if f.kind == "overflow":
        worst = d["offenders"][0]["selector"] if d.get("offenders") else "the widest element"
        cause = (d.get("offenders") or [{}])[0].get("cause") or {}
        if cause.get("kind") == "flex-nowrap":  # the row's rule is the fix, not the item's
            return (f"{cause['selector']} is a flex row that does not wrap (flex-wrap: nowrap), "
                    f"so its items run past the edge: let it wrap (flex-wrap: wrap on "
                    f"{cause['selector']}), or stack its items in a media query for widths "
                    f"under {d['document_width']}px.")
        return (f"Keep {worst} within {d['viewport_width']}px: give it max-width: 100% instead "
                "of a fixed width, let rows wrap (flex-wrap: wrap) or stack them in a media "
                f"query for widths under {d['document_width']}px.")
    if f.kind == "request-failed":
        return (f"Serve {d['url']} (it answered {d['status'] or d['failure']}) or remove the "
                f"reference to it; if it is expected, allow it in the spec: "
                f"allow: request-failed /{re.escape(d['url'].rsplit('/', 1)[-1])}/")
    if f.kind == "page-error":
        top = next((ln.strip() for ln in d.get("stack", "").splitlines()[1:2]), "")
        return f"Fix the code that throws {d['text']!r}{f' ({top})' if top else ''}."
    where = f" at {d['url']}:{d['line']}" if d.get("url") else ""
    return (f"Fix what logs {d['text']!r}{where}; if it is expected, allow it in the spec: "
            "allow: console-error /PATTERN/")


def facts_text(facts: list[Fact]) -> str:
    if not facts:
        return ("none: no console errors, uncaught exceptions, failed requests, overflow, small "
                "text or broken images in either viewport")
    lines = []
    for f in facts:
        if f.allowed_by:
            tag = f"hard, allowed by the spec ({f.allowed_by}): not a failure"
        elif f.hard:
            tag = "hard, counts: fails the page"
        else:
            tag = "soft: weigh it against the spec"
        lines.append(f"- [{f.viewport}] {f.kind} ({tag}): {f.message}")
    return "\n".join(lines)


def descriptions_text(descriptions: dict[str, ViewportDescription]) -> str:
    parts = []
    for name, d in descriptions.items():
        if d.text is None:
            parts.append(f"### {name}\n({d.note})")
        else:
            parts.append(f"### {name} (described by {d.model})\n{d.text}")
    return "\n\n".join(parts) if parts else "(none)"
