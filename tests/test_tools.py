"""The coder's tools: confinement to the worktree, exact edits, bounded output, killed commands,
and failures that come back as results instead of ending the loop."""

from __future__ import annotations

import time
from pathlib import Path

import jsonschema
import pytest
from procs import gone, kill_all, tag

from agent_node.tools import FINISH, Tool, ToolError, make_tools, run_tool
from agent_node.tools.truncate import truncate


@pytest.fixture
def worktree(tmp_path: Path) -> Path:
    root = tmp_path / "worktree"
    (root / "src").mkdir(parents=True)
    (root / "src" / "app.py").write_text("def f():\n    return 1\n\n\ndef g():\n    return 1\n")
    (root / "README.md").write_text("# demo\n")
    return root


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "secret.txt").write_text("do not read\n")
    return folder


@pytest.fixture
def tools(worktree: Path) -> dict[str, Tool]:
    return make_tools(worktree, timeout_s=1, output_limit=2000)


def call(tools: dict[str, Tool], name: str, **arguments: object):
    return run_tool(tools, name, arguments)


# --- confinement ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["read", "write", "edit", "find", "grep"])
def test_absolute_path_is_refused_by_every_file_tool(tools, outside, name):
    args = {"path": str(outside / "secret.txt")}
    args |= {"write": {"content": "x"}, "edit": {"old": "do", "new": "x"}}.get(name, {})
    args |= {"pattern": "do"} if name == "grep" else {}
    result = run_tool(tools, name, args)
    assert not result.ok
    assert "absolute" in result.output and "relative to the checkout root" in result.output
    assert (outside / "secret.txt").read_text() == "do not read\n"


def test_dotdot_that_climbs_out_is_refused(tools, outside):
    result = call(tools, "read", path="../outside/secret.txt")
    assert not result.ok and "'..'" in result.output
    assert not call(tools, "write", path="src/../../outside/new.txt", content="x").ok
    assert not (outside / "new.txt").exists()


def test_dotdot_that_stays_inside_is_allowed(tools):
    result = call(tools, "read", path="src/../README.md")
    assert result.ok and "# demo" in result.output


def test_symlink_to_a_file_outside_is_refused(tools, worktree, outside):
    (worktree / "leak.txt").symlink_to(outside / "secret.txt")
    result = call(tools, "read", path="leak.txt")
    assert not result.ok and "symlink" in result.output
    assert "do not read" not in result.output


def test_symlinked_parent_folder_to_outside_is_refused(tools, worktree, outside):
    (worktree / "src" / "linked").symlink_to(outside, target_is_directory=True)
    assert not call(tools, "read", path="src/linked/secret.txt").ok
    assert not call(tools, "write", path="src/linked/planted.txt", content="x").ok
    assert not call(tools, "grep", pattern="do", path="src/linked").ok
    assert not (outside / "planted.txt").exists()


def test_write_through_a_symlink_to_outside_is_refused(tools, worktree, outside):
    (worktree / "config.txt").symlink_to(outside / "secret.txt")
    (worktree / "dangling.txt").symlink_to(outside / "not-yet.txt")
    result = call(tools, "write", path="config.txt", content="overwritten")
    assert not result.ok and "outside the checkout" in result.output
    assert not call(tools, "write", path="dangling.txt", content="created").ok
    assert not call(tools, "edit", path="config.txt", old="do not", new="may").ok
    assert (outside / "secret.txt").read_text() == "do not read\n"
    assert not (outside / "not-yet.txt").exists()


def test_grep_does_not_read_through_a_symlink_to_outside(tools, worktree, outside):
    (worktree / "leak.txt").symlink_to(outside / "secret.txt")
    result = call(tools, "grep", pattern="do not read")
    assert result.ok and "leak.txt" not in result.output


def test_symlink_inside_the_worktree_is_followed(tools, worktree):
    (worktree / "alias.py").symlink_to(worktree / "src" / "app.py")
    assert "def f" in call(tools, "read", path="alias.py").output


# --- read / write / edit -------------------------------------------------------------------


def test_read_numbers_lines_and_reads_a_range(tools):
    result = call(tools, "read", path="src/app.py", offset=2, limit=2)
    assert result.ok
    assert result.output.splitlines()[:2] == ["2\t    return 1", "3\t"]
    assert "offset=4 to continue" in result.output


def test_read_names_missing_file_folder_and_binary(tools, worktree):
    (worktree / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00")
    missing = call(tools, "read", path="src/nope.py")
    assert not missing.ok and "src/nope.py does not exist" in missing.output
    folder = call(tools, "read", path="src")
    assert not folder.ok and "directory" in folder.output and "find" in folder.output
    binary = call(tools, "read", path="logo.png")
    assert not binary.ok and "binary" in binary.output


def test_write_creates_folders_and_replaces_whole_files(tools, worktree):
    result = call(tools, "write", path="pkg/sub/mod.py", content="x = 1\n")
    assert result.ok and "created pkg/sub/mod.py" in result.output
    assert (worktree / "pkg/sub/mod.py").read_text() == "x = 1\n"
    assert "replaced" in call(tools, "write", path="pkg/sub/mod.py", content="x = 2\n").output
    assert (worktree / "pkg/sub/mod.py").read_text() == "x = 2\n"
    assert [p.name for p in (worktree / "pkg/sub").iterdir()] == ["mod.py"]  # no temp file left


def test_edit_replaces_a_unique_match(tools, worktree):
    result = call(
        tools, "edit", path="src/app.py", old="def g():\n    return 1", new="def g():\n    return 2"
    )
    assert result.ok
    assert (worktree / "src/app.py").read_text().endswith("def g():\n    return 2\n")


def test_edit_with_no_match_points_at_the_closest_line(tools, worktree):
    before = (worktree / "src/app.py").read_text()
    result = call(tools, "edit", path="src/app.py", old="def g():\n  return 1", new="x")
    assert not result.ok
    assert "not found in src/app.py" in result.output and "line 5" in result.output
    assert (worktree / "src/app.py").read_text() == before


def test_edit_with_several_matches_gives_the_count_and_lines(tools, worktree):
    before = (worktree / "src/app.py").read_text()
    result = call(tools, "edit", path="src/app.py", old="return 1", new="return 2")
    assert not result.ok
    assert "2 times" in result.output and "lines 2, 6" in result.output
    assert (worktree / "src/app.py").read_text() == before


# --- find / grep ---------------------------------------------------------------------------


def test_find_matches_globs_and_skips_tool_folders(tools, worktree):
    for skipped in [".git", "node_modules/lib", ".venv/lib"]:
        (worktree / skipped).mkdir(parents=True)
        (worktree / skipped / "hidden.py").write_text("")
    (worktree / "src" / "deep").mkdir()
    (worktree / "src" / "deep" / "b.py").write_text("")
    assert call(tools, "find", pattern="*.py").output.splitlines() == [
        "src/app.py",
        "src/deep/b.py",
    ]
    assert call(tools, "find", pattern="src/*.py").output.splitlines() == ["src/app.py"]
    assert call(tools, "find", pattern="src/**/*.py").output.splitlines() == [
        "src/app.py",
        "src/deep/b.py",
    ]
    bounded = call(tools, "find", limit=1).output.splitlines()
    assert len(bounded) == 2 and "more not shown" in bounded[1]


def test_grep_reports_lines_and_skips_binary_files(tools, worktree):
    (worktree / "blob.bin").write_bytes(b"return 1\x00\x01")
    result = call(tools, "grep", pattern=r"return \d")
    assert result.output.splitlines() == [
        "src/app.py:2:     return 1",
        "src/app.py:6:     return 1",
    ]
    bad = call(tools, "grep", pattern="(")
    assert not bad.ok and "not a valid regular expression" in bad.output


# --- bash ----------------------------------------------------------------------------------


def test_bash_returns_exit_code_and_combined_output(tools):
    result = call(tools, "bash", command="echo out; echo err >&2; exit 3")
    assert result.ok
    assert result.output.startswith("exit code 3")
    assert "out" in result.output and "err" in result.output


def test_bash_runs_in_the_worktree(tools, worktree):
    assert str(worktree.resolve()) in call(tools, "bash", command="pwd").output


def test_bash_timeout_kills_the_command_and_its_children(tools):
    mark = tag()
    started = time.monotonic()
    try:
        result = call(tools, "bash", command=f"sleep {mark} & sleep 1000")
        elapsed = time.monotonic() - started
        assert not result.ok and "timed out after 1 s" in result.output
        assert elapsed < 5
        assert gone(mark), f"background child sleep {mark} survived the timeout"
    finally:
        kill_all(mark)


def test_bash_timeout_kills_a_command_that_ignores_sigterm(tools):
    mark = tag()
    command = f"trap '' TERM; bash -c \"trap '' TERM; sleep {mark}\" & wait"
    try:
        result = call(tools, "bash", command=command)
        assert not result.ok and "timed out" in result.output
        assert gone(mark), f"child sleep {mark} ignoring SIGTERM survived SIGKILL"
    finally:
        kill_all(mark)


def test_bash_background_process_does_not_outlive_the_command(tools):
    mark = tag()
    try:
        result = call(tools, "bash", command=f"sleep {mark} &")
        assert result.ok and result.output.startswith("exit code 0")
        assert gone(mark)
    finally:
        kill_all(mark)


def test_bash_setsid_child_does_not_outlive_the_command(tools):
    mark = tag()
    try:
        result = call(tools, "bash", command=f"setsid -f sleep {mark}; echo done")
        assert result.ok and "done" in result.output
        assert gone(mark), f"setsid child sleep {mark} outlived the command"
    finally:
        kill_all(mark)


def test_bash_huge_output_keeps_head_and_tail_with_a_marker(tools):
    result = call(
        tools, "bash", command="echo FIRST; head -c 5000000 /dev/zero | tr '\\0' x; echo; echo LAST"
    )
    assert result.ok
    assert "FIRST" in result.output and result.output.rstrip().endswith("LAST")
    assert "characters cut ...]" in result.output
    assert len(result.output) < 2200


def test_truncate_keeps_both_ends_and_counts_the_cut():
    text = "A" * 100 + "B" * 10_000 + "C" * 100
    out = truncate(text, 200)
    assert out.startswith("A" * 100) and out.endswith("C" * 100)
    assert "[... 10000 characters cut ...]" in out
    assert truncate("short", 200) == "short"


# --- failures become results ---------------------------------------------------------------


def test_a_failing_tool_returns_its_error_and_does_not_raise(tools):
    def broken(args: dict) -> str:
        raise RuntimeError("disk on fire")

    def refusing(args: dict) -> str:
        raise ToolError("config.toml is locked; edit settings.toml instead")

    tools = {**tools, "broken": Tool("broken", "", {"type": "object"}, broken)}
    tools["refusing"] = Tool("refusing", "", {"type": "object"}, refusing)
    result = run_tool(tools, "broken", {})
    assert not result.ok and "RuntimeError: disk on fire" in result.output
    result = run_tool(tools, "refusing", {})
    assert (
        not result.ok
        and result.output == "error: config.toml is locked; edit settings.toml instead"
    )


def test_unknown_tool_is_a_result_naming_the_tools(tools):
    result = run_tool(tools, "delete_everything", {})
    assert not result.ok
    assert "unknown tool 'delete_everything'" in result.output and "read" in result.output


@pytest.mark.parametrize(
    "arguments, expected",
    [
        ({}, "'path' is a required property"),
        ({"path": 3}, "is not of type 'string'"),
        ({"path": "a", "file_path": "b"}, "'file_path' was unexpected"),
        ("{not json", "not valid JSON"),
        (["a"], "must be a JSON object"),
    ],
)
def test_bad_arguments_are_a_result_showing_the_right_call(tools, arguments, expected):
    result = run_tool(tools, "read", arguments)
    assert not result.ok
    assert expected in result.output and "read(path: string" in result.output


def test_arguments_as_json_text_are_accepted(tools):
    assert run_tool(tools, "read", '{"path": "README.md"}').ok


def test_finish_ends_the_round_with_the_report(tools):
    result = call(tools, FINISH, summary="added g", files_changed=["src/app.py"], tests="2 passed")
    assert result.ok and result.finished
    assert "src/app.py" in result.output and "2 passed" in result.output
    assert not call(tools, FINISH).finished  # no summary: the model must call it again


def test_every_tool_has_a_valid_schema_and_spec(tools):
    assert set(tools) == {"read", "write", "edit", "find", "grep", "bash", "finish"}
    for tool in tools.values():
        jsonschema.Draft202012Validator.check_schema(tool.parameters)
        assert set(tool.spec()) == {"name", "description", "parameters"}
        assert tool.description
