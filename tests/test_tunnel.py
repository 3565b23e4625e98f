"""The managed SSH tunnel against a real OpenSSH sshd, with a real inference server behind it."""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import REPO, running_server
from sshd import Sshd, available, keygen

from agent_node.client import Client, GrpcModel, connect
from agent_node.config import AgentConfig, TunnelSection
from agent_node.exceptions import (
    AuthenticationFailed,
    HostKeyRefused,
    InferenceUnavailable,
    TunnelFailed,
)
from agent_node.tunnel import Tunnel, backoff_delay

pytestmark = pytest.mark.skipif(bool(available()), reason=available() or "sshd available")

LOOP = ["a", "b", "c", "d", "e", "f", "a"]  # never stops: a stream that lasts until cut


@pytest.fixture(scope="module")
def models(chain_models, tmp_path_factory) -> list[dict]:
    from tiny_models import build_chain_model

    long = build_chain_model(tmp_path_factory.mktemp("long") / "long", LOOP, context=65536)
    return [{"name": "hello", "path": str(chain_models["hello"])},
            {"name": "long", "path": str(long)}]


@pytest.fixture(scope="module")
def server(models) -> Iterator[int]:
    with running_server(models) as (_, target):
        yield int(target.rsplit(":", 1)[1])


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def agent_config(tunnel: TunnelSection, coder: str = "hello") -> AgentConfig:
    cfg = AgentConfig(tunnel=tunnel)
    cfg.inference.coder = [coder]
    cfg.inference.timeout_s = 60.0
    return cfg


def wait_for(tunnel: Tunnel, state: str, limit_s: float = 30.0) -> float:
    t0 = time.monotonic()
    while tunnel.status().state != state:
        assert time.monotonic() - t0 < limit_s, tunnel.status().describe()
        time.sleep(0.02)
    return time.monotonic() - t0


def wait_until_up(tunnel: Tunnel, limit_s: float = 30.0) -> float:
    return wait_for(tunnel, "up", limit_s)


def stream_until_cut(client: Client, cut, after: int = 5) -> tuple[int, float]:
    """Stream the never-ending model, call `cut()` after some deltas; return (deltas, seconds
    from the cut to the error)."""
    seen, t_cut = 0, 0.0
    events = GrpcModel(client, ["long"]).stream([user("go")], max_tokens=60000)
    with pytest.raises(InferenceUnavailable) as e:
        for ev in events:
            if ev.WhichOneof("event") == "delta":
                seen += 1
                if seen == after:
                    cut()
                    t_cut = time.monotonic()
    took = time.monotonic() - t_cut
    print(f"\nerror {took:.2f} s after the cut: {e.value}")
    return seen, took


def test_backoff_grows_by_the_factor_with_jitter_and_a_cap():
    cfg = TunnelSection(backoff_start_s=1.0, backoff_factor=1.6, backoff_jitter=0.2,
                        backoff_max_s=30.0)
    rng = random.Random(7)
    for attempt in range(1, 12):
        base = min(30.0, 1.6 ** (attempt - 1))
        d = backoff_delay(attempt, cfg, rng)
        assert base * 0.8 <= d <= min(30.0, base * 1.2)


def test_chat_streams_through_the_tunnel(server, tmp_path):
    with Sshd(tmp_path) as sshd, connect(agent_config(sshd.tunnel_section(server))) as client:
        assert client.tunnel is not None and client.tunnel.status().state == "up"
        reply = client.model().chat([user("hi")])
        assert reply.text.split() == ["hello", "world"]
        kinds = [ev.WhichOneof("event") for ev in client.model().stream([user("hi")])]
        assert kinds[0] == "admitted" and kinds[-1] == "done"


def test_killing_sshd_mid_stream_fails_clearly_and_a_restart_recovers(server, tmp_path):
    with Sshd(tmp_path) as sshd, connect(agent_config(sshd.tunnel_section(server))) as client:
        assert client.tunnel is not None
        seen, _ = stream_until_cut(client, sshd.kill)
        assert seen >= 5  # deltas already in flight may still arrive after the cut
        t0 = time.monotonic()  # the relay may report the cut before the monitor's next look
        while client.tunnel.status().state != "rebuilding":
            assert time.monotonic() - t0 < 10, client.tunnel.status().describe()
            time.sleep(0.02)
        sshd.start()
        t_back = time.monotonic()
        recovery = wait_until_up(client.tunnel)
        reply = client.model().chat([user("hi")])
        print(f"tunnel back {recovery:.2f} s after sshd restarted; first call done "
              f"{time.monotonic() - t_back:.2f} s after; status: {client.tunnel.status()}")
        assert reply.text.split() == ["hello", "world"]
        assert client.tunnel.status().rebuilds == 1


def test_a_call_made_during_a_rebuild_waits_and_succeeds(server, tmp_path):
    with Sshd(tmp_path) as sshd, connect(agent_config(sshd.tunnel_section(server))) as client:
        assert client.tunnel is not None
        sshd.kill()
        while client.tunnel.status().state != "rebuilding":
            time.sleep(0.02)
        import threading

        threading.Timer(0.5, sshd.start).start()
        assert client.model().chat([user("hi")]).text.split() == ["hello", "world"]


def test_unknown_host_key_is_refused_with_its_fingerprint_once(server, tmp_path):
    with Sshd(tmp_path) as sshd:
        sshd.known_hosts.write_text("")
        with pytest.raises(HostKeyRefused) as e:
            connect(agent_config(sshd.tunnel_section(server)))
        msg = str(e.value)
        pub = (sshd.dir / "host_ed25519.pub").read_text().split()
        assert e.value.fingerprint.startswith("SHA256:") and e.value.fingerprint in msg
        assert f"[127.0.0.1]:{sshd.port} {pub[0]} {pub[1]}" in msg  # the line to add
        time.sleep(1.5)  # several backoff periods: a retry would show up in sshd's log
        assert sshd.connections() == 1


def test_changed_host_key_is_refused_as_a_mismatch_without_retrying(server, tmp_path):
    with Sshd(tmp_path) as sshd:
        other = keygen(tmp_path / "other_host_key")
        pub = Path(f"{other}.pub").read_text().split()
        sshd.known_hosts.write_text(f"[127.0.0.1]:{sshd.port} {pub[0]} {pub[1]}\n")
        with pytest.raises(HostKeyRefused) as e:
            connect(agent_config(sshd.tunnel_section(server)))
        assert "MISMATCH" in str(e.value) and "SHA256:" in str(e.value)
        time.sleep(1.5)
        assert sshd.connections() == 1


def test_trust_on_first_use_only_when_configured(server, tmp_path):
    with Sshd(tmp_path) as sshd:
        sshd.known_hosts.write_text("")
        cfg = agent_config(sshd.tunnel_section(server, trust_on_first_use=True))
        with connect(cfg) as client:
            assert client.health() == "SERVING"
        assert f"[127.0.0.1]:{sshd.port} ssh-ed25519" in sshd.known_hosts.read_text()


def test_wrong_user_key_is_fatal_with_a_clear_message(server, tmp_path):
    with Sshd(tmp_path) as sshd:
        wrong = keygen(tmp_path / "wrong_user_key")
        with pytest.raises(AuthenticationFailed) as e:
            connect(agent_config(sshd.tunnel_section(server, identity_file=str(wrong))))
        assert "refused user 'root'" in str(e.value) and "authorized_keys" in str(e.value)
        time.sleep(1.5)
        assert sshd.connections() == 1


@pytest.mark.parametrize("trouble", ["stall", "drop"])
def test_an_auth_that_breaks_off_or_times_out_is_retried_not_taken_for_a_refusal(
        server, tmp_path, trouble):
    """paramiko raises the same AuthenticationException for all three; only a refusal is fatal."""
    # sshd runs an AuthorizedKeysCommand only from a path no one else can write (not /tmp).
    bin_dir = Path(tempfile.mkdtemp(prefix="studio-coder-test-", dir="/run"))
    try:
        with Sshd(tmp_path, extra=(f"AuthorizedKeysCommand {bin_dir / 'keys'}",
                                   "AuthorizedKeysCommandUser root")) as sshd:
            key = sshd.authorized_keys.read_text()
            sshd.authorized_keys.write_text("")  # the command is the only way in
            flag = bin_dir / "trouble"
            # stall: answer after the client gave up; drop: kill the sshd that asked.
            script = bin_dir / "keys"
            script.write_text(f"#!/bin/sh\ncase $(cat {flag} 2>/dev/null) in\n"
                              f"  stall) sleep 3 ;;\n  drop) kill -9 $PPID ;;\nesac\n"
                              f"echo '{key.strip()}'\n")
            script.chmod(0o755)
            flag.write_text(trouble)
            tunnel = Tunnel(sshd.tunnel_section(server, connect_timeout_s=1.0))
            tunnel.start()
            try:
                status = tunnel.status()
                assert status.state == "rebuilding", status.describe()
                assert ("did not answer the key offer" if trouble == "stall"
                        else "broke off") in status.why, status.why
                flag.unlink()
                wait_until_up(tunnel)
            finally:
                tunnel.stop()
    finally:
        shutil.rmtree(bin_dir)


def host_key_line(sshd: Sshd, marker: str = "", hosts: str = "") -> str:
    kind, key = (sshd.dir / "host_ed25519.pub").read_text().split()[:2]
    return " ".join(x for x in (marker, hosts or f"[127.0.0.1]:{sshd.port}", kind, key) if x)


def test_a_revoked_host_key_is_refused_with_the_line_that_revokes_it(server, tmp_path):
    with Sshd(tmp_path) as sshd:
        # Trusted on one line and revoked on the next: @revoked wins, as in OpenSSH.
        sshd.known_hosts.write_text(f"{host_key_line(sshd)}\n# revoked after the breach\n"
                                    f"{host_key_line(sshd, '@revoked', '*')}\n")
        with pytest.raises(HostKeyRefused) as e:
            connect(agent_config(sshd.tunnel_section(server)))
        msg = str(e.value)
        assert "REVOKED" in msg and f"{sshd.known_hosts} line 3" in msg
        assert e.value.fingerprint in msg
        time.sleep(1.5)
        assert sshd.connections() == 1  # fatal: never retried


def test_a_revoked_line_for_another_key_does_not_stop_the_tunnel(server, tmp_path):
    with Sshd(tmp_path) as sshd:
        other = Path(f"{keygen(tmp_path / 'old_host_key')}.pub").read_text().split()
        sshd.known_hosts.write_text(f"@revoked * {other[0]} {other[1]}\n{host_key_line(sshd)}\n")
        with connect(agent_config(sshd.tunnel_section(server))) as client:
            assert client.health() == "SERVING"


def test_a_cert_authority_line_is_named_and_the_host_still_refused(server, tmp_path):
    with Sshd(tmp_path) as sshd:
        ca = Path(f"{keygen(tmp_path / 'host_ca')}.pub").read_text().split()
        sshd.known_hosts.write_text(f"@cert-authority [127.0.0.1]:* {ca[0]} {ca[1]}\n")
        with pytest.raises(HostKeyRefused) as e:
            connect(agent_config(sshd.tunnel_section(server)))
        msg = str(e.value)
        assert "@cert-authority (line 1)" in msg and "host certificates" in msg
        assert host_key_line(sshd) in msg  # the line that would trust the host itself
        # With the host's own key beside it, the CA line is no obstacle.
        sshd.known_hosts.write_text(f"@cert-authority *.example.com {ca[0]} {ca[1]}\n"
                                    f"{host_key_line(sshd)}\n")
        with connect(agent_config(sshd.tunnel_section(server))) as client:
            assert client.health() == "SERVING"


def test_hashed_known_hosts_lines_are_trusted(server, tmp_path):
    with Sshd(tmp_path) as sshd:
        subprocess.run(["ssh-keygen", "-q", "-H", "-f", str(sshd.known_hosts)], check=True,
                       capture_output=True)
        assert sshd.known_hosts.read_text().startswith("|1|")
        with connect(agent_config(sshd.tunnel_section(server))) as client:
            assert client.health() == "SERVING"


def test_a_known_hosts_line_that_cannot_be_read_is_named(server, tmp_path):
    with Sshd(tmp_path) as sshd:
        sshd.known_hosts.write_text(f"{host_key_line(sshd)}\n[127.0.0.1]:{sshd.port} "
                                    "ssh-ed25519 not*base64\n")
        with pytest.raises(TunnelFailed) as e:
            connect(agent_config(sshd.tunnel_section(server)))
        assert f"{sshd.known_hosts} line 2" in str(e.value)


def test_an_identity_file_others_can_read_is_refused_as_openssh_refuses_it(server, tmp_path):
    with Sshd(tmp_path) as sshd:
        os.chmod(sshd.user_key, 0o644)
        with pytest.raises(TunnelFailed) as e:
            connect(agent_config(sshd.tunnel_section(server)))
        msg = str(e.value)
        assert "UNPROTECTED PRIVATE KEY FILE" in msg and f"chmod 600 {sshd.user_key}" in msg
        assert "0644" in msg
        assert sshd.connections() == 0  # refused before anything was sent
        if shutil.which("ssh"):  # the same verdict from OpenSSH's own client
            out = subprocess.run(
                ["ssh", "-i", str(sshd.user_key), "-p", str(sshd.port), "-o", "BatchMode=yes",
                 "-o", f"UserKnownHostsFile={sshd.known_hosts}", "-o", "IdentitiesOnly=yes",
                 "root@127.0.0.1", "true"], capture_output=True, text=True, timeout=30)
            assert out.returncode != 0 and "UNPROTECTED PRIVATE KEY FILE" in out.stderr
        os.chmod(sshd.user_key, 0o600)
        with connect(agent_config(sshd.tunnel_section(server))) as client:
            assert client.health() == "SERVING"


def non_loopback_addresses() -> list[str]:
    out = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    addrs = [line.split()[3].split("/")[0] for line in out.splitlines()]
    return [a for a in addrs if not a.startswith("127.")]


def test_local_end_listens_on_loopback_only(server, tmp_path):
    addrs = non_loopback_addresses()
    if not addrs:
        pytest.skip("this machine has no non-loopback IPv4 address to try")
    with Sshd(tmp_path) as sshd, connect(agent_config(sshd.tunnel_section(server))) as client:
        assert client.tunnel is not None
        port = client.tunnel.local_port
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        for addr in addrs:
            with pytest.raises(OSError):
                socket.create_connection((addr, port), timeout=2).close()


# OpenSSH before 10.0 leaves Nagle on for a connection that only forwards ports; its small
# writes then wait for our delayed ACK, and every stream's first token came ~40 ms late.


def test_sshd_sends_without_nagle_on_the_tunnels_connection(server, tmp_path):
    with Sshd(tmp_path) as sshd, connect(agent_config(sshd.tunnel_section(server))) as client:
        assert client.model().chat([user("hi")]).text.split() == ["hello", "world"]
        assert sshd.nodelay() == [True]
        assert "Starting session: command" in sshd.log_text()


def test_with_the_nodelay_command_off_sshd_keeps_nagle_on(server, tmp_path):
    # The counterpart that shows the check above can fail: on OpenSSH >= 10.0 sshd turns
    # Nagle off by itself, and this test has nothing to show.
    cfg = agent_config
    with Sshd(tmp_path) as sshd, connect(cfg(sshd.tunnel_section(server, nodelay_command=""))):
        if sshd_version() >= (10, 0):
            pytest.skip("OpenSSH >= 10.0 sets TCP_NODELAY on every connection")
        assert sshd.nodelay() == [False]
        assert "Starting session" not in sshd.log_text()


def test_a_server_that_refuses_sessions_still_gets_a_working_tunnel(server, tmp_path):
    # MaxSessions 0: no shell or command, forwarding still allowed.
    with Sshd(tmp_path, extra=("MaxSessions 0",)) as sshd, \
            connect(agent_config(sshd.tunnel_section(server))) as client:
        assert client.tunnel is not None and client.tunnel.status().state == "up"
        assert client.model().chat([user("hi")]).text.split() == ["hello", "world"]


def test_the_key_options_ansible_renders_allow_the_tunnel_and_its_nodelay_session(server,
                                                                                    tmp_path):
    with Sshd(tmp_path) as sshd:
        pub = sshd.authorized_keys.read_text()
        sshd.authorized_keys.write_text(f'restrict,port-forwarding,permitopen="127.0.0.1:{server}"'
                                        f',command="/usr/bin/false" {pub}')
        with connect(agent_config(sshd.tunnel_section(server))) as client:
            assert client.model().chat([user("hi")]).text.split() == ["hello", "world"]
            assert sshd.nodelay() == [True]


def sshd_version() -> tuple[int, int]:
    out = subprocess.run(["/usr/sbin/sshd", "-V"], capture_output=True, text=True).stderr
    major, minor = out.split("OpenSSH_", 1)[1].split(",", 1)[0].split("p")[0].split(".")[:2]
    return int(major), int(minor)


# ---------------------------------------------------------------------- two hosts


def netns_works() -> str:
    if os.geteuid() != 0:
        return "needs root for ip netns"
    probe = f"sc-probe-{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode != 0:
        return f"ip netns does not work here: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], check=False)
    return ""


def ip(*args: str, ns: str = "") -> None:
    cmd = ["ip", *(["netns", "exec", ns, "ip"] if ns else []), *args]
    subprocess.run(cmd, check=True, capture_output=True)


SERVE_IN_NS = """
import sys, json
sys.path.insert(0, sys.argv[2])
from conftest import running_server
with running_server(json.loads(sys.argv[1])) as (_, target):
    print(target, flush=True)
    sys.stdin.read()
"""


@contextmanager
def two_hosts(models: list[dict], tmp_path: Path) -> Iterator[tuple[Sshd, int, str]]:
    tag = f"{os.getpid() % 100000}"
    ns, here, there = f"sc-inf-{tag}", f"sca{tag}", f"scb{tag}"
    agent_ip, inf_ip = "10.213.7.1", "10.213.7.2"
    server = None
    sshd = None
    try:
        ip("netns", "add", ns)
        ip("link", "add", here, "type", "veth", "peer", "name", there)
        ip("link", "set", there, "netns", ns)
        ip("addr", "add", f"{agent_ip}/30", "dev", here)
        ip("link", "set", here, "up")
        ip("addr", "add", f"{inf_ip}/30", "dev", there, ns=ns)
        ip("link", "set", there, "up", ns=ns)
        ip("link", "set", "lo", "up", ns=ns)
        server = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c", SERVE_IN_NS, json.dumps(models),
             str(REPO / "tests")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO,
        )
        assert server.stdout is not None
        target = server.stdout.readline().strip()
        assert target, "the inference server in the namespace did not start"
        sshd = Sshd(tmp_path, host=inf_ip, netns=ns)
        sshd.start()
        yield sshd, int(target.rsplit(":", 1)[1]), here
    finally:
        if sshd is not None:
            sshd.kill()
        if server is not None:
            server.kill()
            server.wait()
        subprocess.run(["ip", "link", "del", here], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_two_hosts_link_down_mid_stream_fails_clearly_then_recovers(models, tmp_path):
    reason = netns_works()
    if reason:
        pytest.skip(reason)
    with two_hosts(models, tmp_path) as (sshd, port, link):
        with connect(agent_config(sshd.tunnel_section(port))) as client:
            assert client.tunnel is not None
            assert client.model().chat([user("hi")]).text.split() == ["hello", "world"]
            stream_until_cut(client, lambda: ip("link", "set", link, "down"))
            # The reset socket can fail the stream before the monitor's next look (every
            # 0.2 s) sees the dead transport; it must then start rebuilding, not stay up.
            wait_for(client.tunnel, "rebuilding", limit_s=10)
            ip("link", "set", link, "up")
            recovery = wait_until_up(client.tunnel)
            print(f"tunnel back {recovery:.2f} s after the link came up")
            assert client.model().chat([user("hi")]).text.split() == ["hello", "world"]
