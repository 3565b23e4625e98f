"""Who may call the bridge: a token it generates on first use (0600, printed once), and only
requests addressed to loopback with its port (DNS rebinding). `agent-node bridge` is run as the
user runs it, against a real node."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from conftest import REPO, running_server

from agent_node.bridge import BridgeServer, create_app
from agent_node.config import AgentConfig
from studio_common.net import free_port


@pytest.fixture(scope="module")
def node(chain_models) -> Iterator[str]:
    with running_server([{"name": "hello", "path": str(chain_models["hello"])}]) as (_, target):
        yield target


def write_config(tmp: Path, target: str, port: int, **bridge: object) -> Path:
    lines = [f'port = {port}', f'token_file = "{tmp / "bridge-token"}"']
    lines += [f"{k} = {v!r}".replace("'", '"') for k, v in bridge.items()]
    path = tmp / "agent-node.toml"
    path.write_text(f'[inference]\ntarget = "{target}"\n\n[bridge]\n' + "\n".join(lines) + "\n")
    return path


@contextmanager
def bridge_cli(config: Path, port: int) -> Iterator[subprocess.Popen[str]]:
    """`agent-node bridge --config CONFIG`, up once /health answers; stopped with SIGTERM."""
    proc = subprocess.Popen([sys.executable, "-m", "agent_node.cli", "bridge", "--config",
                             str(config)], cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the bridge did not come up"
            time.sleep(0.1)
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(timeout=30)


def stderr_of(proc: subprocess.Popen[str]) -> str:
    proc.terminate()
    return proc.communicate(timeout=30)[1]


def test_a_token_is_generated_on_first_use_0600_and_printed_once(node, tmp_path):
    port = free_port()
    config = write_config(tmp_path, node, port)
    token_file = tmp_path / "bridge-token"
    with bridge_cli(config, port) as proc:
        token = token_file.read_text().strip()
        assert len(token) >= 32
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        url = f"http://127.0.0.1:{port}/v1/models"
        assert httpx.get(url).status_code == 401
        assert httpx.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
        ok = httpx.get(url, headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200 and ok.json()["data"][0]["id"] == "hello"
        first = stderr_of(proc)
    assert first.count(token) == 1 and "generated a token" in first
    with bridge_cli(config, port) as proc:  # the same token, not printed again
        assert token_file.read_text().strip() == token
        again = stderr_of(proc)
    assert token not in again and str(token_file) in again


def test_a_token_file_others_can_read_is_refused_with_the_fix(node, tmp_path):
    port = free_port()
    config = write_config(tmp_path, node, port)
    token_file = tmp_path / "bridge-token"
    token_file.write_text("s3cret\n")
    os.chmod(token_file, 0o644)
    out = subprocess.run([sys.executable, "-m", "agent_node.cli", "bridge", "--config",
                          str(config)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert f"chmod 600 {token_file}" in out.stderr and "s3cret" not in out.stderr


def test_the_configured_token_is_used_and_no_file_is_made(node, tmp_path):
    port = free_port()
    config = write_config(tmp_path, node, port, token="configured-token")
    with bridge_cli(config, port) as proc:
        url = f"http://127.0.0.1:{port}/v1/models"
        ok = httpx.get(url, headers={"Authorization": "Bearer configured-token"})
        assert ok.status_code == 200
        assert "configured-token" not in stderr_of(proc)
    assert not (tmp_path / "bridge-token").exists()


@contextmanager
def served(node: str, host: str = "127.0.0.1", **bridge: object) -> Iterator[BridgeServer]:
    cfg = AgentConfig()
    cfg.inference.target = node
    for k, v in bridge.items():
        setattr(cfg.bridge, k, v)
    with BridgeServer(create_app(cfg, token="t"), host) as srv:
        yield srv


def get(srv: BridgeServer, path: str, host_header: str) -> httpx.Response:
    addr = f"[{srv.host}]" if ":" in srv.host else srv.host
    return httpx.get(f"http://{addr}:{srv.port}{path}",
                     headers={"Host": host_header, "Authorization": "Bearer t"}, timeout=30)


def test_requests_addressed_to_another_host_are_refused_against_dns_rebinding(node):
    with served(node) as srv:
        p = srv.port
        for host in (f"127.0.0.1:{p}", f"localhost:{p}", f"LOCALHOST:{p}"):
            assert get(srv, "/v1/models", host).status_code == 200, host
        for host in (f"attacker.example:{p}", "attacker.example", f"127.0.0.1:{p + 1}",
                     f"localhost.attacker.example:{p}", "", f"127.0.0.1:{p}.evil"):
            for path in ("/v1/models", "/health", "/v1/chat/completions"):
                r = get(srv, path, host)
                assert r.status_code == 421, (host, path, r.text)
                err = r.json()["error"]
                assert err["code"] == "host_not_allowed" and "allowed_hosts" in err["message"]


def test_allowed_hosts_and_ipv6_loopback_are_served(node):
    with served(node, allowed_hosts=["workstation.lan", "fwd.local:9000"]) as srv:
        p = srv.port
        assert get(srv, "/health", f"workstation.lan:{p}").status_code == 200
        assert get(srv, "/health", "fwd.local:9000").status_code == 200
        assert get(srv, "/health", f"fwd.local:{p}").status_code == 421
    with served(node, host="::1") as srv:
        assert get(srv, "/health", f"[::1]:{srv.port}").status_code == 200
        assert get(srv, "/health", f"attacker.example:{srv.port}").status_code == 421
