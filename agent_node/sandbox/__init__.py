"""Where every command from the coder's side runs: its bash tool and the gate's test command.

    sandbox = Sandbox.from_config(cfg.sandbox)          # SandboxUnavailable: none works here
    done = sandbox.run(["bash", "-c", "pytest -q"], cwd=checkout, writable=[checkout],
                       read_only=[git_dir], timeout_s=600, output_limit=12_000)
    sandbox.describe()   # for the run record: backend, network, memory bound

A confined command writes only to `writable` and a private tmp that dies with it; it sees the
rest of the machine read-only, except what is hidden: `$STUDIO_CODER_HOME` (run records,
checkouts, models), the studio-coder config folder, the record key, the system's and the
user's runtime sockets and `sandbox.hide`; it has no network unless `sandbox.network` is true;
its memory is bounded; its whole process tree dies at its end or its timeout. Linux uses
bubblewrap (`bwrap.py`), macOS `sandbox-exec` with the profile in `seatbelt.sb`.

Fail closed: when neither is available, `from_config` raises SandboxUnavailable, unless the
config says `sandbox.enabled = false`; then commands run unconfined and `describe()` says so.

`runner` is the agent node's one process runner (session, bounded capture, TERM then KILL);
everything here, the page server and the demo's inference node start through it.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent_node.config import DEFAULT_CONFIG, SandboxSection, record_key_path, studio_home
from agent_node.sandbox import bwrap, runner, seatbelt
from agent_node.sandbox.bwrap import View
from agent_node.sandbox.limits import MemoryBound, memory_bound
from agent_node.sandbox.runner import Completed

__all__ = ["Completed", "Sandbox", "SandboxUnavailable", "runner"]

# Never passed into a sandbox: sockets to agents and buses, and anything named like a secret.
# LD_PRELOAD: agent-node's own preloads (OpenBLAS for MLX) are not the command's; bwrap itself
# with OpenBLAS's threads preloaded can stall in a futex before it starts the command.
_DROP_ENV = {"LD_PRELOAD",
             "SSH_AUTH_SOCK", "SSH_AGENT_PID", "GPG_AGENT_INFO", "DBUS_SESSION_BUS_ADDRESS",
             "XDG_RUNTIME_DIR", "DISPLAY", "WAYLAND_DISPLAY", "KRB5CCNAME", "STUDIO_CODER_KEY",
             "GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_COMMON_DIR",
             "GIT_OBJECT_DIRECTORY", "GIT_ALTERNATE_OBJECT_DIRECTORIES"}
_SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|API_?KEY|ACCESS_KEY|"
                          r"PRIVATE_KEY", re.I)


class SandboxUnavailable(RuntimeError):
    """No sandbox can run here and the config does not allow running without one."""


def sandbox_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a confined command gets: ours, less sockets and secrets."""
    env = dict(os.environ if base is None else base)
    return {k: v for k, v in env.items() if k not in _DROP_ENV and not _SECRET_NAME.search(k)}


@dataclass(frozen=True)
class Sandbox:
    backend: str  # "bubblewrap", "sandbox-exec" or "none"
    version: str
    network: bool
    memory: MemoryBound
    hidden: tuple[Path, ...]
    executable: str = ""  # bwrap's path
    unconfined_reason: str = ""  # why there is no sandbox (backend "none")

    @property
    def confined(self) -> bool:
        return self.backend != "none"

    @classmethod
    def from_config(cls, section: SandboxSection | None = None, source: str = "") -> Sandbox:
        """The sandbox this machine offers under `section`; SandboxUnavailable when there is
        none and `enabled` is true. `source` names the config file in messages."""
        section = section or SandboxSection()
        where = source or "agent-node.toml"
        memory = memory_bound(section.memory_mb << 20)
        hidden = default_hidden(section.hide)
        if not section.enabled:
            return cls("none", "", True, memory, hidden,
                       unconfined_reason=f"sandbox.enabled = false in {where}")
        if sys.platform == "darwin":
            if seatbelt.available():
                return cls("sandbox-exec", "", section.network, memory, hidden)
            why = f"{seatbelt.SANDBOX_EXEC} is missing"
        elif sys.platform.startswith("linux"):
            found = shutil.which("bwrap")
            if found:
                version, why = bwrap.probe(found)
                if version:
                    return cls("bubblewrap", version, section.network, memory, hidden, found)
            else:
                why = ("bubblewrap (bwrap) is not installed; on Debian/Ubuntu "
                       "scripts/system-packages.sh installs it (apt-get install bubblewrap)")
        else:
            why = f"no sandbox is known for {sys.platform}"
        raise SandboxUnavailable(
            f"no sandbox for the coder's commands: {why}. Commands from the coder's side are "
            f"refused without one; to run them unconfined anyway (they could then reach your "
            f"repository, your files and the network), set `enabled = false` under [sandbox] "
            f"in {where}")

    def describe(self) -> dict[str, Any]:
        """What the run record keeps about the sandbox of every command of the run."""
        if not self.confined:
            return {"backend": "none", "reason": self.unconfined_reason,
                    "memory": self.memory.how}
        return {"backend": f"{self.backend} {self.version}".strip(), "network": self.network,
                "memory": self.memory.how}

    def run(self, argv: Sequence[str], *, cwd: Path, writable: Sequence[Path],
            read_only: Sequence[Path] = (), timeout_s: float, output_limit: int,
            env: Mapping[str, str] | None = None) -> Completed:
        """Run `argv` with `cwd` as its working folder, writing only to `writable`."""
        base = dict(os.environ if env is None else env)
        shown = tuple(p.resolve() for p in read_only)
        if self.backend == "bubblewrap":  # it gives the command a /tmp of its own
            shown += tools_under_tmp(base, self.hidden)
        view = View(cwd.resolve(), tuple(p.resolve() for p in writable), shown, self.hidden)
        with self.memory.command() as bound:
            if self.backend == "bubblewrap":
                done = self._run_bwrap(argv, view, bound.wrap, base, timeout_s, output_limit)
            elif self.backend == "sandbox-exec":
                done = self._run_seatbelt(argv, view, bound.wrap, base, timeout_s,
                                          output_limit)
            else:
                done = runner.run(bound.wrap(list(argv)), cwd=view.cwd, env=base,
                                  timeout_s=timeout_s, output_limit=output_limit)
        if bound.exceeded and not done.timed_out:
            done.memory_exceeded = True
            done.output += (f"\n[studio-coder: killed at its memory limit ({self.memory.how}; "
                            "sandbox.memory_mb)]")
        return done

    def _run_bwrap(self, argv: Sequence[str], view: View, wrap: Any, env: dict[str, str],
                   timeout_s: float, output_limit: int) -> Completed:
        fd = None if self.network else bwrap.seccomp_fd()
        try:
            full = bwrap.bwrap_argv(self.executable, argv, view, network=self.network,
                                    seccomp_fd=fd, tmp_bytes=self.memory.limit_bytes)
            return runner.run(wrap(full), cwd=view.cwd, env=sandbox_env(env),
                              timeout_s=timeout_s, output_limit=output_limit,
                              pass_fds=() if fd is None else (fd,))
        finally:
            if fd is not None:
                os.close(fd)

    def _run_seatbelt(self, argv: Sequence[str], view: View, wrap: Any, env: dict[str, str],
                      timeout_s: float, output_limit: int) -> Completed:
        with tempfile.TemporaryDirectory(prefix="studio-coder-tmp-") as tmp:
            home = Path(tmp) / "home"
            home.mkdir()
            full = seatbelt.seatbelt_argv(argv, view, tmp=Path(tmp), network=self.network)
            return runner.run(wrap(full), cwd=view.cwd,
                              env={**sandbox_env(env), "HOME": str(home), "TMPDIR": tmp},
                              timeout_s=timeout_s, output_limit=output_limit)


def tools_under_tmp(env: Mapping[str, str], hidden: Sequence[Path] = ()) -> tuple[Path, ...]:
    """The tool chains under the host's /tmp, which the sandbox replaces with its own: this
    interpreter's environment and the folders on the command's PATH (a clone or a virtualenv in
    /tmp, say). Each is shown read-only, a virtualenv whole (from the folder holding its
    pyvenv.cfg). Only the agent's own environment decides: a path the coder's command names is
    not shown, so nothing else of the host's /tmp is visible, nor anything under a hidden path."""
    tmp = Path("/tmp").resolve()
    found: set[Path] = set()
    for name in [sys.prefix, *env.get("PATH", "").split(os.pathsep)]:
        if not name.startswith("/"):
            continue
        path = Path(name).resolve()
        if path == tmp or not path.is_relative_to(tmp) or not path.is_dir():
            continue
        root = next((d for d in [path, *path.parents] if d != tmp and d.is_relative_to(tmp)
                     and (d / "pyvenv.cfg").is_file()), path)
        if not any(root.is_relative_to(h.resolve()) for h in hidden):
            found.add(root)
    return tuple(sorted(p for p in found
                        if not any(p != q and p.is_relative_to(q) for q in found)))


def default_hidden(extra: Sequence[str] = ()) -> tuple[Path, ...]:
    """What no command from the coder's side may see, on top of its private /tmp."""
    paths = [studio_home(), DEFAULT_CONFIG.expanduser().parent, record_key_path(), Path("/run")]
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        paths.append(Path(runtime))
    paths += [Path(p).expanduser() for p in extra]
    return tuple(p.absolute() for p in paths)
