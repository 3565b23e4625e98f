"""The sandbox every command from the coder's side runs in: what it can write, see and reach,
how its processes, output and memory are bounded, and that it fails closed."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from listener import listening
from procs import gone, kill_all, tag
from scripted_model import ScriptedModel, as_json, call
from user_repo import NOT_UI, PASS, fix_calc, isolate, make_repo, run

from agent_node.config import AgentConfig, SandboxSection
from agent_node.loop import cli
from agent_node.loop.errors import UsageError
from agent_node.runs import read_events
from agent_node.sandbox import Sandbox, SandboxUnavailable, seatbelt
from agent_node.sandbox.limits import MemoryBound, memory_bound

TESTS = Path(__file__).resolve().parent
LINUX = sys.platform.startswith("linux")
needs_bwrap = pytest.mark.skipif(not (LINUX and shutil.which("bwrap")),
                                 reason="needs bubblewrap on Linux")


@pytest.fixture
def place(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder the sandbox shows read-only (not under /tmp, which it replaces)."""
    root = TESTS.parent / ".home" / "sandbox" / uuid.uuid4().hex
    root.mkdir(parents=True)
    isolate(monkeypatch, root)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def sh(sandbox: Sandbox, command: str, work: Path, **kw: object) -> tuple[int | None, str]:
    done = sandbox.run(["/bin/sh", "-c", command], cwd=work, writable=[work],
                       timeout_s=float(kw.pop("timeout_s", 30)),  # type: ignore[arg-type]
                       output_limit=int(kw.pop("output_limit", 20_000)),  # type: ignore[call-overload]
                       **kw)  # type: ignore[arg-type]
    return done.exit_code, done.output


@needs_bwrap
def test_writes_reach_only_the_writable_folder_and_a_private_tmp(place: Path) -> None:
    work, beside = place / "work", place / "beside"
    work.mkdir()
    beside.mkdir()
    host_tmp = Path("/tmp") / f"studio-coder-sandbox-{uuid.uuid4().hex}"
    sandbox = Sandbox.from_config()
    code, out = sh(sandbox, f"echo ok > inside && echo t > /tmp/t && cat /tmp/t && "
                            f"touch {host_tmp}; touch {beside}/outside; touch /etc/studio-coder",
                   work)
    assert (work / "inside").read_text() == "ok\n"
    assert "t" in out and not host_tmp.exists()
    assert not (beside / "outside").exists() and not Path("/etc/studio-coder").exists()
    assert out.count("Read-only file system") == 2
    code, out = sh(sandbox, "ls -A /tmp; echo $HOME", work)
    assert out.split() == ["home", "/tmp/home"]  # the last command's /tmp is gone


@needs_bwrap
def test_the_record_home_key_and_config_are_invisible(place: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    home = place / "home"
    (home / "runs" / "r1").mkdir(parents=True)
    (home / "runs" / "r1" / "events.jsonl").write_text("{}\n")
    key = place / "config" / "record.key"
    key.parent.mkdir()
    key.write_text("00" * 32 + "\n")
    secrets = place / "dot-aws"
    secrets.mkdir()
    (secrets / "credentials").write_text("aws_secret_access_key = x\n")
    work = home / "checkouts" / "r1" / "work"  # the checkout lives in the hidden home
    work.mkdir(parents=True)
    sandbox = Sandbox.from_config(SandboxSection(hide=[str(secrets)]))
    _, out = sh(sandbox, f"ls -A {home}; echo --; ls -A {home}/checkouts/r1; echo --; ls -A "
                         f"{secrets}; echo --; cat {key}; echo --; touch {home}/runs/forged; pwd",
                work)
    listed_home, listed_checkout, listed_secrets, key_read, rest = out.split("--\n", 4)
    assert listed_home.split() == ["checkouts"]  # no runs/, no record
    assert listed_checkout.split() == ["work"]
    assert listed_secrets.strip() == "" and "0000" not in key_read
    assert rest.rstrip().endswith(str(work))
    assert not (home / "runs" / "forged").exists()


@needs_bwrap
def test_no_network_unless_the_config_allows_it(place: Path) -> None:
    work = place / "work"
    work.mkdir()
    with listening() as (port, got):
        connect = (f"{sys.executable} -c \"import socket; "
                   f"socket.create_connection(('127.0.0.1', {port}), 3).sendall(b'hi')\"")
        code, out = sh(Sandbox.from_config(), connect, work)
        assert code != 0 and got == []
        code, out = sh(Sandbox.from_config(SandboxSection(network=True)), connect, work)
        assert code == 0, out
    assert got == [b"hi"]


@needs_bwrap
def test_a_unix_socket_on_a_visible_path_is_unreachable(place: Path) -> None:
    """A socket the sandbox can see read-only (docker's, an agent's) still takes connections:
    the seccomp filter is what stops it. Pipes between processes keep working."""
    work = place / "work"
    work.mkdir()
    path = place / "agent.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen()
    try:
        code, out = sh(Sandbox.from_config(), f"{sys.executable} -c \"import socket; "
                       f"s = socket.socket(socket.AF_UNIX); s.connect('{path}')\"", work)
        assert code != 0 and "Permission denied" in out
        code, out = sh(Sandbox.from_config(), f"{sys.executable} -c \"import multiprocessing "
                       "as m; a, b = m.Pipe(); a.send(7); print(b.recv())\"", work)
        assert code == 0 and out.strip() == "7", out
    finally:
        server.close()


@needs_bwrap
def test_processes_die_with_the_command_and_host_processes_are_invisible(place: Path) -> None:
    work = place / "work"
    work.mkdir()
    mark = tag()
    try:
        code, out = sh(Sandbox.from_config(), f"setsid -f sleep {mark}; (trap '' TERM; "
                       f"exec sleep {mark}) & ps -e -o pid= | wc -l; echo end", work)
        assert code == 0 and out.strip().endswith("end")
        assert int(out.split()[0]) < 10  # its own PID namespace: a handful of processes
        assert gone(mark), f"sleep {mark} outlived its command"
        done = Sandbox.from_config().run(["/bin/sh", "-c", f"setsid -f sleep {mark}; sleep 1000"],
                                         cwd=work, writable=[work], timeout_s=1,
                                         output_limit=1000)
        assert done.timed_out and gone(mark)
    finally:
        kill_all(mark)


@needs_bwrap
def test_output_keeps_its_head_and_tail(place: Path) -> None:
    work = place / "work"
    work.mkdir()
    code, out = sh(Sandbox.from_config(), "echo FIRST; yes | head -c 3000000; echo; echo LAST",
                   work, output_limit=1000)
    assert out.startswith("FIRST") and out.rstrip().endswith("LAST")
    assert "characters cut" in out and len(out) < 1100


@needs_bwrap
def test_memory_is_bounded_for_the_whole_command(place: Path) -> None:
    work = place / "work"
    work.mkdir()
    sandbox = Sandbox.from_config(SandboxSection(memory_mb=128))
    hog = f"{sys.executable} -c \"x = bytearray(600 << 20); print('allocated')\""
    done = sandbox.run(["/bin/sh", "-c", hog], cwd=work, writable=[work], timeout_s=60,
                       output_limit=4000)
    assert done.exit_code != 0 and "allocated" not in done.output
    if sandbox.memory.how.startswith("cgroup"):
        assert done.memory_exceeded and "memory limit" in done.output
    else:
        assert "MemoryError" in done.output


@needs_bwrap
def test_without_a_cgroup_each_process_gets_a_data_limit(place: Path) -> None:
    work = place / "work"
    work.mkdir()
    here = Sandbox.from_config()
    per_process = MemoryBound(128 << 20, "RLIMIT_DATA, 128 MB per process")
    sandbox = Sandbox(here.backend, here.version, False, per_process, here.hidden,
                      here.executable)
    code, out = sh(sandbox, f"{sys.executable} -c \"x = bytearray(600 << 20)\"", work)
    assert code == 1 and "MemoryError" in out
    code, out = sh(sandbox, f"{sys.executable} -c \"x = bytearray(16 << 20); print('ok')\"", work)
    assert code == 0 and "ok" in out


def test_the_memory_bound_says_what_it_covers() -> None:
    assert memory_bound(0).how.startswith("none")
    how = memory_bound(256 << 20).how
    assert "256 MB" in how or how.startswith("none (macOS")


@pytest.mark.skipif(not LINUX, reason="checks Linux cgroups")
def test_command_cgroups_are_removed_afterwards(place: Path) -> None:
    bound = memory_bound(64 << 20)
    if bound.cgroup_parent is None:
        pytest.skip(f"no writable memory cgroup here ({bound.how})")
    work = place / "work"
    work.mkdir()
    mark = tag()
    try:
        Sandbox("none", "", True, bound, ()).run(
            ["/bin/sh", "-c", f"setsid -f sleep {mark}"], cwd=work, writable=[work],
            timeout_s=10, output_limit=100)
        assert gone(mark)  # unconfined, but the cgroup still ends an escaped session
        assert not list(bound.cgroup_parent.glob(f"studio-coder-{os.getpid()}-*"))
    finally:
        kill_all(mark)


# --- fail closed ---------------------------------------------------------------------------


@pytest.mark.skipif(not LINUX, reason="hides bubblewrap from PATH")
def test_no_sandbox_refuses_the_run_before_anything_starts(
        place: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    repo = make_repo(place)
    monkeypatch.setattr("agent_node.sandbox.shutil.which", lambda name: None)  # no bwrap here
    with pytest.raises(SandboxUnavailable, match="enabled = false"):
        Sandbox.from_config()
    with pytest.raises(UsageError, match="bubblewrap"):
        run(place, repo, ScriptedModel([]), ScriptedModel([]))
    assert not (place / "home" / "runs").exists()
    assert cli.run_main(["fix it", "--repo", str(repo)]) == 2
    assert "apt-get install bubblewrap" in capsys.readouterr().err


def test_opting_out_runs_unconfined_and_every_record_says_so(
        place: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = make_repo(place)
    cfg = AgentConfig()
    cfg.sandbox.enabled = False
    coder = ScriptedModel([call("bash", command="echo $HOME"), *fix_calc()])
    summary = run(place, repo, ScriptedModel([as_json(NOT_UI), as_json(PASS)]), coder, cfg=cfg)
    assert summary["verdict"] == "pass"
    assert summary["sandbox"]["backend"] == "none"
    assert "sandbox.enabled = false" in summary["sandbox"]["reason"]
    notes = [e["text"] for e in read_events(Path(summary["run_dir"])) if e["type"] == "note"]
    assert any("WITHOUT a sandbox" in n for n in notes)
    assert "WITHOUT a sandbox" in (Path(summary["run_dir"]) / "report.html").read_text()


# --- the page server -----------------------------------------------------------------------


def test_the_page_server_serves_no_symlink_out_of_the_tested_files(tmp_path: Path) -> None:
    from agent_node.loop.visual import serve_directory

    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("<h1>page</h1>")
    (tmp_path / "secret.txt").write_text("the key")
    (site / "leak.txt").symlink_to(tmp_path / "secret.txt")
    (site / "inside.txt").symlink_to(site / "index.html")
    with serve_directory(site) as url:
        assert b"page" in urllib.request.urlopen(f"{url}/inside.txt", timeout=5).read()
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"{url}/leak.txt", timeout=5)
        assert e.value.code == 404


# --- macOS ---------------------------------------------------------------------------------


def test_the_macos_profile_is_package_data_with_the_rules_for_one_command(tmp_path: Path) -> None:
    from agent_node.sandbox.bwrap import View

    view = View(tmp_path, (tmp_path / "work",), (tmp_path / "git",), (tmp_path / 'hid"den',))
    text = seatbelt.profile(view, tmp=tmp_path / "tmp", network=False)
    assert text.startswith("(version 1)") and "(deny network*)" in text
    assert '(deny file-read* file-write* (literal "' in text and 'hid\\"den' in text
    assert text.index("(deny file-read*") < text.index("(allow file-write* (subpath")
    assert "(allow network*)" in seatbelt.profile(view, tmp=tmp_path, network=True)


@pytest.mark.skipif(not Path("/usr/bin/sandbox-exec").exists(),
                    reason="sandbox-exec exists only on macOS; the profile is checked there")
def test_macos_sandbox_confines_writes_hides_paths_and_cuts_the_network(place: Path) -> None:
    work, beside = place / "work", place / "beside"
    work.mkdir()
    beside.mkdir()
    key = place / "config" / "record.key"
    key.parent.mkdir()
    key.write_text("00" * 32 + "\n")
    sandbox = Sandbox.from_config()
    assert sandbox.backend == "sandbox-exec"
    with listening() as (port, got):
        code, out = sh(sandbox, f"echo ok > inside; touch {beside}/outside; cat {key}; "
                                f"echo hi > $TMPDIR/t && cat $TMPDIR/t; "
                                f"nc -w 2 127.0.0.1 {port} < /dev/null; echo end", work)
    assert (work / "inside").read_text() == "ok\n" and "hi" in out
    assert not (beside / "outside").exists() and "00000000" not in out
    assert got == []
    assert json.dumps(sandbox.describe())


@needs_bwrap
def test_a_tool_chain_under_the_hosts_tmp_is_shown_read_only_and_nothing_else_there(
        place: Path) -> None:
    """The sandbox's /tmp is its own; a virtualenv on the PATH that lives in the host's /tmp (a
    clone in /tmp, say) is still found, read-only. The rest of the host's /tmp stays hidden,
    even when the command names it."""
    work = place / "work"
    work.mkdir()
    host = Path("/tmp") / f"studio-coder-tools-{uuid.uuid4().hex}"
    venv, other = host / "venv", host / "other"
    (venv / "bin").mkdir(parents=True)
    other.mkdir()
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (venv / "lib").mkdir()
    (venv / "lib" / "data.txt").write_text("from the venv\n")
    tool = venv / "bin" / "tool"
    tool.write_text(f"#!/bin/sh\ncat {venv}/lib/data.txt\n")
    tool.chmod(0o755)
    (venv / "bin" / "python").symlink_to(sys.executable)  # a link out of the venv, as in one
    (other / "secret.txt").write_text("not for the coder\n")
    env = {**os.environ, "PATH": f"{venv / 'bin'}:{os.environ['PATH']}"}
    try:
        sandbox = Sandbox.from_config()
        code, out = sh(sandbox, f"tool && {venv}/bin/python -c 'print(40 + 2)'", work, env=env)
        assert (code, out.split("\n")[:2]) == (0, ["from the venv", "42"]), out
        code, out = sh(sandbox, f"touch {venv}/bin/new; cat {other}/secret.txt", work, env=env)
        assert "Read-only file system" in out and "not for the coder" not in out, out
        assert not (venv / "bin" / "new").exists()
        code, out = sh(sandbox, "tool", work)  # not on this command's PATH: not there
        assert code != 0 and "from the venv" not in out
    finally:
        shutil.rmtree(host, ignore_errors=True)


@needs_bwrap
def test_our_preloads_do_not_reach_the_sandbox(place: Path) -> None:
    """agent-node's LD_PRELOAD (OpenBLAS for MLX) is neither bwrap's nor the command's."""
    work = place / "work"
    work.mkdir()
    env = {**os.environ, "LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libm.so.6"}
    code, out = sh(Sandbox.from_config(), "echo ${LD_PRELOAD:-none}", work, env=env)
    assert (code, out.strip()) == (0, "none")
