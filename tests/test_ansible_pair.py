"""The provisioning of one model across two Macs (inference_node's distributed tasks): the
hostfile, the launch daemon on rank 0 only, and the SSH trust between the ranks, rendered and
run with a local connection for both hosts."""

from __future__ import annotations

import getpass
import plistlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("ansible", reason="ansible-core is not installed (pip install -e .[dev])")

from ansible_play import BIN, PLIST_CHECK, playbook, recap  # noqa: E402

from inference_node.config import load_config as load_inference_config  # noqa: E402


def pair_inventory(tmp: Path, **group_vars: object) -> Path:
    """Two Studios linked by Thunderbolt, as a user would write them; connection local."""
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    hosts = {
        "studio-1": {**local, "inference_node_rank": 0, "inference_node_ips": ["10.0.5.1"],
                     "inference_node_rdma": [None, "rdma_en3"],
                     "inference_node_ssh_name": "studio-1.local"},
        "studio-2": {**local, "inference_node_rank": 1, "inference_node_ips": ["10.0.5.2"],
                     "inference_node_rdma": ["rdma_en3", None],
                     "inference_node_ssh_name": "studio-2.local"},
    }
    path = tmp / "pair.yml"
    path.write_text(yaml.safe_dump({"all": {"children": {"inference": {
        "hosts": hosts,
        "vars": {"inference_node_distributed": True,
                 "inference_node_distributed_backend": "jaccl", **group_vars}}}}}))
    return path


def run_role_tasks(tmp: Path, inventory: Path, tasks_from: str, **role_vars: object
                   ) -> subprocess.CompletedProcess:
    user = getpass.getuser()
    group = subprocess.run(["id", "-gn"], capture_output=True, text=True).stdout.strip()
    per_host = str(tmp) + "/{{ inventory_hostname }}"
    play = [{
        "name": f"inference_node {tasks_from} on both ranks",
        "hosts": "inference",
        "gather_facts": False,
        "tasks": [{
            "name": tasks_from,
            "ansible.builtin.include_role": {"name": "inference_node", "tasks_from": tasks_from},
            "vars": {
                "inference_node_home": per_host + "/home",
                "inference_node_config_dir": per_host + "/etc",
                "inference_node_launchd_dir": per_host + "/LaunchDaemons",
                "inference_node_newsyslog_dir": per_host + "/newsyslog.d",
                "inference_node_service_user": user,
                "inference_node_service_group": group,
                "inference_node_launchd_owner": user,
                "inference_node_launchd_group": group,
                "inference_node_venv": str(BIN.parent),
                "inference_node_plist_validate": PLIST_CHECK,
                "inference_node_manage_service": False,
                **role_vars,
            },
        }],
    }]
    for host in ("studio-1", "studio-2"):
        for d in ("home", "etc", "LaunchDaemons", "newsyslog.d"):
            (tmp / host / d).mkdir(parents=True, exist_ok=True)
    return playbook(tmp, play, inventory)


def test_a_pair_of_studios_gets_one_hostfile_and_a_launch_daemon_on_rank_0_only(
        tmp_path: Path) -> None:
    from inference_node.distributed.cluster import read_hostfile

    r = run_role_tasks(tmp_path, pair_inventory(tmp_path), "render.yml",
                       inference_node_models=[{"name": "qwen3-coder", "path": "qwen3-coder"}],
                       inference_node_config_extra={"distributed": {"sharding": "pipeline"}})
    assert r.returncode == 0, r.stdout + r.stderr
    for host in ("studio-1", "studio-2"):
        etc = tmp_path / host / "etc"
        hosts = read_hostfile(etc / "hosts.json")  # the project's reader, as serve reads it
        assert hosts.backend == "jaccl"
        assert [(h.ssh, h.ips, h.rdma) for h in hosts.hosts] == [
            ("studio-1.local", ["10.0.5.1"], [None, "rdma_en3"]),
            ("studio-2.local", ["10.0.5.2"], ["rdma_en3", None])]
        cfg = load_inference_config(etc / "inference-node.toml")
        assert cfg.distributed.hostfile == str(etc / "hosts.json")
        assert cfg.distributed.sharding == "pipeline"
    plist = tmp_path / "studio-1/LaunchDaemons/com.studio-coder.inference-node.plist"
    with plist.open("rb") as f:
        args = plistlib.load(f)["ProgramArguments"]
    assert args[1] == "serve" and args[args.index("--config") + 1].endswith("inference-node.toml")
    # rank 1 runs no daemon of its own: rank 0 starts it through mlx.launch
    assert not list((tmp_path / "studio-2/LaunchDaemons").glob("*.plist"))


def test_the_other_rank_trusts_rank_0s_key_only_and_rank_0_pins_its_host_key(
        tmp_path: Path) -> None:
    if not shutil.which("ssh-keygen"):
        pytest.skip("ssh-keygen (OpenSSH client) is not installed")
    for host in ("studio-1", "studio-2"):  # stand-ins for /etc/ssh/ssh_host_ed25519_key
        (tmp_path / host).mkdir()
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                        str(tmp_path / host / "host_key")], check=True)
    inventory = pair_inventory(tmp_path)
    key_file = str(tmp_path) + "/{{ inventory_hostname }}/host_key.pub"
    run = lambda: run_role_tasks(  # noqa: E731
        tmp_path, inventory, "distributed.yml", inference_node_ssh_host_key_file=key_file,
        inference_node_distributed_manage_access=False)
    first = run()
    assert first.returncode == 0, first.stdout + first.stderr

    key = tmp_path / "studio-1/home/.ssh/id_ed25519"
    assert key.exists() and (key.stat().st_mode & 0o077) == 0
    key_type, key_blob = Path(f"{key}.pub").read_text().split()[:2]
    (line,) = (tmp_path / "studio-2/home/.ssh/authorized_keys").read_text().splitlines()
    assert line.startswith(f'restrict,pty,from="10.0.5.1" {key_type} {key_blob} ')
    assert not (tmp_path / "studio-1/home/.ssh/authorized_keys").exists()
    host_key = (tmp_path / "studio-2/host_key.pub").read_text().split()[:2]
    known = (tmp_path / "studio-1/home/.ssh/known_hosts").read_text().split()
    assert known == ["studio-2.local", *host_key]

    second = run()
    assert second.returncode == 0, second.stdout + second.stderr
    for host in ("studio-1", "studio-2"):
        assert recap(second.stdout, host)["changed"] == 0, second.stdout
