"""`python -m bench.agent_tasks --record FILE`: a long run goes on from its record after a stop,
and a stop (SIGTERM, ^C, the inference node lost) records no result for the tasks it cut off."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path
from typing import Any

import pytest
from own_tasks import own_tasks

from agent_node.exceptions import Cancelled, InferenceUnavailable
from bench import agent_tasks, task_record


def test_a_run_that_stopped_goes_on_from_its_record(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("BENCH_SMOKE", "1")
    monkeypatch.setenv("STUDIO_CODER_HOME", str(tmp_path / "home"))
    tasks_dir, record = own_tasks(tmp_path / "my-tasks"), tmp_path / "run.jsonl"
    bench = ["--tasks-dir", str(tasks_dir), "--json", "--record", str(record)]
    assert agent_tasks.main(bench) == 0
    first = {r["name"]: r for r in json.loads(capsys.readouterr().out)["tasks"]}
    head, *rows = record.read_text().splitlines()
    assert json.loads(head)["settings"]["model"] == "smoke-scripted"
    assert [json.loads(r) for r in rows] == [first["fizzbuzz"], first["shout"]]

    # stopped while the second task's row was being written: its line is cut short
    record.write_text(f"{head}\n{rows[0]}\n{rows[1][:40]}")
    assert agent_tasks.main(bench) == 0
    out, err = capsys.readouterr()
    again = {r["name"]: r for r in json.loads(out)["tasks"]}
    assert json.loads(out)["from_record"] == ["fizzbuzz"]
    assert "1 of 2 tasks are done already; running the other 1" in err
    assert again["fizzbuzz"] == first["fizzbuzz"]  # taken from the record, not run again
    assert again["shout"]["run_dir"] != first["shout"]["run_dir"]  # run again
    assert [json.loads(r)["name"] for r in record.read_text().splitlines()[1:]
            if r != rows[1][:40]] == ["fizzbuzz", "shout"]

    assert agent_tasks.main(bench) == 0  # all done: nothing runs, the same rows come back
    assert json.loads(capsys.readouterr().out)["tasks"] == [again["fizzbuzz"], again["shout"]]
    (tmp_path / "kept" / "old").mkdir(parents=True)
    assert agent_tasks.main([*bench, "--keep", str(tmp_path / "kept")]) == 2
    assert "a run that goes on from --record keeps the tasks it runs now in a folder of their " \
           "own" in capsys.readouterr().err

    # rows made with other settings are not one run
    assert agent_tasks.main([*bench, "--turns", "9"]) == 2
    assert "made with other settings (limits: turns 3 there, 9 now; loop: coder_max_turns " \
           "3 there, 9 now)" in capsys.readouterr().err
    record.write_text("not a record\n")
    assert agent_tasks.main(bench) == 2
    assert "is not a bench record" in capsys.readouterr().err


@pytest.mark.parametrize("parallel", ["1", "2"])
def test_a_lost_node_stops_the_run_and_records_no_result_for_the_tasks_it_cut_off(
        parallel: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A node that went away (or was stopped with the run) is no task's result: the run stops
    with exit 3, and the task it cut off runs again when the run goes on from its record."""
    monkeypatch.setenv("BENCH_SMOKE", "1")
    monkeypatch.setenv("STUDIO_CODER_HOME", str(tmp_path / "home"))
    tasks_dir, record = own_tasks(tmp_path / "my-tasks"), tmp_path / "run.jsonl"
    bench = ["--tasks-dir", str(tasks_dir), "--json", "--record", str(record),
             "--parallel", parallel]
    chat = agent_tasks.SmokeModel.chat

    def lost_on_shout(self: Any, messages: list[dict[str, Any]], **kw: Any) -> Any:
        if "shout(text)" in json.dumps(messages):
            raise InferenceUnavailable("lost the inference node at 127.0.0.1:1 (Socket closed)")
        return chat(self, messages, **kw)

    monkeypatch.setattr(agent_tasks.SmokeModel, "chat", lost_on_shout)
    assert agent_tasks.main(bench) == 3
    err = capsys.readouterr().err
    assert "the inference node is unreachable: lost the inference node" in err
    assert f"the tasks that finished are in {record}" in err
    assert [json.loads(r)["name"] for r in record.read_text().splitlines()[1:]] == ["fizzbuzz"]

    monkeypatch.setattr(agent_tasks.SmokeModel, "chat", chat)  # the node is back
    assert agent_tasks.main(bench) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["from_record"] == ["fizzbuzz"]
    assert [t["name"] for t in out["tasks"]] == ["fizzbuzz", "shout"]
    assert out["tasks"][1]["failure"] != "run_error"


def test_a_run_stopped_by_sigterm_records_nothing_for_the_task_it_cut_off(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """SIGTERM stops a parallel run at once; the task in flight then fails on the stop itself
    (its channel closed) and that is not its result: it runs again when the run goes on."""
    monkeypatch.setenv("BENCH_SMOKE", "1")
    monkeypatch.setenv("STUDIO_CODER_HOME", str(tmp_path / "home"))
    tasks_dir, record = own_tasks(tmp_path / "my-tasks"), tmp_path / "run.jsonl"
    stopping = threading.Event()
    stop = task_record.Record.stop

    def stop_and_say(self: task_record.Record) -> None:
        stop(self)
        stopping.set()

    def stopped_in_shout(self: Any, messages: list[dict[str, Any]], **kw: Any) -> Any:
        if "shout(text)" not in json.dumps(messages):
            return chat(self, messages, **kw)
        os.kill(os.getpid(), signal.SIGTERM)  # as `kill PID` would
        assert stopping.wait(60)
        raise Cancelled("the call was cancelled: channel closed")

    chat = agent_tasks.SmokeModel.chat
    monkeypatch.setattr(task_record.Record, "stop", stop_and_say)
    monkeypatch.setattr(agent_tasks.SmokeModel, "chat", stopped_in_shout)
    with pytest.raises(SystemExit) as stopped:
        agent_tasks.main(["--tasks-dir", str(tasks_dir), "--json", "--record", str(record),
                          "--parallel", "2", "--keep", str(tmp_path / "kept")])
    assert stopped.value.code == 128 + signal.SIGTERM
    for t in threading.enumerate():  # the task in flight, left running by the stop
        if t.name.startswith("task"):
            t.join(60)
    assert "shout" not in [json.loads(r)["name"] for r in record.read_text().splitlines()[1:]]
    err = capsys.readouterr().err  # and the log does not call the stop the task's failure
    assert "shout: cut off by the stop, no result kept" in err and "shout: run_error" not in err


def test_the_loop_settings_leave_out_a_key_that_changes_nothing_there() -> None:
    """`stop_when_stalled` does nothing where the coder samples its retries (the bench's
    small-coder loop): left out there, a record made before the key existed goes on; where
    it applies, it is recorded."""
    from agent_node.config import load_config

    cfg = load_config(Path(agent_tasks.__file__).parents[1] / "examples" / "small-coder.toml")
    assert cfg.loop.retry_temperature > 0
    assert "stop_when_stalled" not in agent_tasks.loop_settings(cfg, None)
    cfg.loop.retry_temperature = 0.0  # greedy: a stalled round would repeat itself
    assert agent_tasks.loop_settings(cfg, None)["stop_when_stalled"] is True
    assert agent_tasks.loop_settings(cfg, None)["task_examples"] is True  # on in small-coder
    cfg.loop.task_examples = False  # off, as every record made before it existed ran
    assert "task_examples" not in agent_tasks.loop_settings(cfg, None)


def test_a_record_goes_on_with_the_same_loop_from_another_file_and_says_where_it_came_from(
        tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    settings = {"model": "m", "loop": {"config": "examples/small-coder.toml", "coder": "files"}}
    task_record.Record(path, settings)
    assert json.loads(path.read_text())["settings"]["loop"]["config"] == \
        "examples/small-coder.toml"
    # the same [loop] copied elsewhere (or a record labelled "defaults" before --config was
    # written down) is the same run
    task_record.Record(path, {**settings, "loop": {**settings["loop"], "config": "mine.toml"}})
    with pytest.raises(task_record.TaskError, match="coder \"files\" there, \"tools\" now"):
        task_record.Record(path, {**settings, "loop": {"config": "mine.toml", "coder": "tools"}})
