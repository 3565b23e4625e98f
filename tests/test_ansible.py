"""The provisioning under ansible/: lint, syntax, the files its templates render (loaded by the
project's own config loaders), and a real, idempotent run of the agent_node role on this machine.

Off a Mac the inference_node role's launchctl, Homebrew, dscl and plutil steps cannot run; its
templates are rendered here instead (plistlib stands in for `plutil -lint`).
"""

from __future__ import annotations

import getpass
import plistlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

pytest.importorskip("ansible", reason="ansible-core is not installed (pip install -e .[dev])")

from ansible_play import (  # noqa: E402
    ANSIBLE,
    BIN,
    LINT,
    PLAYBOOK,
    PLIST_CHECK,
    REPO,
    ansible_env,
    playbook,
    recap,
)

from agent_node.config import load_config as load_agent_config  # noqa: E402
from inference_node.config import load_config as load_inference_config  # noqa: E402


def test_site_playbook_passes_syntax_check(tmp_path: Path) -> None:
    r = subprocess.run(
        [str(PLAYBOOK), "-i", "inventory.example.yml", "--syntax-check", "site.yml"],
        cwd=ANSIBLE,
        env=ansible_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def render_example(tmp: Path, *extra: str, **inference_vars: object) -> subprocess.CompletedProcess:
    """Run only the two roles' template tasks for the example inventory, into `tmp`."""
    user = getpass.getuser()
    group = subprocess.run(["id", "-gn"], capture_output=True, text=True).stdout.strip()
    for d in ("etc", "LaunchDaemons", "newsyslog.d", "agent"):
        (tmp / d).mkdir(exist_ok=True)
    arg_spec = yaml.safe_load(
        (ANSIBLE / "roles/inference_node/meta/argument_specs.yml").read_text()
    )["argument_specs"]["main"]["options"]
    plays = [
        {
            "name": "Render the inference node's files",
            "hosts": "inference",
            "connection": "local",
            "gather_facts": False,
            "tasks": [
                {
                    "name": "The example inventory satisfies the role's argument spec",
                    "ansible.builtin.validate_argument_spec": {"argument_spec": arg_spec},
                },
                {
                    "name": "Templates only",
                    "ansible.builtin.include_role": {
                        "name": "inference_node",
                        "tasks_from": "render.yml",
                    },
                    "vars": {
                        "inference_node_config_dir": str(tmp / "etc"),
                        "inference_node_launchd_dir": str(tmp / "LaunchDaemons"),
                        "inference_node_newsyslog_dir": str(tmp / "newsyslog.d"),
                        "inference_node_launchd_owner": user,
                        "inference_node_launchd_group": group,
                        "inference_node_service_group": group,
                        # The TOML is checked with this venv's inference_node.config.
                        "inference_node_venv": str(BIN.parent),
                        "inference_node_plist_validate": PLIST_CHECK,
                        "inference_node_manage_service": False,
                        **inference_vars,
                    },
                },
            ],
        },
        {
            "name": "Render the agent node's config",
            "hosts": "agent",
            "connection": "local",
            "gather_facts": False,
            "tasks": [
                {
                    "name": "Templates only",
                    "ansible.builtin.include_role": {
                        "name": "agent_node",
                        "tasks_from": "render.yml",
                    },
                    "vars": {
                        "agent_node_home": str(tmp / "agent"),
                        "agent_node_config_dir": str(tmp / "agent"),
                        "agent_node_config_check_python": sys.executable,
                    },
                },
            ],
        },
    ]
    return playbook(tmp, plays, ANSIBLE / "inventory.example.yml", *extra)


def test_example_inventory_renders_a_plist_and_configs_the_loaders_accept(tmp_path: Path) -> None:
    r = render_example(
        tmp_path,
        inference_node_wired_limit_mb=88000,
        # Extra tables pass through, but nothing widens the bind beyond loopback.
        inference_node_config_extra={
            "engine": {"max_concurrent": 2},
            "server": {"host": "0.0.0.0"},
        },
    )
    assert r.returncode == 0, r.stdout + r.stderr
    example = yaml.safe_load((ANSIBLE / "inventory.example.yml").read_text())
    studio = example["all"]["children"]["inference"]["hosts"]["studio"]

    with (tmp_path / "LaunchDaemons/com.studio-coder.inference-node.plist").open("rb") as f:
        plist = plistlib.load(f)
    assert plist["Label"] == "com.studio-coder.inference-node"
    args = plist["ProgramArguments"]
    assert Path(args[0]).is_absolute() and args[0].endswith("/bin/inference-node")
    assert args[1] == "serve"
    assert args[args.index("--host") + 1] == "127.0.0.1"
    assert args[args.index("--port") + 1] == "50051"
    config_path = Path(args[args.index("--config") + 1])
    assert config_path.is_absolute() and config_path == tmp_path / "etc/inference-node.toml"
    assert plist["RunAtLoad"] is True
    assert plist["KeepAlive"] == {"SuccessfulExit": False}
    assert plist["ProcessType"] == "Interactive"
    assert plist["ThrottleInterval"] > 0
    assert plist["UserName"] == "_studiocoder"
    assert plist["EnvironmentVariables"]["STUDIO_CODER_HOME"] == "/opt/studio-coder"
    assert plist["StandardOutPath"].startswith("/Library/Logs/studio-coder/")
    assert plist["StandardErrorPath"].startswith("/Library/Logs/studio-coder/")

    inference = load_inference_config(config_path)
    # ExitTimeOut outlasts the gRPC drain, so launchd never SIGKILLs a clean shutdown.
    assert plist["ExitTimeOut"] > inference.server.grace_seconds
    assert inference.server.host == "127.0.0.1" and not inference.server.allow_remote
    assert inference.engine.max_concurrent == 2
    assert inference.server.port == studio["inference_node_port"]
    assert inference.memory.budget_gb == studio["inference_node_budget_gb"]
    assert [(m.name, m.role) for m in inference.models] == [
        (m["name"], m["role"]) for m in studio["inference_node_models"]
    ]
    assert inference.models[0].pinned and inference.models[0].context == 65536

    with (tmp_path / "LaunchDaemons/com.studio-coder.wired-limit.plist").open("rb") as f:
        wired = plistlib.load(f)
    assert wired["ProgramArguments"] == ["/usr/sbin/sysctl", "iogpu.wired_limit_mb=88000"]

    rotation = (tmp_path / "newsyslog.d/studio-coder.conf").read_text()
    assert plist["StandardOutPath"] in rotation and plist["StandardErrorPath"] in rotation
    log_file = args[args.index("--log-file") + 1]  # the server's own log, which follows rotation
    assert log_file.startswith("/Library/Logs/studio-coder/") and f"{log_file} " in rotation

    agent = load_agent_config(tmp_path / "agent/agent-node.toml")
    assert agent.tunnel.enabled
    assert (agent.tunnel.host, agent.tunnel.user) == ("studio.local", "studio-tunnel")
    assert (agent.tunnel.remote_host, agent.tunnel.remote_port) == ("127.0.0.1", 50051)
    assert agent.tunnel.known_hosts == str(tmp_path / "agent/known_hosts")
    assert agent.inference.coder == ["qwen3-coder"]
    assert agent.inference.vision == ["qwen3-vl-4b"]


def test_a_key_the_loader_does_not_know_stops_the_render(tmp_path: Path) -> None:
    r = render_example(
        tmp_path, "--limit", "inference", inference_node_config_extra={"server": {"prot": 1}}
    )
    assert r.returncode != 0
    assert "unknown key 'prot'" in r.stdout + r.stderr
    assert not (tmp_path / "etc/inference-node.toml").exists()


def build_wheel(tmp: Path) -> Path:
    """A wheel of this checkout, built from a copy so the work tree gets no build/ folder."""
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for pkg in ("inference_node", "agent_node"):
        shutil.copytree(REPO / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp / "wheels"),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    (wheel,) = (tmp / "wheels").glob("studio_coder-*.whl")
    return wheel


def test_agent_role_installs_configures_and_is_idempotent_on_localhost(tmp_path: Path) -> None:
    if not shutil.which("ssh-keygen"):
        pytest.skip("ssh-keygen (OpenSSH client) is not installed")
    wheel = build_wheel(tmp_path)
    home, mac = tmp_path / "home", tmp_path / "mac"
    home.mkdir()
    mac.mkdir()
    # Stands in for the Mac's /etc/ssh/ssh_host_ed25519_key.pub, read by a delegated task.
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(mac / "host_key")], check=True
    )
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(
        yaml.safe_dump(
            {
                "all": {
                    "children": {
                        "inference": {"hosts": {"studio": {**local, "inference_node_port": 50051}}},
                        "agent": {"hosts": {"workstation": local}},
                    }
                }
            }
        )
    )
    play = [
        {
            "name": "Agent node, for real, into a temporary home",
            "hosts": "agent",
            "gather_facts": True,
            "gather_subset": ["min"],
            "roles": [
                {
                    "role": "agent_node",
                    "vars": {
                        "agent_node_home": str(home),
                        "agent_node_python": sys.executable,
                        "agent_node_install_python_venv": False,
                        # Present on the test machines: the role must notice and leave it alone.
                        "agent_node_install_chromium": bool(shutil.which("chromium")),
                        "agent_node_chromium_candidates": [
                            shutil.which("chromium") or "/usr/bin/chromium"
                        ],
                        "agent_node_package_spec": f"{wheel}[agent]",
                        "agent_node_pip_extra_args": ["--no-deps", "--no-index"],
                        # The venv has no dependencies (--no-deps); check the TOML with ours.
                        "agent_node_config_check_python": sys.executable,
                        "agent_node_tunnel_port": 2222,
                        "agent_node_inference_host_key_file": str(mac / "host_key.pub"),
                        "agent_node_authorized_keys_path": str(mac / "authorized_keys"),
                        "agent_node_authorized_keys_owner": getpass.getuser(),
                        "agent_node_authorize_become": False,
                        "agent_node_coder_models": ["qwen3-coder"],
                        # `agent-node status` needs a live inference node and the full dependencies.
                        "agent_node_verify": False,
                    },
                }
            ],
        }
    ]

    first = playbook(tmp_path, play, inventory)
    assert first.returncode == 0, first.stdout + first.stderr
    assert recap(first.stdout, "workstation")["changed"] > 0

    venv = home / ".local/share/studio-coder/venv"
    assert (venv / "bin/agent-node").exists()
    pip_show = subprocess.run(
        [str(venv / "bin/python"), "-m", "pip", "show", "studio-coder"],
        capture_output=True,
        text=True,
    )
    assert "Version: 0.1.0" in pip_show.stdout, pip_show.stdout + pip_show.stderr

    key = home / ".ssh/studio_coder_ed25519"
    assert key.exists() and (key.stat().st_mode & 0o077) == 0
    key_type, key_blob = Path(f"{key}.pub").read_text().split()[:2]

    config_dir = home / ".config/studio-coder"
    host_key = (mac / "host_key.pub").read_text().split()[:2]
    assert (config_dir / "known_hosts").read_text().split() == ["[studio]:2222", *host_key]

    (line,) = (mac / "authorized_keys").read_text().splitlines()
    assert line.startswith(
        'restrict,port-forwarding,permitopen="127.0.0.1:50051",command="/usr/bin/false" '
    )
    assert f" {key_type} {key_blob} " in line

    agent = load_agent_config(config_dir / "agent-node.toml")
    assert agent.tunnel.enabled and (agent.tunnel.host, agent.tunnel.port) == ("studio", 2222)
    assert agent.tunnel.identity_file == str(key)
    assert agent.tunnel.known_hosts == str(config_dir / "known_hosts")
    assert agent.inference.coder == ["qwen3-coder"]

    second = playbook(tmp_path, play, inventory)
    assert second.returncode == 0, second.stdout + second.stderr
    assert recap(second.stdout, "workstation")["changed"] == 0, second.stdout


@pytest.fixture(scope="module", autouse=True)
def lint_in_background(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """ansible-lint takes a while: start it with the module's first test, read it in the last."""
    global _lint
    if LINT.exists() and _lint is None:
        tmp = tmp_path_factory.mktemp("lint")
        # offline: .ansible-lint says so too; nothing is fetched from Galaxy.
        _lint = subprocess.Popen(
            [str(LINT), "--offline", "--profile", "production", "ansible/"],
            cwd=REPO,
            env=ansible_env(tmp),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    yield
    if _lint is not None and _lint.poll() is None:
        _lint.kill()


_lint: subprocess.Popen[str] | None = None


def test_lint_is_clean_under_the_production_profile() -> None:
    if _lint is None:
        pytest.skip(f"ansible-lint is not installed next to {sys.executable}")
    out, _ = _lint.communicate(timeout=110)
    assert _lint.returncode == 0, out
    assert "Profile 'production' was required, and it passed" in out


@pytest.mark.skipif(
    sys.platform != "darwin",
    reason="plutil exists on macOS only; plistlib checks the plist elsewhere",
)
def test_rendered_plists_pass_plutil_lint(tmp_path: Path) -> None:
    r = render_example(tmp_path, inference_node_wired_limit_mb=88000)
    assert r.returncode == 0, r.stdout + r.stderr
    for plist in (tmp_path / "LaunchDaemons").glob("*.plist"):
        lint = subprocess.run(
            ["/usr/bin/plutil", "-lint", str(plist)], capture_output=True, text=True
        )
        assert lint.returncode == 0, lint.stdout + lint.stderr
