"""Vision models through mlx-vlm: load, start and step one Describe job.

The engine thread owns these calls (one token per loop turn, so describing interleaves with the
coder's batch); the engine keeps the bookkeeping: the list of jobs, cancellation, errors.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import mlx.core as mx

log = logging.getLogger("inference_node.engine")


def keep_our_wired_limit() -> None:
    """Stop mlx-vlm's stream_generate from wiring the whole recommended working set per call.

    mlx-vlm wraps each generation in its `wired_limit` context (generate/common.py), which on
    Metal sets the wired limit to max_recommended_working_set_size for the duration. Ours is
    memory.wired_limit_mb, applied once at start and 0 (left alone) by default; see
    machine.apply_mlx_limits for why. The coder side undoes mlx-lm's the same way
    (mlx_compat.Batch.new closes the BatchGenerator it makes).
    """
    import contextlib
    import importlib

    dispatch = importlib.import_module("mlx_vlm.generate.dispatch")
    if not hasattr(dispatch, "wired_limit"):
        log.warning("mlx-vlm no longer has generate.dispatch.wired_limit: check that describe "
                    "does not raise the wired limit past memory.wired_limit_mb")
        return
    # setattr: mypy does not know the module's attributes, and this one is checked above
    setattr(dispatch, "wired_limit", lambda model, streams=None: contextlib.nullcontext())  # noqa: B010


def load(path: str) -> tuple[Any, Any, Any]:
    """(model, processor, tokenizer) of the mlx-vlm model folder at `path`, evaluated."""
    from mlx_vlm import load as vlm_load

    keep_our_wired_limit()
    model, processor = vlm_load(path)
    mx.eval(model.parameters())
    return model, processor, getattr(processor, "tokenizer", processor)


def start(lm: Any, job: Any) -> None:
    """Open `job`'s mlx-vlm generator (nothing runs until the first step)."""
    from mlx_vlm import stream_generate

    inputs = job.vision_inputs or {}
    job.stream = stream_generate(
        lm.model, lm.processor, inputs["prompt"], image=inputs["images"],
        max_tokens=job.max_tokens, **inputs.get("sampling", {}),
    )


def step(job: Any) -> str | None:
    """Run one token of `job`, put its events on the job's queue; its finish reason, if done.

    Raises whatever mlx-vlm raised; the engine fails this job alone.
    """
    try:
        result = next(job.stream)
    except StopIteration:  # mlx-vlm ends with a result carrying finish_reason
        result = None
    if result is not None:
        if not job.t_first:
            job.t_first = time.perf_counter()
        job.completion_tokens = result.generation_tokens
        if result.prompt_tokens and result.prompt_tokens != len(job.prompt):
            # usage reports what was really run (estimates only differ in length)
            job.prompt = (job.prompt + [0] * result.prompt_tokens)[:result.prompt_tokens]
        for event in job.router.feed(result.text, None):
            job.events.put(event)
    finish: str | None = result.finish_reason if result is not None else "stop"
    if finish is not None:
        for event in job.router.feed("", finish):
            job.events.put(event)
    return finish
