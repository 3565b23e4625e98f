"""bubblewrap on Linux: the mount, PID, network and user namespaces one command runs in.

    argv = bwrap_argv("/usr/bin/bwrap", ["bash", "-c", "pytest"], view, network=False,
                      seccomp_fd=fd, tmp_bytes=1 << 30)

What the command sees:
- `/` read-only (so the user's repository, its `.git` and the venv are readable, never written);
- a fresh tmpfs at `/tmp` (HOME and TMPDIR live there) and a fresh `/dev`, `/proc`; of the
  host's /tmp, only the tool chains `sandbox.tools_under_tmp` finds, read-only;
- the hidden paths as empty folders or empty files: `$STUDIO_CODER_HOME` (the run records),
  the studio-coder config folder and the record key, `/run` (system sockets: docker, systemd,
  D-Bus), the runtime dir, and `sandbox.hide`;
- then the writable paths bound read-write and the read-only ones read-only, at their own
  paths, even inside a hidden folder (the run's checkout lives in `$STUDIO_CODER_HOME`).

It runs with no capabilities, in new user, mount, PID, IPC, UTS and cgroup namespaces and (by
default) a network namespace of its own with only loopback; it cannot make user namespaces of
its own; when agent-node dies it dies. In its PID namespace bwrap is PID 1, so when the command
ends, or the runner kills bwrap, the kernel kills every process left in it: `setsid` escapes
nothing. A seccomp filter refuses `socket(AF_UNIX)` and io_uring (which can make sockets without
that call), so a Unix socket left visible somewhere on a read-only path (docker's, an agent's)
cannot be reached either; `socketpair` (pipes between processes) still works.
"""

from __future__ import annotations

import errno
import os
import platform
import struct
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

HOME_IN_SANDBOX = "/tmp/home"


@dataclass(frozen=True)
class View:
    """What one command may see and touch, beyond the read-only root."""

    cwd: Path
    writable: tuple[Path, ...]
    read_only: tuple[Path, ...] = ()
    hidden: tuple[Path, ...] = ()


def _under(path: Path, roots: Sequence[Path]) -> bool:
    return any(path == r or path.is_relative_to(r) for r in roots)


def bwrap_argv(bwrap: str, argv: Sequence[str], view: View, *, network: bool,
               seccomp_fd: int | None, tmp_bytes: int) -> list[str]:
    out = [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    if tmp_bytes:
        out += ["--size", str(tmp_bytes)]
    out += ["--tmpfs", "/tmp", "--dir", HOME_IN_SANDBOX]
    hidden_dirs: list[Path] = [Path("/tmp")]
    for path in sorted({p.resolve() for p in view.hidden}, key=lambda p: len(p.parts)):
        if _under(path, hidden_dirs) or not path.exists():
            continue  # already invisible, or nothing to hide
        if path.is_dir():
            out += ["--tmpfs", str(path)]
            hidden_dirs.append(path)
        else:
            out += ["--ro-bind", "/dev/null", str(path)]
    for path in view.writable:
        out += ["--bind", str(path), str(path)]
    for path in view.read_only:
        out += ["--ro-bind", str(path), str(path)]
    resolv = Path("/etc/resolv.conf").resolve()
    if network and resolv.exists() and _under(resolv, hidden_dirs[1:]):
        out += ["--ro-bind", str(resolv), str(resolv)]  # systemd-resolved keeps it in /run
    for path in hidden_dirs[1:]:  # empty and unwritable (a tmpfs would take RAM), once the
        out += ["--remount-ro", str(path)]  # binds inside it have their mount points
    out += ["--unshare-all", "--unshare-user", "--disable-userns", "--cap-drop", "ALL",
            "--die-with-parent", "--new-session"]
    if network:
        out.append("--share-net")
    if seccomp_fd is not None:
        out += ["--seccomp", str(seccomp_fd)]
    out += ["--chdir", str(view.cwd), "--setenv", "HOME", HOME_IN_SANDBOX,
            "--setenv", "TMPDIR", "/tmp", "--", *argv]
    return out


@lru_cache(maxsize=4)
def probe(bwrap: str) -> tuple[str, str]:
    """(version, "") when `bwrap` can make the sandbox here, else ("", why not)."""
    try:
        version = subprocess.run([bwrap, "--version"], capture_output=True, text=True,
                                 timeout=10).stdout.split()[-1]
        fd = seccomp_fd()
        try:
            done = subprocess.run(  # without our preloads, as every sandboxed command runs
                bwrap_argv(bwrap, ["true"], View(Path("/"), ()), network=False, seccomp_fd=fd,
                           tmp_bytes=1 << 20),
                capture_output=True, text=True, timeout=30, pass_fds=() if fd is None else (fd,),
                env={k: v for k, v in os.environ.items() if k != "LD_PRELOAD"})
        finally:
            if fd is not None:
                os.close(fd)
    except (OSError, subprocess.SubprocessError, IndexError) as e:
        return "", f"{bwrap} did not run: {e}"
    if done.returncode != 0:
        return "", f"{bwrap} could not make a sandbox here: {done.stderr.strip()}"
    return version, ""


# --- seccomp ---------------------------------------------------------------------------------

# struct seccomp_data: int nr; u32 arch; u64 instruction_pointer; u64 args[6]
_NR, _ARCH, _ARG0 = 0, 4, 16  # args[0]'s low half on a little-endian machine
_LD_W_ABS, _JEQ, _JGE, _RET = 0x20, 0x15, 0x35, 0x06
_ALLOW, _KILL_PROCESS, _ERRNO = 0x7FFF0000, 0x80000000, 0x00050000
_AF_UNIX = 1
# (audit arch, socket, io_uring_setup, x32 bit or 0) per machine we know
_ARCHES = {"x86_64": (0xC000003E, 41, 425, 0x40000000), "aarch64": (0xC00000B7, 198, 425, 0),
           "arm64": (0xC00000B7, 198, 425, 0)}


@lru_cache(maxsize=1)
def seccomp_program() -> bytes | None:
    """A classic-BPF filter refusing socket(AF_UNIX, ...) and io_uring_setup with EACCES, and
    killing a process of another ABI (its syscall numbers would slip past the checks). None on
    a machine whose numbers are not known here: then only the hidden paths stand in the way."""
    arch = _ARCHES.get(platform.machine())
    if arch is None:
        return None
    audit_arch, nr_socket, nr_io_uring, x32 = arch
    deny = _ERRNO | errno.EACCES
    # (code, k, jump-if-true label, jump-if-false label); labels are the RET lines below
    prog: list[tuple[int, int, str, str]] = [
        (_LD_W_ABS, _ARCH, "", ""),
        (_JEQ, audit_arch, "", "kill"),
        (_LD_W_ABS, _NR, "", ""),
        *([(_JGE, x32, "deny", "")] if x32 else []),
        (_JEQ, nr_io_uring, "deny", ""),
        (_JEQ, nr_socket, "", "allow"),
        (_LD_W_ABS, _ARG0, "", ""),
        (_JEQ, _AF_UNIX, "deny", "allow"),
    ]
    returns = {"allow": _ALLOW, "deny": deny, "kill": _KILL_PROCESS}
    at = {name: len(prog) + i for i, name in enumerate(returns)}
    out = b""
    for i, (code, k, jt, jf) in enumerate(prog):
        hop = {label: at[label] - i - 1 for label in (jt, jf) if label}
        out += struct.pack("=HBBI", code, hop.get(jt, 0), hop.get(jf, 0), k)
    for value in returns.values():
        out += struct.pack("=HBBI", _RET, 0, 0, value)
    return out


def seccomp_fd() -> int | None:
    """A fresh read end holding the filter for one command (the caller closes it once bwrap has
    started), or None when this machine has no filter. The filter is a few dozen bytes, far
    below a pipe's buffer, so it is written and the write end closed before bwrap starts."""
    program = seccomp_program()
    if program is None:
        return None
    r, w = os.pipe()
    try:
        os.write(w, program)
    finally:
        os.close(w)
    return r
