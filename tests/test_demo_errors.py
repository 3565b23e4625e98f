"""`agent-node demo` when the inference node refuses a call mid-run: the node's message and where
the record is, with an exit code, never a traceback (a 1.5B judge's request that did not fit an
8 GB budget once ended the demo in one)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from agent_node import demo
from agent_node.exceptions import InferenceUnavailable, WouldNotFit

TOO_BIG = ("Chat with the default coder: a request for qwen2.5-coder-1.5b needs 1.8 GiB of KV "
           "(1020 prompt + 31748 max tokens); only 0.8 GiB of the 7.5 GiB budget is left beside "
           "the loaded weights (qwen2.5-coder-1.5b 6.7 GiB); max_tokens <= 14084 would fit")


class _Client:
    def __enter__(self) -> _Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def model(self, role: str) -> object:
        return object()

    def describer(self) -> None:
        return None


@contextmanager
def _node(cfg: Any, node_config: Any = None) -> Iterator[str]:
    yield "127.0.0.1:1"


@pytest.mark.parametrize(("error", "code", "said"), [
    (WouldNotFit(TOO_BIG), 1, "the inference node refused: " + TOO_BIG),
    (InferenceUnavailable("lost the node at 127.0.0.1:1"), 3,
     "the inference node became unreachable: lost the node"),
])
def test_a_call_the_node_refuses_ends_the_demo_with_its_message_not_a_traceback(
        error: Exception, code: int, said: str, tmp_path, monkeypatch, capsys) -> None:
    import agent_node.client
    import agent_node.loop.orchestrator
    import agent_node.loop.visual

    def run_task(*args: Any, **kwargs: Any) -> dict[str, Any]:
        raise error

    monkeypatch.setenv("STUDIO_CODER_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(demo, "inference_node", _node)
    monkeypatch.setattr(agent_node.client, "connect", lambda cfg: _Client())
    monkeypatch.setattr(agent_node.loop.visual, "default_qa", lambda *a: None)
    monkeypatch.setattr(agent_node.loop.orchestrator, "run_task", run_task)

    config = tmp_path / "agent-node.toml"
    config.write_text("")
    assert demo.main(["--config", str(config)]) == code
    err = capsys.readouterr().err
    assert said in err and "Traceback" not in err
    assert f"is in {tmp_path / 'home' / 'runs'}" in err


def test_a_config_file_that_is_not_there_is_named_without_a_traceback(tmp_path, capsys) -> None:
    assert demo.main(["--config", str(tmp_path / "nowhere.toml")]) == 2
    err = capsys.readouterr().err
    assert "nowhere.toml: no such config file" in err and "Traceback" not in err
