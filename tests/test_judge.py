"""The judge's plumbing with a scripted model: schema, retries, hard facts, allow rules."""

from __future__ import annotations

import pytest

from agent_node.model import Description
from agent_node.qa.capture import (
    Capture,
    ConsoleEntry,
    PageError,
    RequestProblem,
    Viewport,
    ViewportCapture,
)
from agent_node.qa.describe import describe_capture
from agent_node.qa.errors import SpecError
from agent_node.qa.facts import facts_of
from agent_node.qa.judge import VERDICT_SCHEMA, judge
from agent_node.qa.spec import parse_spec
from tests.scripted_model import ScriptedModel, as_json, text

URL = "http://127.0.0.1:8000/"
SPEC = parse_spec("- The page shows three pricing plans.\n- The order button is visible.\n")
CLEAN_LAYOUT = {"viewport_width": 1280, "document_width": 1280, "offenders": [],
                "small_text": {"count": 0, "examples": []}, "broken_images": []}
FAILURE = {"statement": "The order button is visible.", "evidence": "phone: no button described",
           "viewport": "phone", "fix": "Move .order-button above the fold on narrow screens."}


def capture(**desktop: list) -> Capture:
    """Desktop with the given console/page_errors/requests; a clean phone."""
    vps = {}
    for vp in (Viewport("desktop", 1280, 800), Viewport("phone", 390, 844, True, 3.0)):
        extra = desktop if vp.name == "desktop" else {}
        layout = dict(CLEAN_LAYOUT, viewport_width=vp.width, document_width=vp.width)
        vps[vp.name] = ViewportCapture(vp, b"\x89PNG fake " + vp.name.encode(), layout=layout,
                                       **extra)
    return Capture(URL, vps)


def no_descriptions() -> dict:
    return describe_capture(None, capture())


def test_verdict_follows_the_schema_and_is_asked_for_with_it() -> None:
    model = ScriptedModel([as_json({"pass": False, "failures": [FAILURE]})])
    v = judge(SPEC, facts_of(capture()), no_descriptions(), model=model, url=URL)
    assert v.status == "fail" and not v.passed
    assert v.failures[0].statement == FAILURE["statement"] and v.failures[0].source == "judge"
    assert v.failures[0].viewport == "phone" and v.failures[0].fix.startswith("Move")
    assert model.calls[0]["response_format"] == VERDICT_SCHEMA
    prompt = model.calls[0]["messages"][-1]["content"]
    assert "The page shows three pricing plans." in prompt and "no vision model" in prompt


def test_clean_facts_and_a_passing_judge_pass() -> None:
    model = ScriptedModel([as_json({"pass": True, "failures": []})])
    v = judge(SPEC, facts_of(capture()), no_descriptions(), model=model)
    assert v.passed and v.judged_by == "scripted" and v.attempts == 1


def test_malformed_reply_is_retried_then_reported_never_a_pass() -> None:
    model = ScriptedModel([
        text("The page looks great, pass!"),
        as_json({"pass": True}),  # no failures list
        as_json({"pass": True, "failures": [FAILURE]}),  # inconsistent
    ])
    v = judge(SPEC, facts_of(capture()), no_descriptions(), model=model, attempts=3)
    assert v.status == "error" and not v.passed
    assert len(model.calls) == 3 and v.attempts == 3
    assert "3 attempt" in v.error and "failure(s) are listed" in v.error
    retry = model.calls[1]["messages"][-1]["content"]
    assert "not valid JSON" in retry


def test_malformed_reply_then_a_good_one_is_used() -> None:
    cut_short = text('```json\n{"pass": tru')
    model = ScriptedModel([cut_short, as_json({"pass": True, "failures": []})])
    v = judge(SPEC, facts_of(capture()), no_descriptions(), model=model)
    assert v.passed and v.attempts == 2


def test_wrong_viewport_name_is_a_schema_error() -> None:
    bad = dict(FAILURE, viewport="tablet")
    model = ScriptedModel([as_json({"pass": False, "failures": [bad]})] * 2)
    v = judge(SPEC, facts_of(capture()), no_descriptions(), model=model, attempts=2)
    assert v.status == "error" and "viewport" in v.error


@pytest.mark.parametrize("logs", [
    {"console": [ConsoleEntry("error", "widgets failed", URL, 14, 31)]},
    {"page_errors": [PageError("Cannot read properties of undefined (reading 'price')")]},
    {"requests": [RequestProblem(URL + "app.js", "script", status=500)]},
])
def test_hard_facts_fail_the_page_even_when_the_model_says_pass(logs: dict) -> None:
    model = ScriptedModel([as_json({"pass": True, "failures": []})])
    v = judge(SPEC, facts_of(capture(**logs)), no_descriptions(), model=model)
    assert v.status == "fail"
    assert [f.source for f in v.failures] == ["fact"] and v.failures[0].viewport == "desktop"


def test_overflow_fails_the_page_with_a_fix_naming_the_element() -> None:
    cap = capture()
    cap.viewports["phone"].layout.update(document_width=656, offenders=[
        {"selector": "body > div.pricing-table", "left": 16, "top": 80, "width": 640,
         "height": 40, "overshoot": 266}])
    v = judge(SPEC, facts_of(cap), no_descriptions(), model=None)
    assert v.status == "fail" and v.failures[0].viewport == "phone"
    assert "div.pricing-table" in v.failures[0].evidence and "max-width" in v.failures[0].fix


def test_overflow_from_a_flex_row_that_does_not_wrap_gets_the_rows_fix() -> None:
    cap = capture()
    cap.viewports["phone"].layout.update(document_width=711, offenders=[
        {"selector": "header > nav > ul > li:nth-of-type(6)", "left": 585, "top": 60,
         "width": 126, "height": 40, "overshoot": 321,
         "cause": {"kind": "flex-nowrap", "selector": "header > nav > ul"}}])
    (failure,) = judge(SPEC, facts_of(cap), no_descriptions(), model=None).failures
    assert failure.fix.startswith("header > nav > ul is a flex row that does not wrap")
    assert "flex-wrap: wrap on header > nav > ul" in failure.fix


def test_an_allowed_exception_in_the_spec_is_honoured() -> None:
    spec = parse_spec("- The order button is visible.\nallow: console-error /favicon\\.ico/\n")
    favicon = ConsoleEntry("error", "Failed to load resource: the server responded with a "
                           "status of 404 (File not found)", URL + "favicon.ico")
    model = ScriptedModel([as_json({"pass": True, "failures": []})])
    v = judge(spec, facts_of(capture(console=[favicon])), no_descriptions(), model=model)
    assert v.passed and "favicon" in v.allowed[0]
    assert "allowed by the spec" in model.calls[0]["messages"][-1]["content"]

    other = ConsoleEntry("error", "widgets failed", URL + "app.js", 3, 1)
    v = judge(spec, facts_of(capture(console=[favicon, other])), no_descriptions(), model=None)
    assert v.status == "fail" and [f.evidence for f in v.failures] == [
        f"console.error: widgets failed at {URL}app.js:3:1"]


def test_a_failed_request_echoed_in_the_console_is_one_fact_answering_to_both_kinds() -> None:
    logs = {"requests": [RequestProblem(URL + "team.jpg", "image", status=404)],
            "console": [ConsoleEntry("error", "Failed to load resource: 404", URL + "team.jpg")]}
    facts = facts_of(capture(**logs))
    assert [(f.kind, f.also) for f in facts] == [("request-failed", ["console-error"])]
    spec = parse_spec("- A team photo.\nallow:\n- console-error /team\\.jpg/\n")
    assert judge(spec, facts, no_descriptions(), model=None).passed


def test_no_model_gives_a_facts_only_verdict_that_says_so() -> None:
    v = judge(SPEC, facts_of(capture()), no_descriptions(), model=None)
    assert v.passed and v.judged_by == "facts only"
    assert "2 statement(s) were not checked" in v.notes[0]


def test_no_describer_says_so_plainly_and_invents_nothing() -> None:
    d = describe_capture(None, capture())
    assert set(d) == {"desktop", "phone"}
    assert all(x.text is None and "no vision model" in x.note for x in d.values())


def test_describer_gets_each_screenshot_with_its_viewport() -> None:
    seen: list[tuple[bytes, str]] = []

    class Fake:
        name = "fake-vl"

        def describe(self, image: bytes, instruction: str = "") -> Description:
            seen.append((image, instruction))
            return Description("A heading and a green button." if b"desktop" in image else "",
                               "fake-vl")

    d = describe_capture(Fake(), capture())
    assert "desktop viewport, 1280×800" in seen[0][1] and "phone viewport, 390×844" in seen[1][1]
    assert d["desktop"].text == "A heading and a green button."
    assert d["phone"].text is None and "empty description" in d["phone"].note


def test_spec_reads_statements_and_allow_rules_and_names_a_bad_line() -> None:
    spec = parse_spec("# Pricing\n- One.\n2. Two.\n<!-- a comment -->\nallow:\n- overflow\n"
                      "- page-error /ResizeObserver loop/\n")
    assert spec.statements == ["One.", "Two."]
    assert [str(r) for r in spec.allow] == ["allow: overflow",
                                            "allow: page-error /ResizeObserver loop/"]
    with pytest.raises(SpecError, match=r"spec.md:2: cannot read allow rule 'console-eror'"):
        parse_spec("- One.\nallow: console-eror\n", "spec.md")
    with pytest.raises(SpecError, match="no checkable statements"):
        parse_spec("# only a heading\n", "spec.md")
