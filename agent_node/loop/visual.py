"""Visual QA for the gate: serve the worktree, then ask `agent_node.qa.check_page` about it."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from agent_node.loop.gate import QACheck, QAFailure, QAOutcome


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass


@contextmanager
def serve_directory(root: Path) -> Iterator[str]:
    """Serve `root` over HTTP on a free loopback port for as long as the block runs; its URL."""
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="qa-page-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def outcome_from_qa(result: Any) -> QAOutcome:
    """Normalise a `QAResult` (or a dict of the same shape) into the gate's `QAOutcome`."""

    def get(obj: Any, name: str, default: Any = None) -> Any:
        return obj.get(name, default) if isinstance(obj, dict) else getattr(obj, name, default)

    verdict = get(result, "verdict", result)
    failures = [
        QAFailure(
            statement=str(get(f, "statement", "")),
            evidence=str(get(f, "evidence", "")),
            viewport=str(get(f, "viewport", "")),
            fix=str(get(f, "fix", "")),
        )
        for f in (get(verdict, "failures", None) or [])
    ]
    passed = get(verdict, "passed", None)
    if passed is None:
        passed = get(verdict, "pass", not failures)
    shots = get(result, "screenshots", None) or []
    paths = [str(get(s, "path", s)) for s in (shots.values() if isinstance(shots, dict) else shots)]
    return QAOutcome(bool(passed), failures, paths, str(get(result, "note", "") or ""))


def default_qa(cfg: Any, model: Any, describer: Any | None) -> QACheck | None:
    """A QACheck backed by `agent_node.qa`, or None when that package cannot be used here."""
    try:
        from agent_node.qa import check_page  # type: ignore[attr-defined]
    except ImportError:
        return None
    capturer = _make_capturer(cfg)

    def check(url: str, spec: list[str], out_dir: Path) -> QAOutcome:
        result = check_page(url, spec, model=model, describer=describer, capturer=capturer,
                            out_dir=out_dir)
        return outcome_from_qa(result)

    return check


def _make_capturer(cfg: Any) -> Any:
    try:
        from agent_node.qa import capture  # type: ignore[attr-defined]
    except ImportError:
        return None
    factory = getattr(capture, "make_capturer", None) or getattr(capture, "Capturer", None)
    return factory(cfg.qa) if factory else None
