"""A page's own server for `agent-node check-ui --start CMD`: started, waited for, stopped.

    with PageServer("python -m http.server 8000", "http://127.0.0.1:8000/", cwd=site):
        capture = capturer.capture("http://127.0.0.1:8000/")
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from pathlib import Path

from agent_node.qa.errors import ServerFailed
from agent_node.sandbox import runner


class PageServer:
    """Start a page's server (`python -m http.server 8000`), wait for its URL, stop it after.

    The command runs through the agent node's process runner: a session of its own, and the
    whole group is ended on stop (SIGTERM, then SIGKILL). It is the user's own command
    (`check-ui --start`), so it runs outside the coder's sandbox.
    """

    def __init__(
        self,
        command: str,
        wait_url: str,
        *,
        cwd: Path | None = None,
        timeout_s: float = 20.0,
        log_path: Path | None = None,
    ) -> None:
        self.command, self.wait_url, self.cwd = command, wait_url, cwd
        self.timeout_s, self.log_path = timeout_s, log_path
        self.proc: runner.Process | None = None

    def __enter__(self) -> PageServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        if self.log_path:
            self.log_path.write_bytes(b"")  # this server's output only
        self.proc = runner.start(["/bin/sh", "-c", self.command], cwd=self.cwd,
                                 log_path=self.log_path)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerFailed(
                    f"start command {self.command!r} exited with code {self.proc.returncode} "
                    f"before {self.wait_url} answered{self._tail()}"
                )
            try:
                opener.open(self.wait_url, timeout=1).close()
                return
            except urllib.error.HTTPError:
                return  # it answered; what it answered is the check's business
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        self.stop()
        raise ServerFailed(
            f"start command {self.command!r} did not answer at {self.wait_url} within "
            f"{self.timeout_s:g} s (qa.server_timeout_s){self._tail()}"
        )

    def _tail(self) -> str:
        if not self.log_path or not self.log_path.exists():
            return ""
        lines = self.log_path.read_text(errors="replace").strip().splitlines()[-5:]
        return ("; its last output:\n  " + "\n  ".join(lines)) if lines else ""

    def stop(self) -> None:
        if self.proc is not None:  # the group, even when its leader (a shell) is gone
            self.proc.stop(grace_s=3.0)
