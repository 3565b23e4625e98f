"""bash: run a shell command in the worktree, with a timeout that kills everything it started."""

from __future__ import annotations

import codecs
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import IO, Any

from agent_node.tools import Tool, ToolError
from agent_node.tools.truncate import marker

TERM_GRACE_S = 2.0  # between SIGTERM and SIGKILL

DESCRIPTION = (
    "Run a bash command in the worktree root (its working directory) and return the exit code "
    "and the combined stdout and stderr. Long output keeps its head and tail. The command has "
    "no input (stdin is empty) and a timeout: at the timeout it is killed with every process it "
    "started. Background processes do not outlive the command either, so start a server and "
    "query it within one command."
)


class _Capture:
    """Read a pipe to its end, keeping only the head and the tail: memory stays bounded however
    much a command prints."""

    def __init__(self, stream: IO[bytes], limit: int) -> None:
        self.head_limit = limit // 2
        self.tail_limit = limit - self.head_limit
        self.head = ""
        self.tail = ""
        self.total = 0
        self._stream = stream  # kept open as long as the reader needs it
        self._fd = stream.fileno()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        while True:
            try:
                chunk = os.read(self._fd, 65536)
            except OSError:
                chunk = b""
            text = decoder.decode(chunk, final=not chunk)
            self._add(text)
            if not chunk:
                break
        self._stream.close()

    def _add(self, text: str) -> None:
        self.total += len(text)
        room = self.head_limit - len(self.head)
        if room > 0:
            self.head += text[:room]
            text = text[room:]
        if text:
            self.tail = (self.tail + text)[-self.tail_limit :] if self.tail_limit else ""

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def text(self) -> str:
        cut = self.total - len(self.head) - len(self.tail)
        return self.head + (marker(cut) if cut > 0 else "") + self.tail


def _group_alive(pgid: int) -> bool:
    """Does any process of group `pgid` still run? Zombies do not count: they are dead, only
    waiting for init to reap them, which in a container can take a while."""
    proc_dir = Path("/proc")
    if proc_dir.is_dir():  # Linux: look at each process's state and group
        for entry in proc_dir.iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[-1].split()
            if len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
                return True
        return False
    try:  # elsewhere (macOS): signal 0 reaches zombies too, so this may wait the full grace
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_group(proc: subprocess.Popen[bytes], grace_s: float) -> None:
    """SIGTERM the whole process group, then SIGKILL whatever is left after `grace_s`."""
    pgid = proc.pid  # start_new_session: the shell leads its own group
    if proc.returncode is not None and not _group_alive(pgid):
        return  # exited and left nothing behind (and its pid may already be someone else's)
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _group_alive(pgid):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def make_bash(root: Path, *, timeout_s: float = 120, output_limit: int = 12_000) -> Tool:
    parameters: dict[str, Any] = {
        "type": "object",
        "properties": {
            "command": {"type": "string", "description": "The bash command to run."},
            "timeout": {
                "type": "number",
                "exclusiveMinimum": 0,
                "description": f"Seconds before it is killed; default and most {timeout_s:g}.",
            },
        },
        "required": ["command"],
        "additionalProperties": False,
    }
    cwd = root.resolve()

    def execute(args: dict[str, Any]) -> str:
        command: str = args["command"]
        if not command.strip():
            raise ToolError("command is empty; give a bash command to run")
        limit = min(float(args.get("timeout", timeout_s)), timeout_s)
        env = {**os.environ, "PAGER": "cat", "GIT_PAGER": "cat", "TERM": "dumb"}
        started = time.monotonic()
        proc = subprocess.Popen(
            ["bash", "-c", command],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so a timeout can kill all of it
        )
        assert proc.stdout is not None
        capture = _Capture(proc.stdout, output_limit)
        timed_out = False
        try:
            proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            # On timeout this is the kill; after a normal exit it clears away any background
            # process the command left behind (which would also hold the pipe open).
            _kill_group(proc, TERM_GRACE_S)
            # A process that left the group (setsid) may still hold the pipe; its reader thread
            # is a daemon and ends when that process does.
            capture.join(timeout=TERM_GRACE_S)
        seconds = time.monotonic() - started
        output = capture.text() or "(no output)"
        if timed_out:
            raise ToolError(
                f"command timed out after {limit:g} s and was killed with every process it "
                f"started; output so far:\n{output}\n[make it faster, run less at once, or pass "
                f"a timeout up to {timeout_s:g} s]"
            )
        code = proc.returncode
        status = f"exit code {code}" if code >= 0 else f"killed by signal {-code}"
        return f"{status} ({seconds:.1f} s)\n{output}"

    return Tool("bash", DESCRIPTION, parameters, execute)
