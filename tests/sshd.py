"""A real OpenSSH sshd for tests: throwaway host and user keys, a free loopback port, its own log.

    with Sshd(tmp_path) as sshd:          # starts /usr/sbin/sshd -D -f CONFIG -e
        cfg = sshd.tunnel_section(remote_port=grpc_port)   # a TunnelSection that trusts it
        sshd.kill()                       # the listener and every per-connection child
        sshd.start()                      # same port, same keys
        sshd.connections()                # "Connection from" lines in its log so far

`netns="name"` runs it inside that network namespace (`ip netns exec`), listening on `host`.
Needs root (sshd's privilege separation) and ssh-keygen; `available()` says why not.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from studio_common.net import free_port

SSHD = "/usr/sbin/sshd"


def available() -> str:
    """'' when a test sshd can run here, else the reason."""
    if not Path(SSHD).exists():
        return f"{SSHD} is not installed (apt-get install openssh-server)"
    if not shutil.which("ssh-keygen"):
        return "ssh-keygen is not installed (apt-get install openssh-client)"
    if os.geteuid() != 0:
        return "sshd's privilege separation needs root"
    return ""


def keygen(path: Path, kind: str = "ed25519") -> Path:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "studio-coder-test", "-f", str(path)],
        check=True,
    )
    return path


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for c in children.get(p, []):
            out.append(c)
            todo.append(c)
    return out


class Sshd:
    def __init__(
        self,
        workdir: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        netns: str = "",
        user: str = "root",
        extra: tuple[str, ...] = (),
    ) -> None:
        self.dir = Path(workdir) / f"sshd-{host}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.host = host
        self.netns = netns
        self.user = user
        self.port = port or free_port("127.0.0.1" if netns else host)
        self.host_key = keygen(self.dir / "host_ed25519")
        self.user_key = keygen(self.dir / "user_ed25519")
        self.authorized_keys = self.dir / "authorized_keys"
        self.authorized_keys.write_text((self.dir / "user_ed25519.pub").read_text())
        self.known_hosts = self.dir / "known_hosts"
        name = host if self.port == 22 else f"[{host}]:{self.port}"
        pub = (self.dir / "host_ed25519.pub").read_text().split()
        self.known_hosts.write_text(f"{name} {pub[0]} {pub[1]}\n")
        self.log = self.dir / "sshd.log"
        self.config = self.dir / "sshd_config"
        self.config.write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    f"ListenAddress {host}",
                    f"HostKey {self.host_key}",
                    f"PidFile {self.dir / 'sshd.pid'}",
                    f"AuthorizedKeysFile {self.authorized_keys}",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "StrictModes no",
                    "PermitRootLogin prohibit-password",
                    "AllowTcpForwarding yes",
                    "LogLevel VERBOSE",
                    "MaxStartups 100",
                    *extra,
                    "",
                ]
            )
        )
        self.proc: subprocess.Popen[bytes] | None = None
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # privilege-separation directory

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 10.0) -> None:
        cmd = [SSHD, "-D", "-f", str(self.config), "-e"]
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        seen = len(self.log_text())  # a restart appends: the dead instance said it listened too
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited with {self.proc.returncode}:\n{self.log_text()}")
            if "Server listening" in self.log_text()[seen:]:
                return
            time.sleep(0.02)
        raise RuntimeError(f"sshd did not listen on {self.host}:{self.port} in {timeout} s")

    def kill(self) -> None:
        """SIGKILL sshd and every child it forked for a connection, as a crash would."""
        if self.proc is None:
            return
        pids = [self.proc.pid, *_descendants(self.proc.pid)]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=10)
        self.proc = None
        # Lines from the dead instance stay in the log; the next start appends.
        with self.log.open("a") as f:
            f.write("--- killed by the test ---\n")

    stop = kill

    def restart(self) -> None:
        self.kill()
        self.start()

    def __enter__(self) -> Sshd:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()

    # ------------------------------------------------------------------ inspection

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def connections(self) -> int:
        return self.log_text().count("Connection from ")

    def nodelay(self) -> list[bool]:
        """TCP_NODELAY on sshd's end of each client connection it holds (read through pidfd_getfd).

        Linux ≥ 5.6 and root. One entry per connection, whichever of sshd's processes holds it.
        """
        import ctypes

        import psutil

        libc = ctypes.CDLL(None, use_errno=True)
        pidfd_getfd = 438  # the same number on x86_64 and arm64
        seen: dict[tuple, bool] = {}
        pids = [self.proc.pid, *_descendants(self.proc.pid)] if self.proc else []
        for pid in pids:
            try:
                conns = psutil.Process(pid).net_connections(kind="tcp")
            except psutil.Error:
                continue
            for c in conns:
                if c.status != "ESTABLISHED" or c.laddr.port != self.port or c.raddr in seen:
                    continue
                pidfd = os.pidfd_open(pid)
                try:
                    fd = libc.syscall(pidfd_getfd, pidfd, c.fd, 0)
                    if fd < 0:
                        raise OSError(ctypes.get_errno(), f"pidfd_getfd({pid}, {c.fd})")
                    with socket.socket(fileno=fd) as s:
                        seen[c.raddr] = bool(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                finally:
                    os.close(pidfd)
        return list(seen.values())

    def tunnel_section(self, remote_port: int, **overrides: object):  # -> TunnelSection
        from agent_node.config import TunnelSection

        cfg = TunnelSection(
            enabled=True,
            host=self.host,
            port=self.port,
            user=self.user,
            identity_file=str(self.user_key),
            known_hosts=str(self.known_hosts),
            remote_host="127.0.0.1",
            remote_port=remote_port,
            probe_interval_s=0.5,
            probe_timeout_s=0.5,
            probe_failures=2,
            backoff_start_s=0.5,
            backoff_max_s=2.0,
            connect_timeout_s=3.0,
        )
        for k, v in overrides.items():
            setattr(cfg, k, v)
        return cfg
