"""A memory bound for one command: a cgroup where this machine lets us make one, else a limit
per process.

    bound = memory_bound(512 << 20)
    with bound.command() as cmd:
        done = runner.run(cmd.wrap(argv), ...)
    cmd.exceeded           # the cgroup's OOM killer ended it
    bound.how              # "cgroup v1 memory, 512 MB for the whole command" ...

- cgroup v1 (a writable memory hierarchy, as in many containers): each command gets a child of
  our own cgroup with `memory.limit_in_bytes`; the limit covers every process the command starts
  together, its kernel OOM killer ends it at the limit, and when the command is over every
  process still in the group is killed (even one that escaped its process group) and the group
  removed.
- Otherwise RLIMIT_DATA (`ulimit -d`): each process's heap and private mappings are capped, so
  one process cannot take the machine, but N processes can take N times the limit. On cgroup v2
  hosts a delegated subtree would do better; that is not built yet.
- macOS enforces neither; there the bound is "none", and the record says so.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path


@dataclass
class Command:
    """One command's bound: `wrap` its argv before running it; `exceeded` after."""

    prefix: list[str] = field(default_factory=list)
    exceeded: bool = False

    def wrap(self, argv: list[str]) -> list[str]:
        return [*self.prefix, *argv]


@dataclass(frozen=True)
class MemoryBound:
    limit_bytes: int
    how: str  # for the record: which mechanism, and what it covers
    cgroup_parent: Path | None = None  # cgroup v1: where a command's group is made

    @contextmanager
    def command(self) -> Iterator[Command]:
        if self.cgroup_parent is None:
            prefix = []
            if self.limit_bytes and self.how.startswith("RLIMIT_DATA"):
                # sh's `ulimit` sets the limit on itself and exec keeps it for the command.
                prefix = ["/bin/sh", "-c", 'ulimit -d "$0" && exec "$@"',
                          str(self.limit_bytes // 1024)]
            yield Command(prefix)
            return
        group = _make_group(self.cgroup_parent, self.limit_bytes)
        # The shell joins the group before exec: nothing the command starts is ever outside it.
        cmd = Command(["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(group / "cgroup.procs")])
        try:
            yield cmd
        finally:
            cmd.exceeded = _oom_kills(group) > 0
            _remove_group(group)


def memory_bound(limit_bytes: int) -> MemoryBound:
    """The best bound this machine offers for `limit_bytes` (0: unbounded)."""
    mb = limit_bytes // (1 << 20)
    if limit_bytes <= 0:
        return MemoryBound(0, "none (sandbox.memory_mb = 0)")
    if sys.platform == "darwin":
        return MemoryBound(0, "none (macOS enforces no per-command memory limit)")
    parent = _cgroup_v1_memory()
    if parent is not None:
        return MemoryBound(limit_bytes, f"cgroup v1 memory, {mb} MB for the whole command",
                           parent)
    return MemoryBound(limit_bytes, f"RLIMIT_DATA, {mb} MB per process (no writable memory "
                                    "cgroup here)")


@lru_cache(maxsize=1)
def _cgroup_v1_memory() -> Path | None:
    """Our own cgroup in a writable v1 memory hierarchy, if we can make children in it."""
    try:
        mountinfo = Path("/proc/self/mountinfo").read_text()
        cgroups = Path("/proc/self/cgroup").read_text()
    except OSError:
        return None
    mount = None
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        parts, tail = left.split(), right.split()
        if len(tail) >= 3 and tail[0] == "cgroup" and "memory" in tail[2].split(","):
            mount = (Path(parts[4]), parts[3])  # mount point, root of the hierarchy it shows
            break
    if mount is None:
        return None
    for line in cgroups.splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            point, root = mount
            rel = os.path.relpath(path, root) if root != "/" else path.lstrip("/")
            if rel.startswith(".."):
                return None
            ours = (point / rel).resolve()
            probe = ours / f"studio-coder-probe-{os.getpid()}"
            try:
                probe.mkdir()
                ok = (probe / "memory.limit_in_bytes").exists()
                probe.rmdir()
            except OSError:
                return None
            return ours if ok else None
    return None


_counter = iter(range(1, 1 << 62))


def _make_group(parent: Path, limit_bytes: int) -> Path:
    group = parent / f"studio-coder-{os.getpid()}-{next(_counter)}"
    group.mkdir()
    (group / "memory.limit_in_bytes").write_text(str(limit_bytes))
    swap = group / "memory.memsw.limit_in_bytes"
    if swap.exists():  # with swap on, the limit would only push the command into swap
        try:
            swap.write_text(str(limit_bytes))
        except OSError:
            pass
    return group


def _oom_kills(group: Path) -> int:
    try:  # `oom_kill` is there since Linux 4.13
        for line in (group / "memory.oom_control").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _remove_group(group: Path, wait_s: float = 5.0) -> None:
    """Kill whatever is still in the group (a process that escaped its session too) and remove
    the group once it is empty."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            pids = [int(p) for p in (group / "cgroup.procs").read_text().split()]
        except OSError:
            pids = []
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            group.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() > deadline:
                return  # left behind, empty soon; it holds no memory once its processes die
            time.sleep(0.002)  # its last processes are still exiting
