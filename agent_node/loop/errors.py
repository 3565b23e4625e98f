"""The agent loop's errors; each maps to one exit code in `loop/cli.py`.

    LoopError
    ├── UsageError             exit 2  not a git repo, missing spec file, unknown run id
    ├── RefusedError           exit 1  approve/reject refused (dirty files, run did not pass)
    └── StructuredOutputError          a model gave no valid JSON after the allowed retries
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
