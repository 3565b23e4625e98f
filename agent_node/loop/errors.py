"""The agent loop's errors; each maps to one exit code in `loop/cli.py`.

    LoopError
    ├── UsageError             exit 2  not a git repo, missing spec file, unknown run id
    ├── RefusedError           exit 1  approve/reject refused (dirty files, run did not pass)
    └── StructuredOutputError          a model gave no valid JSON after the allowed retries
        └── UnfinishedJSON             it ran out of max_tokens or time before closing it
"""

from __future__ import annotations


class LoopError(Exception):
    pass


class UsageError(LoopError):
    """Bad input from the person running the command; the message says what to fix."""


class RefusedError(LoopError):
    """A request that would be unsafe as things stand; the message says why and what to do."""


class StructuredOutputError(LoopError):
    """The model's reply did not parse or match the schema after every retry."""

    def __init__(self, message: str, last_text: str = "") -> None:
        super().__init__(message)
        self.last_text = last_text


class UnfinishedJSON(StructuredOutputError):
    """A structured call ended before its JSON was closed: cut off by max_tokens or the stream's
    deadline. Never retried (the same call would run out the same way); the message names the
    step, the model, the tokens produced and what to change (`agent_node.unfinished.explain`)."""

    def __init__(self, message: str, last_text: str = "", *, step: str = "", model: str = "",
                 tokens: int | None = None, why: str = "") -> None:
        super().__init__(message, last_text)
        self.step, self.model, self.tokens, self.why = step, model, tokens, why
