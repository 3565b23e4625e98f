"""The JSON schemas of every structured call the agent makes, and the bounds that make them end.

    CLASSIFY   the orchestrator: UI work or not, does the task ask for a change
               (`classify_schema(files)`: no web file in the repository, no UI)
    SPEC       the orchestrator: a UI task's checkable statements
    REVIEW     the orchestrator: does a change that passed the gate do the task
    VERDICT    the visual judge: does the page satisfy the spec

The inference node decodes these under a grammar (llguidance), so a reply can only be JSON that
matches. A grammar with no bound on a string or an array lets a small model write one string
forever: SmolLM2-135M asked to classify a task wrote `"reason": "1.1.1.1...` until the stream's
600 s deadline. So every string here has a `maxLength` (or is an enum), every array a
`maxItems`, every object is closed, and `answer_chars(schema)` is finite: constrained decoding
must end. Only the answer is bounded; a reasoning model's thinking before it is not
(rule 3): that is bounded by the request's max_tokens and the stream's deadline.

`unbounded(schema)` lists what a schema leaves open; the tests hold every schema here to none.
Both live in `studio_common.json_bounds`: the inference node sizes a schema'd reply's default
max_tokens by `answer_chars` when the model does not reason.
"""

from __future__ import annotations

from typing import Any

# The agent's schemas are held to these (tests/test_schemas.py); the node reads them too.
from studio_common.json_bounds import answer_chars as answer_chars
from studio_common.json_bounds import unbounded as unbounded

# Character bounds, in one place. Room for what each field is for, and no more: a bound is the
# longest string a model that never closes one can write, so each is paid for in tokens.
PATH_CHARS = 200  # a repository-relative path
SENTENCE_CHARS = 240  # "one sentence saying why"
STATEMENT_CHARS = 200  # one checkable statement of a design spec
FIX_CHARS = 400  # one specific change for the next attempt, or the evidence for a failure
SPEC_STATEMENTS = 10  # a spec longer than this is not checkable in one pass
REVIEW_ITEMS = 5  # reasons, and fixes, of one review
VERDICT_FAILURES = 10  # failures one judge reply can list

VIEWPORTS = ("desktop", "phone", "both")


def _text(max_chars: int, min_chars: int = 0) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "string", "maxLength": max_chars}
    if min_chars:
        out["minLength"] = min_chars
    return out


def _list(item: dict[str, Any], max_items: int, min_items: int = 0) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "array", "items": item, "maxItems": max_items}
    if min_items:
        out["minItems"] = min_items
    return out


def _object(**properties: dict[str, Any]) -> dict[str, Any]:
    props = {k.rstrip("_"): v for k, v in properties.items()}  # pass_ -> "pass"
    return {"type": "object", "properties": props, "required": list(props),
            "additionalProperties": False}


CLASSIFY: dict[str, Any] = _object(
    ui={"type": "boolean"},
    asks_for_change={"type": "boolean"},
    page=_text(PATH_CHARS),
    reason=_text(SENTENCE_CHARS),
)

# Files a page can be made of. In a repository with none, there is no page to look at, so the
# classifier can only answer "not UI" (`--spec` still makes it UI work).
WEB_SUFFIXES = (".html", ".htm", ".css", ".scss", ".sass", ".less", ".js", ".jsx", ".ts",
                ".tsx", ".vue", ".svelte", ".astro", ".j2", ".jinja", ".hbs", ".ejs", ".erb",
                ".twig", ".liquid", ".mustache")


def classify_schema(files: list[str]) -> dict[str, Any]:
    """CLASSIFY for a repository holding `files`: with no web file in it, `ui` is false."""
    if any(f.lower().endswith(WEB_SUFFIXES) for f in files):
        return CLASSIFY
    return _object(ui={"const": False}, asks_for_change={"type": "boolean"},
                   page={"const": ""}, reason=_text(SENTENCE_CHARS))


SPEC: dict[str, Any] = _object(
    statements=_list(_text(STATEMENT_CHARS, 3), SPEC_STATEMENTS, 1),
)

# reasons before the verdict: decoded in this order, so a model says what it sees in the diff
# and the tests before it commits to pass or fail (a 1.5B that began with the verdict failed a
# right fix, then said "the diff does not show any changes")
REVIEW: dict[str, Any] = _object(
    reasons=_list(_text(SENTENCE_CHARS), REVIEW_ITEMS, 1),
    verdict={"enum": ["pass", "fail"]},
    fixes=_list(_text(FIX_CHARS), REVIEW_ITEMS),
    tests_change_ok={"type": "boolean"},
)

_FAILURE: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["statement", "evidence", "viewport", "fix"],
    "properties": {
        "statement": _text(STATEMENT_CHARS, 1),
        "evidence": _text(FIX_CHARS, 1),
        "viewport": {"type": "string", "enum": list(VIEWPORTS)},
        "fix": _text(FIX_CHARS, 1),
    },
}

# A pass lists no failure and a fail lists at least one: said in the schema, so a constrained
# judge cannot write `"pass": true` and then ten failures (SmolLM2 did, three times running).
VERDICT: dict[str, Any] = {
    "anyOf": [
        _object(pass_={"const": True}, failures=_list(_FAILURE, 0)),
        _object(pass_={"const": False}, failures=_list(_FAILURE, VERDICT_FAILURES, 1)),
    ],
}

# The coder's tool calls are structured calls too (every turn is one, constrained to the tools'
# schemas): a tool's argument the tool left unbounded gets a bound here, by what it holds.
FILE_CHARS = 40_000  # a whole file's content, or the text an edit replaces
COMMAND_CHARS = 2_000  # one shell command
NOTE_CHARS = 600  # anything else: a report's summary, what was tested
TOOL_LIST_ITEMS = 10  # the tools' one list is finish's files_changed: a claim (the gate diffs)
TOOL_INT_MAX = 1_000_000
TOOL_TEXT_CHARS = {"content": FILE_CHARS, "old": FILE_CHARS, "new": FILE_CHARS,
                   "command": COMMAND_CHARS, "path": PATH_CHARS, "glob": PATH_CHARS,
                   "pattern": PATH_CHARS, "files_changed": PATH_CHARS}


def bounded_tool(spec: dict[str, Any]) -> dict[str, Any]:
    """A tool spec ({"name", "description", "parameters"}) whose parameters bound every
    argument: strings by `TOOL_TEXT_CHARS` (else NOTE_CHARS), arrays to TOOL_LIST_ITEMS,
    integers to TOOL_INT_MAX. A float can always take one more digit, which no grammar bound
    stops, so a "number" is asked for as an integer (still a number to the tool)."""
    return {**spec, "parameters": _bound(spec.get("parameters") or {"type": "object"}, "")}


def _bound(schema: Any, name: str) -> Any:
    if not isinstance(schema, dict) or "enum" in schema or "const" in schema:
        return schema
    out = dict(schema)
    kind = out.get("type")
    if kind == "object":
        out["properties"] = {k: _bound(v, k) for k, v in (out.get("properties") or {}).items()}
        out.setdefault("additionalProperties", False)
    elif kind == "array":
        out.setdefault("maxItems", TOOL_LIST_ITEMS)
        out["items"] = _bound(out.get("items") or {"type": "string"}, name)
    elif kind == "string":
        out.setdefault("maxLength", TOOL_TEXT_CHARS.get(name, NOTE_CHARS))
    elif kind in ("integer", "number"):
        out["type"] = "integer"
        low = out.pop("exclusiveMinimum", None)
        if low is not None:
            out["minimum"] = int(low) + 1
        out.setdefault("minimum", 0)
        out.setdefault("maximum", TOOL_INT_MAX)
    return out


SCHEMAS: dict[str, dict[str, Any]] = {
    "classify": CLASSIFY, "spec": SPEC, "review": REVIEW, "judge": VERDICT,
}
