"""The agent node's one process runner: a session of its own, bounded capture, TERM then KILL.

    done = run(["bash", "-c", "make test"], cwd=tree, timeout_s=600, output_limit=12_000)
    done.exit_code, done.output, done.timed_out       # output keeps its head and its tail

    server = start(["python", "-m", "http.server"], cwd=site, log_path=site / "server.log")
    ...
    server.stop()                                      # the whole group: TERM, grace, KILL

Every process leads a session (and so a process group) of its own, and at the end, whether it
exited or timed out, the whole group gets SIGTERM and then SIGKILL after a grace period, so
nothing it left in the background lives on. A process that leaves the group (`setsid`) is out
of this runner's reach: the sandbox's PID namespace, or the command's cgroup, is what ends those
(`agent_node.sandbox`).
"""

from __future__ import annotations

import codecs
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

TERM_GRACE_S = 2.0  # between SIGTERM and SIGKILL


def marker(cut: int) -> str:
    """What stands where output was cut: how many characters the reader did not see."""
    return f"\n[... {cut} characters cut ...]\n"


@dataclass
class Completed:
    exit_code: int | None  # None: killed at the timeout; negative: killed by that signal
    output: str  # stdout and stderr together, head and tail kept
    seconds: float
    timed_out: bool = False
    output_chars: int = 0  # how much the command printed in all
    memory_exceeded: bool = False  # killed at its memory limit (set by the sandbox)

    @property
    def passed(self) -> bool:
        return self.exit_code == 0

    def status(self) -> str:
        """`exit code 3`, `killed by signal 9`, `timed out`: how the command ended."""
        if self.timed_out:
            return "timed out"
        if self.memory_exceeded:
            return "killed at its memory limit"
        assert self.exit_code is not None
        return (f"exit code {self.exit_code}" if self.exit_code >= 0
                else f"killed by signal {-self.exit_code}")


class Capture:
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
        self._thread = threading.Thread(target=self._run, name="capture", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        while True:
            try:
                chunk = os.read(self._fd, 65536)
            except OSError:
                chunk = b""
            self._add(decoder.decode(chunk, final=not chunk))
            if not chunk:
                break
        self._stream.close()

    def _add(self, text: str) -> None:
        self.total += len(text)
        room = self.head_limit - len(self.head)
        if room > 0:
            self.head += text[:room]
            text = text[room:]
        if text and self.tail_limit:
            self.tail = (self.tail + text)[-self.tail_limit:]

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def text(self) -> str:
        cut = self.total - len(self.head) - len(self.tail)
        return self.head + (marker(cut) if cut > 0 else "") + self.tail


def group_alive(pgid: int) -> bool:
    """Does any process of group `pgid` still run? Zombies do not count: they are dead, only
    waiting for init to reap them, which in a container can take a while."""
    try:  # the common case, cheaply: no process at all in the group
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
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
    return True  # elsewhere (macOS): signal 0 reaches zombies too, so this may wait the grace


def kill_group(proc: subprocess.Popen[bytes], grace_s: float = TERM_GRACE_S) -> None:
    """SIGTERM the process's whole group, then SIGKILL whatever is left after `grace_s`."""
    pgid = proc.pid  # start_new_session: the process leads its own group
    if proc.returncode is not None and not group_alive(pgid):
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
    while group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if group_alive(pgid):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def run(
    argv: Sequence[str],
    *,
    cwd: Path,
    timeout_s: float,
    output_limit: int,
    env: Mapping[str, str] | None = None,
    pass_fds: Sequence[int] = (),
    grace_s: float = TERM_GRACE_S,
) -> Completed:
    """Run `argv` to its end or its timeout; stdin is empty, stdout and stderr are one stream."""
    started = time.monotonic()
    proc = subprocess.Popen(
        list(argv), cwd=cwd, env=dict(env) if env is not None else None,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True, pass_fds=tuple(pass_fds),
    )
    assert proc.stdout is not None
    capture = Capture(proc.stdout, output_limit)
    # A blocking wait in a thread, not Popen.wait(timeout=), which polls with sleeps of up to
    # 50 ms and so adds tens of ms to every short command.
    waiter = threading.Thread(target=proc.wait, name="wait", daemon=True)
    waiter.start()
    try:
        waiter.join(timeout_s)
        timed_out = waiter.is_alive()
    finally:
        # On timeout this is the kill; after a normal exit it clears away any background
        # process the command left in its group (which would also hold the pipe open).
        kill_group(proc, grace_s)
        # A process that left the group may still hold the pipe; the reader is a daemon thread
        # and ends when that process does.
        capture.join(timeout=grace_s)
    return Completed(None if timed_out else proc.returncode, capture.text(),
                     time.monotonic() - started, timed_out, capture.total)


class Process:
    """A long-running process started by `start`; `stop` ends its whole group."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.pid = proc.pid

    def poll(self) -> int | None:
        return self.proc.poll()

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def wait(self, timeout: float | None = None) -> int:
        return self.proc.wait(timeout)

    def stop(self, grace_s: float = TERM_GRACE_S) -> int | None:
        """SIGTERM the group, SIGKILL it after `grace_s`; the exit code."""
        kill_group(self.proc, grace_s)
        return self.proc.returncode


def start(
    argv: Sequence[str],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    log_path: Path | None = None,
) -> Process:
    """Start `argv` in a session of its own, its output appended to `log_path` (or dropped)."""
    log = log_path.open("ab") if log_path else None
    try:
        proc = subprocess.Popen(
            list(argv), cwd=cwd, env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL, stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        if log is not None:
            log.close()  # the child holds its own copy
    return Process(proc)
