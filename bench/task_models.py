"""The models the task bench drives the loop with, and the node that serves the real one.

`MeteredModel` wraps any Model: it caps each reply's max_tokens and adds up the usage the
inference node reported. `SmokeModel` is BENCH_SMOKE's scripted stand-in. `inference` gives the
node a run talks to: a running one (--target) or a local one started for the run (--model).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.task_grading import TaskError
from bench.task_totals import add_recomputed

DEFAULT_BUDGET_GB = 8.0


def log(msg: str) -> None:
    print(f"bench.agent_tasks: {msg}", file=sys.stderr, flush=True)


class MeteredModel:
    """A Model whose replies are capped at `max_tokens` and whose usage is added up."""

    def __init__(self, inner: Any, max_tokens: int | None = None) -> None:
        self.inner = inner
        self.max_tokens = max_tokens
        self.usage = {"calls": 0, "prompt": 0, "cached": 0, "generated": 0, "proposed": 0,
                      "accepted": 0}
        self.recomputed: dict[str, int] = {}  # cause -> prompt tokens seen before, run again

    def chat(self, messages: list[dict[str, Any]], *, tools: list[dict[str, Any]] | None = None,
             tool_choice: str | dict[str, Any] = "auto",
             response_format: dict[str, Any] | None = None,
             max_tokens: int | None = None, sampling: dict[str, Any] | None = None) -> Any:
        cap = max_tokens
        if self.max_tokens:
            cap = min(max_tokens or self.max_tokens, self.max_tokens)
        reply = self.inner.chat(messages, tools=tools, tool_choice=tool_choice,
                                response_format=response_format, max_tokens=cap,
                                **({"sampling": sampling} if sampling else {}))
        u = reply.usage
        self.usage["calls"] += 1
        self.usage["prompt"] += u.prompt_tokens
        self.usage["cached"] += u.cached_prompt_tokens
        self.usage["generated"] += u.completion_tokens  # reasoning is counted among them
        self.usage["proposed"] += u.draft_tokens
        self.usage["accepted"] += u.accepted_draft_tokens
        add_recomputed(self.recomputed, u.recompute_cause, u.recomputed_prompt_tokens)
        return reply

    @property
    def name(self) -> str:
        return str(getattr(self.inner, "name", ""))

    def __getattr__(self, item: str) -> Any:
        return getattr(self.inner, item)


class SmokeModel:
    """BENCH_SMOKE's stand-in: answers each loop question at once and makes a known change.

    The smoke run checks the bench's plumbing (repo setup, the loop, the visual gate, grading,
    classification, counting) in seconds; the real model's path is what --quick and a full run
    measure.
    """

    name = "smoke-scripted"

    def __init__(self, calls: list[tuple[str, dict[str, Any]]]) -> None:
        self.calls = list(calls)

    def chat(self, messages: list[dict[str, Any]], *, tools: list[dict[str, Any]] | None = None,
             tool_choice: str | dict[str, Any] = "auto",
             response_format: dict[str, Any] | None = None,
             max_tokens: int | None = None, sampling: dict[str, Any] | None = None) -> Any:
        from agent_node.model import Reply, ToolCall, Usage

        usage = Usage(prompt_tokens=10, completion_tokens=5, cached_prompt_tokens=4)
        schema = response_format or {}
        props = {k for branch in [schema, *schema.get("anyOf", [])]  # the judge's is an anyOf
                 for k in branch.get("properties", {})}
        answer: dict[str, Any] | None = None
        if "verdict" in props:  # the loop's review
            answer = {"verdict": "pass", "reasons": ["tests pass"], "fixes": [],
                      "tests_change_ok": False}
        elif "ui" in props:  # classification
            answer = {"ui": False, "asks_for_change": True, "page": "", "reason": "smoke"}
        elif "pass" in props:  # the visual judge
            answer = {"pass": True, "failures": []}
        if answer is not None:
            return Reply(text=json.dumps(answer), usage=usage, model=self.name)
        if tools and self.calls:
            name, args = self.calls.pop(0)
            return Reply(tool_calls=[ToolCall(id=f"s{len(self.calls)}", name=name,
                                              arguments=args)],
                         finish_reason="tool_calls", usage=usage, model=self.name)
        return Reply(tool_calls=[ToolCall(id="done", name="finish",
                                          arguments={"summary": "smoke change made"})],
                     finish_reason="tool_calls", usage=usage, model=self.name)


SMOKE_CALLS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "fizzbuzz": [("write", {"path": "fizz.py", "content": (
        "def fizzbuzz(n: int) -> str:\n    return 'Fizz' * (n % 3 == 0) + 'Buzz' * (n % 5 == 0)"
        " or str(n)\n")})],
    "ui_signup_button": [
        ("edit", {"path": "index.html", "old": "    </nav>\n",
                  "new": '    </nav>\n    <a class="button" href="#signup">Sign up</a>\n'}),
        ("edit", {"path": "style.css", "old": "nav a {",
                  "new": ".button { background: #333; color: #fff; }\nnav a {"}),
    ],
}


@contextmanager
def inference(target: str, model_name: str, tmp: Path, prompt_lookup: bool = True
              ) -> Iterator[tuple[str, str, dict]]:
    """(target, model name, what runs): the given node, or a local one started here, which
    decodes a lone stream with prompt lookup unless told not to, as a node does by default
    (a given node's own config decides)."""
    if target:
        yield target, model_name, {"name": model_name or "(the node's default coder)",
                                   "note": f"a running inference node at {target}"}
        return
    from bench.servers import grpc_server, prepare_model

    budget = float(os.environ.get("BENCH_BUDGET_GB") or DEFAULT_BUDGET_GB)
    if model_name:
        path = store_model(model_name)
        info: dict[str, Any] = {"name": model_name, "path": str(path),
                                "note": "from the model store, served by a local inference "
                                        "node started for this run"}
    else:
        path, info = prepare_model(tmp, tiny=False)
        model_name = "bench-model"
    info["prompt_lookup"] = prompt_lookup
    log(f"starting a local inference node for {path}")
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        server = grpc_server(path, model_name, tmp, prompt_cache=True, budget_gb=budget,
                             prompt_lookup=prompt_lookup)
        where = server.__enter__()
    except RuntimeError as e:
        raise ConnectionError(str(e)) from None
    try:
        yield where, model_name, info
    finally:
        server.__exit__(None, None, None)


def store_model(name: str) -> Path:
    """`$STUDIO_CODER_HOME/models/<name>`, or TaskError saying what is there and how to add it."""
    from inference_node.models import store_dir

    store = store_dir()
    path = store / name
    if (path / "config.json").is_file():
        return path
    have = sorted(p.name for p in store.iterdir() if (p / "config.json").is_file()) \
        if store.is_dir() else []
    raise TaskError(f"no model {name!r} in the store {store} (it holds: "
                    f"{', '.join(have) or 'nothing'}); install it with `inference-node install "
                    f"{name}` or `inference-node import-gguf FILE --name {name}`, or give "
                    "--target HOST:PORT of a node that serves it")
