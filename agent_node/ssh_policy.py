"""The tunnel's SSH policy: which host keys it trusts and which identity it offers, as OpenSSH.

    known = load_known_hosts(cfg.known_hosts, source)     # TunnelFailed if unreadable
    check_host_key(known, offered_key, cfg, source)        # HostKeyRefused unless trusted
    key = load_identity(cfg, source)                       # TunnelFailed if missing, open, bad
    authenticate(transport, key, cfg, source)              # AuthenticationFailed if refused

The known_hosts file is read the way OpenSSH reads it: plain and hashed host names, `@revoked`
keys (never accepted, for any host) and `@cert-authority` lines, which the tunnel cannot use
(paramiko does not verify host certificates) and says so instead of trusting them. An identity
file that group or others may read is refused, as ssh refuses it, with the chmod that fixes it.
Every refusal fails closed and names the file, the line and the fix.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

import paramiko

from agent_node.config import TunnelSection
from agent_node.exceptions import AuthenticationFailed, HostKeyRefused, TunnelFailed

log = logging.getLogger(__name__)

# known_hosts names RSA keys "ssh-rsa"; the server signs with any of these algorithms.
KEY_ALGORITHMS = {"ssh-rsa": ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa")}


def known_hosts_name(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


def known_hosts_line(host: str, port: int, key: paramiko.PKey) -> str:
    return f"{known_hosts_name(host, port)} {key.get_name()} {key.get_base64()}"


@dataclass
class KnownHosts:
    """A known_hosts file as OpenSSH reads it."""

    path: Path
    keys: paramiko.HostKeys = field(default_factory=paramiko.HostKeys)
    revoked: list[tuple[int, paramiko.PKey]] = field(default_factory=list)  # (line, key)
    cert_authorities: list[tuple[int, list[str]]] = field(default_factory=list)  # (line, hosts)

    def lookup(self, name: str) -> dict[str, paramiko.PKey]:
        return dict(self.keys.lookup(name) or {})

    def authorities_for(self, name: str) -> list[int]:
        """Line numbers of @cert-authority lines whose host patterns match `name`."""
        return [n for n, patterns in self.cert_authorities
                if any(_matches(name, p) for p in patterns if not p.startswith("!"))]


def _matches(name: str, pattern: str) -> bool:
    """OpenSSH's host pattern: `*` and `?` are wildcards, everything else (brackets too) is
    literal, case-insensitive."""
    regex = re.escape(pattern.lower()).replace(r"\*", ".*").replace(r"\?", ".")
    return re.fullmatch(regex, name.lower()) is not None


def _key(key_type: str, data: str) -> paramiko.PKey | None:
    try:
        return paramiko.PKey.from_type_string(key_type, base64.b64decode(data, validate=True))
    except paramiko.UnknownKeyType:
        return None  # a key type paramiko does not know can never match what it was offered


def load_known_hosts(known_hosts: str, source: str) -> KnownHosts:
    """Read `known_hosts` (a missing file is empty); TunnelFailed names a line it cannot read."""
    if not known_hosts:
        raise TunnelFailed(f"tunnel.known_hosts is not set in {source}; point it at a "
                           "known_hosts file holding the inference node's host key")
    path = Path(known_hosts).expanduser()
    out = KnownHosts(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return out
    except (OSError, UnicodeDecodeError) as e:
        raise TunnelFailed(f"known_hosts file {path} cannot be read: {e}") from None
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        marker = fields.pop(0) if fields[0].startswith("@") else ""
        if marker not in ("", "@revoked", "@cert-authority") or len(fields) < 3:
            raise TunnelFailed(
                f"known_hosts file {path} line {n} is not a known_hosts line (expected "
                "[@revoked|@cert-authority] HOSTS KEYTYPE BASE64); fix or delete it:\n{raw}")
        hosts, key_type, data = fields[0].split(","), fields[1], fields[2]
        if marker == "@cert-authority":
            out.cert_authorities.append((n, hosts))
            continue
        try:
            key = _key(key_type, data)
        except (binascii.Error, ValueError, paramiko.SSHException) as e:
            raise TunnelFailed(f"known_hosts file {path} line {n} has a {key_type} key that "
                               f"cannot be decoded ({e}); fix or delete that line") from None
        if key is None:
            log.info("known_hosts %s line %d: key type %s is not supported; skipped", path, n,
                     key_type)
        elif marker == "@revoked":
            out.revoked.append((n, key))
        else:
            for host in hosts:
                out.keys.add(host, key.get_name(), key)
    return out


def check_host_key(known: KnownHosts, key: paramiko.PKey, cfg: TunnelSection,
                   source: str) -> None:
    """Return if `key` is trusted for the tunnel's host; else HostKeyRefused saying why."""
    name = known_hosts_name(cfg.host, cfg.port)
    path = known.path
    line = known_hosts_line(cfg.host, cfg.port, key)
    offered = f"{key.get_name()} {key.fingerprint}"
    for n, bad in known.revoked:
        if bad == key:
            raise HostKeyRefused(
                f"REVOKED HOST KEY: {name} offered {offered}, which {path} line {n} marks "
                "@revoked. The tunnel will not connect with it. If the host should still be "
                "trusted, it needs a new host key (`ssh-keygen -A` on it after removing the "
                f"old ones), added to {path}", fingerprint=key.fingerprint, line=line)
    have = known.lookup(name)
    if key.get_name() in have:
        if have[key.get_name()] == key:
            return
        old = have[key.get_name()].fingerprint
        raise HostKeyRefused(
            f"HOST KEY MISMATCH for {name}: {path} has {key.get_name()} {old} but the server "
            f"offered {offered}. Someone may be intercepting the connection, or the host was "
            f"reinstalled. Check the key on the host (`ssh-keygen -lf "
            f"/etc/ssh/ssh_host_{key.get_name().removeprefix('ssh-')}_key.pub`); if it "
            f"matches, run `ssh-keygen -R '{name}' -f {path}` and add this line to {path}:\n"
            f"{line}", fingerprint=key.fingerprint, line=line)
    if have:
        raise HostKeyRefused(
            f"host key for {name} refused: {path} has only {', '.join(have)} for it but the "
            f"server offered {offered}. If the host's keys changed on purpose, add this line "
            f"to {path}:\n{line}", fingerprint=key.fingerprint, line=line)
    authorities = known.authorities_for(name)
    if authorities:
        lines = ", ".join(str(n) for n in authorities)
        raise HostKeyRefused(
            f"host key for {name} refused: {path} trusts it only through @cert-authority "
            f"(line {lines}), and the tunnel does not verify host certificates. Check the "
            "fingerprint on the host (`ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub`) and, if "
            f"it is {key.fingerprint}, add the host's own key to {path}:\n{line}",
            fingerprint=key.fingerprint, line=line)
    if cfg.trust_on_first_use:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(line + "\n")
        log.warning("trust on first use: added %s %s to %s", name, offered, path)
        return
    raise HostKeyRefused(
        f"host key for {name} is not in {path}; the server offered {offered}. Check that "
        f"fingerprint on the host (`ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub`) and, if it "
        f"matches, add this line to {path}:\n{line}\n"
        f"(or set tunnel.trust_on_first_use = true in {source} to accept it once)",
        fingerprint=key.fingerprint, line=line)


def check_private_key_mode(path: Path) -> None:
    """TunnelFailed if group or others may read or write the key file, as ssh refuses it."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise TunnelFailed(
            f"UNPROTECTED PRIVATE KEY FILE: {path} has mode {mode:04o}, so other users of this "
            f"machine can read it; ssh refuses such a key and so does the tunnel. Run "
            f"`chmod 600 {path}` (and make sure nobody copied it meanwhile)")


def load_identity(cfg: TunnelSection, source: str) -> paramiko.PKey:
    """The configured private key; TunnelFailed if unset, missing, readable by others or bad."""
    if not cfg.identity_file:
        raise TunnelFailed(f"tunnel.identity_file is not set in {source}; point it at "
                           "the private key authorised on the inference node")
    path = Path(cfg.identity_file).expanduser()
    try:
        check_private_key_mode(path)
        return paramiko.PKey.from_path(path)
    except FileNotFoundError:
        raise TunnelFailed(f"tunnel.identity_file {path} does not exist; create it with "
                           f"`ssh-keygen -t ed25519 -f {path}` and authorise its .pub on "
                           f"{cfg.host}") from None
    except (paramiko.SSHException, OSError, ValueError) as e:
        raise TunnelFailed(f"tunnel.identity_file {path} cannot be read as a private key "
                           f"({e}); it must be an unencrypted OpenSSH or PEM key") from None


def _extra_keys(cfg: TunnelSection) -> list[paramiko.PKey]:
    keys: list[paramiko.PKey] = []
    if cfg.allow_agent:
        keys += list(paramiko.Agent().get_keys())
    if cfg.look_for_keys:
        for name in ("id_ed25519", "id_ecdsa", "id_rsa"):
            path = Path("~/.ssh").expanduser() / name
            if path.is_file():
                try:
                    check_private_key_mode(path)
                    keys.append(paramiko.PKey.from_path(path))
                except (TunnelFailed, paramiko.SSHException, OSError, ValueError) as e:
                    log.warning("skipping %s: %s", path, e)
    return keys


def authenticate(transport: paramiko.Transport, pkey: paramiko.PKey, cfg: TunnelSection,
                 source: str, transient: type[Exception]) -> None:
    """Offer `pkey` (then the agent's and ~/.ssh keys when allowed); AuthenticationFailed if
    none is accepted, `transient` if the connection broke off or sshd did not answer in time."""
    keys = [pkey, *_extra_keys(cfg)]
    last: Exception | None = None
    for key in keys:
        started = time.monotonic()
        try:
            transport.auth_publickey(cfg.user, key)
        except paramiko.AuthenticationException as e:
            # paramiko raises this one class for a refusal, for a connection that closed
            # mid-auth (sshd restarting) and for no answer in auth_timeout (a busy host); only
            # the refusal is the user's to fix, the others are worth another attempt.
            if not transport.is_active():
                raise transient(f"SSH authentication with {cfg.host}:{cfg.port} broke off: "
                                f"the connection closed ({e})") from None
            waited = time.monotonic() - started
            if transport.auth_timeout and waited >= transport.auth_timeout:
                raise transient(f"sshd on {cfg.host}:{cfg.port} did not answer the key offer "
                                f"within {waited:.1f} s (tunnel.connect_timeout_s)") from None
            last = e
            continue
        except (paramiko.SSHException, OSError, EOFError) as e:
            raise transient(f"SSH authentication with {cfg.host}:{cfg.port} broke off: "
                            f"{e}") from None
        if transport.is_authenticated():
            return
    offered = ", ".join(f"{k.get_name()} {k.fingerprint}" for k in keys)
    raise AuthenticationFailed(
        f"{cfg.host}:{cfg.port} refused user {cfg.user!r} with {offered} "
        f"(identity_file {cfg.identity_file}): {last}. Add the matching .pub line to "
        f"~{cfg.user}/.ssh/authorized_keys on {cfg.host}, or fix tunnel.user / "
        f"tunnel.identity_file in {source}")
