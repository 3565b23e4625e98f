"""Visual QA for the gate: serve the tested files, then ask `agent_node.qa.check_page` about them.

The page server runs in agent-node itself (a thread, not a process): it only reads files, and
it serves none that a symlink leads to outside the served folder, so a link the coder planted
(to a key, to a record) shows the browser a 404, not the file.
"""

from __future__ import annotations

import functools
import http.server
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from agent_node.config import AgentConfig
from agent_node.qa.result import QAResult


class _ConfinedHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    def send_head(self) -> Any:
        root = os.path.realpath(self.directory)
        real = os.path.realpath(self.translate_path(self.path))
        if real != root and not real.startswith(root + os.sep):
            self.send_error(404, "outside the served folder")
            return None
        return super().send_head()


@contextmanager
def serve_directory(root: Path) -> Iterator[str]:
    """Serve `root` over HTTP on a free loopback port for as long as the block runs; its URL."""
    handler = functools.partial(_ConfinedHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="qa-page-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class ChromiumQA:
    """The gate's QACheck backed by `agent_node.qa`: one browser for the whole run.

    `model` judges the page against the spec (None: measured facts only); `describer` says
    what the screenshots show (None: said plainly, nothing described). Call `close()` at the end.
    """

    def __init__(self, cfg: AgentConfig, model: Any | None, describer: Any | None,
                 allow: list[Any] | None = None) -> None:
        self.cfg, self.model, self.describer, self.allow = cfg, model, describer, allow or []
        self._capturer: Any = None

    def __call__(self, url: str, spec: list[str], out_dir: Path) -> QAResult:
        from agent_node.qa import Capturer, Spec, check_page
        from agent_node.qa.errors import QAError

        try:
            if self._capturer is None:  # the coder's page: it reaches nothing but loopback
                self._capturer = Capturer(self.cfg.qa, loopback_only=True)
                self._capturer.start()
            return check_page(url, Spec(list(spec), list(self.allow), "design spec"),
                              model=self.model, describer=self.describer,
                              capturer=self._capturer, out_dir=out_dir)
        except QAError as e:  # no browser, page unreachable: a failed check, said plainly
            return QAResult.could_not_run(url, out_dir, f"visual QA could not run: {e}")

    def close(self) -> None:
        if self._capturer is not None:
            self._capturer.close()
            self._capturer = None


def default_qa(cfg: AgentConfig, model: Any, describer: Any | None,
               allow: list[Any] | None = None) -> ChromiumQA | None:
    """Visual QA through `agent_node.qa`, or None when that package is not importable."""
    try:
        import agent_node.qa  # noqa: F401
    except ImportError:
        return None
    return ChromiumQA(cfg, model, describer, allow)
