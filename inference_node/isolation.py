"""Failure isolation for the engine: one request's failed step fails that request only.

mlx-lm runs every sequence of a batch through one step, calling each request's sampler and
logits processors inside it. An exception there used to escape the whole step and fail every
request in the batch; worse, mlx-lm's samplers are compiled with the random state as an input
and output (`mx.compile(inputs=mx.random.state, outputs=mx.random.state)`), so an exception
inside one leaves `mx.random.state` holding a traced array with no primitive, and every later
sampled request failed with "[eval] Attempting to eval an array without a primitive".

So each request's sampler and processors are wrapped to say whose they are (`guarded`), the
random state is rebuilt after any failure (`reset_random_state`), and the engine rebuilds the
batch from the survivors' tokens (`Engine._recover`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import mlx.core as mx

from inference_node.api import reasons as R
from inference_node.errors import InferenceError


class StepFailed(Exception):
    """A request's own sampler or logits processor raised inside a batch step."""

    def __init__(self, job: Any, error: BaseException) -> None:
        super().__init__(f"{type(error).__name__}: {error}")
        self.job = job
        self.error = error


def guarded(job: Any, fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` (a sampler or logits processor of `job`) whose exceptions name `job`."""

    def call(*args: Any) -> Any:
        try:
            return fn(*args)
        except StepFailed:
            raise
        except Exception as e:
            raise StepFailed(job, e) from e

    return call


def reset_random_state() -> None:
    """A fresh key for MLX's global random state, whatever a failed step left in it."""
    mx.random.seed(int.from_bytes(os.urandom(8), "little"))


def generation_failed(job: Any, error: BaseException, *, alone: bool) -> InferenceError:
    """The error a request gets when its step failed (`alone`: it was the cause)."""
    cause = f"{type(error).__name__}: {R.truncate(str(error), 300)}"
    if alone:
        message = (f"generation failed for this request on {job.model} ({cause}); the other "
                   "requests go on, and the node keeps serving: retry, or check the sampling "
                   "options")
    else:
        message = (f"generation failed for every request in {job.model}'s batch ({cause}); "
                   "the node rebuilt the batch and keeps serving: retry")
    return InferenceError(message, model=job.model, request_id=job.request_id)
