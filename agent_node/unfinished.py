"""A structured call that ended without closing its JSON, said plainly: the step, the model,
the tokens it produced and what to change.

    why = cut_off(reply)            # "" when the reply was not cut off
    if why:
        message = explain("classify", reply.model, why, tokens=..., limit=None,
                          budget_key="[loop] json_max_tokens")

The schemas in `agent_node.schemas` are bounded, so a constrained answer ends by itself; what
can still run out is a reasoning model's thinking before the answer (max_tokens), a max_tokens
set lower than the answer needs, or the stream's deadline ([inference] timeout_s) on a slow or
wandering model.
"""

from __future__ import annotations

from agent_node.model import Reply
from studio_common.json_bounds import reply_tokens

REASONING = "reasoning"  # max_tokens ran out while the model was still thinking
ANSWER = "answer"  # max_tokens ran out inside the JSON answer
TIME = "time"  # the stream's deadline passed


def cut_off(reply: Reply) -> str:
    """REASONING or ANSWER when max_tokens ended `reply` before its answer was complete."""
    if reply.cut_off_while_reasoning:
        return REASONING
    return ANSWER if reply.finish_reason == "length" else ""


def explain(step: str, model: str, why: str, *, tokens: int | None, reasoning_tokens: int = 0,
            seconds: float = 0.0, limit: int | None = None, budget_key: str,
            answer_chars: int = 0, timeout_s: float = 0.0, unknown_because: str = "") -> str:
    """The message for a structured call that did not close its JSON (see module docstring)."""
    model = model or "the model"
    made = f"{tokens:,} tokens" if tokens is not None else (
        f"an unknown number of tokens ({unknown_because})" if unknown_because
        else "an unknown number of tokens")
    if reasoning_tokens:
        made += f" ({reasoning_tokens:,} of them reasoning)"
    limit_text = "the server's default" if not limit else f"{limit:,}"
    if why == TIME:
        deadline = f" = {timeout_s:g} s" if timeout_s else ""
        what = (f"the stream's deadline ([inference] timeout_s{deadline}) passed after {made}"
                + (f" in {seconds:.0f} s" if seconds >= 1 else ""))
        fix = ("use a faster or bigger model ([inference] coder in agent-node.toml), or raise "
               f"[inference] timeout_s; {budget_key} cuts a reply short sooner")
    elif why == REASONING:
        what = f"it was still reasoning when it reached max_tokens ({limit_text}) after {made}"
        fix = (f"raise {budget_key} (now {limit_text}) to give its reasoning room, or use a "
               "model that reasons more briefly")
    else:
        what = f"it reached max_tokens ({limit_text}) after {made}, in the middle of its answer"
        if limit and answer_chars and limit < answer_chars:
            fix = (f"raise {budget_key} (now {limit:,}): the answer alone may take up to "
                   f"{answer_chars:,} characters")
        elif not limit and answer_chars and tokens == reply_tokens(answer_chars):
            # The node's default for a model that does not reason (one token per character the
            # schema allows), spent: escapes and bytes of multi-byte characters take more.
            fix = (f"set {budget_key} above {tokens:,}: the server's default gives a model that "
                   f"does not reason about one token per character the answer may take "
                   f"({answer_chars:,}), and this one needed more")
        else:
            fix = ("its answer is bounded, so a model that keeps to the task ends well before "
                   "that; use a bigger model ([inference] coder in agent-node.toml)")
    return f"{step}: {model} did not close its JSON answer: {what}. To change: {fix}"
