"""Running ansible-playbook on the repository's roles from a test: the environment that points it
at ansible/, a playbook written to a file and run, and the PLAY RECAP's counts for a host."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
ANSIBLE = REPO / "ansible"
BIN = Path(sys.executable).parent
PLAYBOOK = BIN / "ansible-playbook"
LINT = BIN / "ansible-lint"
PLIST_CHECK = (
    f"{sys.executable} -c \"import plistlib, sys; plistlib.load(open(sys.argv[1], 'rb'))\" %s"
)


def ansible_env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        ANSIBLE_CONFIG=str(ANSIBLE / "ansible.cfg"),
        ANSIBLE_ROLES_PATH=str(ANSIBLE / "roles"),
        ANSIBLE_LOCAL_TEMP=str(tmp / "ansible-tmp"),
        ANSIBLE_REMOTE_TEMP=str(tmp / "ansible-tmp"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
        ANSIBLE_PYTHON_INTERPRETER=sys.executable,
        ANSIBLE_STDOUT_CALLBACK="default",
    )
    return env


def playbook(
    tmp: Path, play: list[dict], inventory: Path, *extra: str
) -> subprocess.CompletedProcess:
    path = tmp / f"play-{len(list(tmp.glob('play-*.yml')))}.yml"
    path.write_text(yaml.safe_dump(play, sort_keys=False))
    return subprocess.run(
        [str(PLAYBOOK), "-i", str(inventory), str(path), *extra],
        cwd=ANSIBLE,
        env=ansible_env(tmp),
        capture_output=True,
        text=True,
        timeout=110,
    )


def recap(out: str, host: str) -> dict[str, int]:
    m = re.search(rf"^{re.escape(host)}\s*:\s*(.*)$", out, re.M)
    assert m, out
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(1))}
