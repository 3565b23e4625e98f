"""Visual QA's errors; each message names the thing, the number and what to do.

    QAError
    ├── BrowserNotFound     no Chromium/Chrome to drive (say what to install)
    ├── BrowserFailed       the browser was found but would not start
    ├── PageUnreachable     the URL did not load (connection refused, DNS, timeout)
    ├── ServerFailed        the page's start command exited or never answered
    └── SpecError           the spec file is missing or has a line we cannot read

All of these are bad input for `check-ui` (exit 2). Errors from the inference node are
`agent_node.exceptions.InferenceError` and are not wrapped here.
"""

from __future__ import annotations


class QAError(Exception):
    """Base of the errors visual QA raises for things a person must fix."""


class BrowserNotFound(QAError):
    pass


class BrowserFailed(QAError):
    pass


class PageUnreachable(QAError):
    pass


class ServerFailed(QAError):
    pass


class SpecError(QAError):
    pass
