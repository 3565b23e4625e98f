"""A task bench run's figures: each task's model usage from its run record, and the run's totals
and table (bench/agent_tasks.py runs the tasks)."""

from __future__ import annotations

from typing import Any

from bench.task_failures import FAILURES


def usage(events: list[dict[str, Any]]) -> dict[str, Any]:
    """Usage of the loop's model calls, as the run record has them (Done.usage of each), in all
    and per stage (the call's role: classify, spec, coder, review, ...). Generated tokens are
    completion tokens: the node counts reasoning among them."""
    from agent_node.events import ModelCall, parse_events

    out: dict[str, Any] = {"calls": 0, "prompt": 0, "cached": 0, "generated": 0, "stages": {},
                           "recomputed": {}, "proposed": 0, "accepted": 0}
    for e in parse_events(events):
        if isinstance(e, ModelCall):
            out["calls"] += 1
            out["prompt"] += e.prompt_tokens
            out["cached"] += e.cached_prompt_tokens
            out["generated"] += e.completion_tokens
            out["proposed"] += e.draft_tokens
            out["accepted"] += e.accepted_draft_tokens
            add_stage(out["stages"], e.role or "other", 1, e.prompt_tokens,
                       e.cached_prompt_tokens, e.recomputed_prompt_tokens)
            add_recomputed(out["recomputed"], e.recompute_cause, e.recomputed_prompt_tokens)
    return out


def add_recomputed(by_cause: dict[str, int], cause: str, tokens: int) -> None:
    """Count `tokens` prompt tokens seen before and computed again under `cause`."""
    if tokens:
        by_cause[cause or "unknown"] = by_cause.get(cause or "unknown", 0) + tokens


def add_stage(stages: dict[str, dict[str, int]], stage: str, calls: int, prompt: int,
               cached: int, recomputed: int = 0) -> None:
    """Add calls to `stage`'s figures. `recomputed`: prompt tokens the node had seen before
    and computed again; the rest of the uncached ones were new to it."""
    s = stages.setdefault(stage, {"calls": 0, "prompt_tokens": 0, "cached_prompt_tokens": 0,
                                  "recomputed_prompt_tokens": 0})
    s["calls"] += calls
    s["prompt_tokens"] += prompt
    s["cached_prompt_tokens"] += cached
    s["recomputed_prompt_tokens"] = s.get("recomputed_prompt_tokens", 0) + recomputed


def cache_by_stage(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The prompt tokens each stage sent and the share the node served from its cache."""
    stages: dict[str, dict[str, int]] = {}
    for r in rows:
        for stage, s in r.get("cache_by_stage", {}).items():
            add_stage(stages, stage, s["calls"], s["prompt_tokens"], s["cached_prompt_tokens"],
                      s.get("recomputed_prompt_tokens", 0))
    return {k: {**v, "cache_share": round(v["cached_prompt_tokens"] / v["prompt_tokens"], 3)
                if v["prompt_tokens"] else 0.0} for k, v in sorted(stages.items())}


def totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    n = max(1, len(rows))
    prompt = sum(r["prompt_tokens"] for r in rows)
    cached = sum(r["cached_prompt_tokens"] for r in rows)
    failures = {k: 0 for k in FAILURES}
    for r in rows:
        if r["failure"]:
            failures[r["failure"]] += 1
    return {
        "pass_rate_round1": round(sum(r["pass_round1"] for r in rows) / n, 3),
        "pass_rate_final": round(sum(r["pass_final"] for r in rows) / n, 3),
        "failures": {k: v for k, v in failures.items() if v},
        "tokens_generated": sum(r["tokens_generated"] for r in rows),
        "prompt_tokens": prompt,
        "cached_prompt_tokens": cached,
        "cache_share": round(cached / prompt, 3) if prompt else 0.0,
        "cache_by_stage": cache_by_stage(rows),
        # speculative decoding's proposals checked, and kept (0 where the node had none)
        "proposed_tokens": sum(r.get("proposed_tokens", 0) for r in rows),
        "accepted_proposals": sum(r.get("accepted_proposals", 0) for r in rows),
        "recomputed_by_cause": recomputed_by_cause(rows),
        "tool_calls": sum(r["tool_calls"] for r in rows),
        "malformed_tool_calls": sum(r["malformed_tool_calls"] for r in rows),
        "review_final": review_agreement(rows),
    }


def targets(model: str, cache_share: float) -> dict[str, bool]:
    """Issue 21's target, set for the 0.5B on the whole bench; none for another model."""
    return {"agent_prompt_cache_share_ge_0.80": cache_share >= 0.80} if "0.5b" in model.lower() \
        else {}


def recomputed_by_cause(rows: list[dict[str, Any]]) -> dict[str, int]:
    """The prompt tokens the node had seen before and computed again, summed by its cause
    (evicted, rerendered, retokenized, reasoning_dropped)."""
    out: dict[str, int] = {}
    for r in rows:
        for cause, n in r.get("recomputed_by_cause", {}).items():
            add_recomputed(out, cause, n)
    return dict(sorted(out.items()))


def review_agreement(rows: list[dict[str, Any]]) -> dict[str, int]:
    """How the code review judged each final change the gate passed, against the hidden tests:
    the reviewer's own quality, whether its verdict bound the round or not (loop.review)."""
    out = {"right_change_accepted": 0, "right_change_refused": 0, "wrong_change_accepted": 0,
           "wrong_change_refused": 0}
    for r in rows:
        if r.get("review_final") in ("pass", "fail"):
            right = "right" if r["hidden_tests_pass_final"] else "wrong"
            said = "accepted" if r["review_final"] == "pass" else "refused"
            out[f"{right}_change_{said}"] += 1
    return out


def table(result: dict[str, Any]) -> str:
    """The result as a person reads it."""
    head = (f"{'task':<22} {'round 1':<8} {'final':<6} {'rounds':>6} {'tokens':>8} "
            f"{'wall s':>7}  why")
    lines = [head, "-" * len(head)]
    for r in result["tasks"]:
        why = "" if r["pass_final"] else f"{r['failure']}: {r['failure_detail']}"
        lines.append(f"{r['name']:<22} {_yes(r['pass_round1']):<8} {_yes(r['pass_final']):<6} "
                     f"{r['rounds']:>6} {r['tokens_generated']:>8} {r['wall_s']:>7}  {why[:90]}")
    lines += ["", f"model: {result['model'].get('name')}; pass rate "
              f"{100 * result['pass_rate_round1']:.0f}% after round 1, "
              f"{100 * result['pass_rate_final']:.0f}% after all rounds; prompt tokens served "
              f"from the cache: {100 * result['cache_share']:.0f}%"]
    if result.get("cache_by_stage"):
        lines.append("cached, by stage: " + stage_shares(result["cache_by_stage"]))
    if "recomputed_by_cause" in result:
        lines.append(misses(result))
    if result["failures"]:
        lines.append("failures: " + ", ".join(f"{k} {v}" for k, v in result["failures"].items()))
    rv = result.get("review_final") or {}
    if any(rv.values()):
        lines.append("the review, on final changes the hidden tests pass: "
                     f"{rv['right_change_accepted']} accepted, {rv['right_change_refused']} "
                     f"refused; on ones they fail: {rv['wrong_change_refused']} refused, "
                     f"{rv['wrong_change_accepted']} accepted")
    return "\n".join(lines)


def misses(result: dict[str, Any]) -> str:
    """The prompt tokens not served from the cache: new to it, or seen before and why not."""
    by_cause = result["recomputed_by_cause"]
    again = sum(by_cause.values())
    new = result["prompt_tokens"] - result["cached_prompt_tokens"] - again
    why = (" (" + ", ".join(f"{k} {v:,}" for k, v in by_cause.items()) + ")") if again else ""
    return f"not served from the cache: {new:,} prompt tokens new to it, {again:,} seen before{why}"


def stage_shares(by_stage: dict[str, dict[str, Any]]) -> str:
    return ", ".join(f"{k} {100 * v['cache_share']:.0f}% of {v['prompt_tokens']:,}"
                     for k, v in by_stage.items())


def _yes(b: bool) -> str:
    return "pass" if b else "fail"
