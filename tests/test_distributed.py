"""One model across several ranks: the real `inference-node serve --ranks N` (mlx.launch, the
ring backend on loopback), compared with the same engine in one process.

On this machine the ranks share two CPU cores, so these runs are slow; what they check is that
the split model computes what the whole one does, that the ranks stay in step through every
kind of engine step, that a lost rank is named within seconds, and that admission counts each
host on its own.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import cancel_after_deltas, running_server
from distributed_nodes import (
    Node,
    cpu_seconds,
    health,
    launcher_pid,
    rank_pids,
    serving_ranks,
    wait_for_health,
)
from tiny_models import build_chain_model, write_random_chat_model

from inference_node.api import pb, rpc

# Ranks start, load and step slowly on a shared 2-core machine (two or three processes per
# model); the suite's 300 s per test is too short for a module's first test, which starts them.
pytestmark = pytest.mark.timeout(1800)

WORDS = " ".join(f"w{i}" for i in range(0, 200, 3))
QWEN = "qwen2.5-coder-0.5b"
# Qwen-Coder on two ranks took 126 s here (each rank and the one-rank reference load 2 GB of
# float32). It ran only when an earlier test had happened to install the model; now it runs when
# asked, and the skip says how.
QWEN_RANKS_ENV = "STUDIO_CODER_TEST_QWEN_RANKS"


def chat(stub: Any, model: str, text: str, max_tokens: int = 24,
         timeout: float = 900) -> tuple[str, pb.Done]:
    out, done = "", None
    request = pb.ChatRequest(model=model, messages=[pb.Message(role="user", text=text)],
                             max_tokens=max_tokens)
    for ev in stub.Chat(request, timeout=timeout):
        kind = ev.WhichOneof("event")
        if kind == "delta":
            out += ev.delta.text
        elif kind == "done":
            done = ev.done
    assert done is not None
    return out, done


def one_rank(models: list[dict[str, Any]], prompts: list[tuple[str, str, int]]
             ) -> list[str]:
    """The same prompts through the same engine in this process, on one rank."""
    with running_server(models, engine={"prompt_cache_mb": 64.0}) as (_, target):
        with grpc.insecure_channel(target) as ch:
            stub = rpc.InferenceStub(ch)
            return [chat(stub, m, text, n)[0] for m, text, n in prompts]


def installed_qwen() -> Path | None:
    from studio_common.paths import studio_home

    candidates = [studio_home() / "models" / QWEN,
                  Path("~/.local/share/studio-coder/models").expanduser() / QWEN,
                  Path(__file__).resolve().parents[1] / ".home" / "test-models" / QWEN]
    return next((c for c in candidates if (c / "config.json").is_file()), None)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("dist-models")
    return {
        "llama": write_random_chat_model(root / "llama", "llama", seed=1),
        "qwen2": write_random_chat_model(root / "qwen2", "qwen2", seed=2, rope_theta=10000.0),
        "loop": build_chain_model(root / "loop", ["a", "b", "c", "d", "e", "f", "a"]),
    }


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory, tiny: dict[str, Path],
              smollm2_dir: Path) -> Iterator[tuple[Node, list[dict[str, Any]]]]:
    models = [
        {"name": "tiny-llama", "path": str(tiny["llama"])},
        {"name": "tiny-qwen2", "path": str(tiny["qwen2"]), "sharding": "pipeline"},
        {"name": "loop", "path": str(tiny["loop"])},
        {"name": "smollm2", "path": str(smollm2_dir)},
    ]
    qwen = installed_qwen() if os.environ.get(QWEN_RANKS_ENV) == "1" else None
    if qwen is not None:
        models.append({"name": QWEN, "path": str(qwen)})
    with serving_ranks(tmp_path_factory.mktemp("two-ranks"), models) as node:
        yield node, models


@pytest.fixture
def stub(two_ranks: tuple[Node, list[dict[str, Any]]]) -> Iterator[Any]:
    with grpc.insecure_channel(two_ranks[0].target) as ch:
        yield rpc.InferenceStub(ch)


# Each of these starts its own node; the shared two-rank node below starts after them, so its
# ranks (their memory, their heartbeats, a second of polling after each request) are not up
# beside them.

@pytest.mark.slow
def test_greedy_output_across_three_ranks_equals_one_rank_on_smollm2(
        tmp_path: Path, smollm2_dir: Path) -> None:
    # SmolLM2-135M's 9 heads and 3 KV heads divide among 3 ranks, not 2 (see below).
    # One prompt, six tokens ("The capital of France is Paris"): three processes on two shared
    # cores take about 1.5 s a step here, waiting on each other's all-reduces (this test was
    # 120 s of CI's 15 minutes with two prompts of 12); the two-rank tests above run several.
    models = [{"name": "smollm2", "path": str(smollm2_dir)}]
    prompts = [("smollm2", "What is the capital of France?", 6)]
    with serving_ranks(tmp_path, models, ranks=3) as node:
        with grpc.insecure_channel(node.target) as ch:
            stub = rpc.InferenceStub(ch)
            split = [chat(stub, m, t, n)[0] for m, t, n in prompts]
            memory = stub.GetMemory(pb.GetMemoryRequest(), timeout=10)
    assert len(memory.hosts) == 3
    assert "Paris" in split[0]
    assert split == one_rank(models, prompts)


def test_a_model_too_big_for_one_host_is_admitted_across_two_and_one_too_big_for_both_is_not(
        tmp_path: Path) -> None:
    # ~94 MB of float32 weights: each of 2 ranks holds ~48 MB (the embeddings on both).
    big = write_random_chat_model(tmp_path / "big", "llama", hidden_size=512,
                                  intermediate_size=2048, num_hidden_layers=6)
    # ~190 MB: ~95 MB per rank, over each host's budget.
    huge = write_random_chat_model(tmp_path / "huge", "llama", hidden_size=512,
                                   intermediate_size=2048, num_hidden_layers=12)
    models = [{"name": "big", "path": str(big)}, {"name": "huge", "path": str(huge)}]
    small = {"budget_gb": 0.06, "overhead_mb": 1.0}  # 61 MB per host
    with running_server(models, engine={"prompt_cache_mb": 0.0}, **small) as (_, target):
        with grpc.insecure_channel(target) as ch, pytest.raises(grpc.RpcError) as one:
            rpc.InferenceStub(ch).LoadModel(pb.LoadModelRequest(name="big"), timeout=60)
    assert one.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    with serving_ranks(tmp_path / "two", models, memory=small,
                       engine={"prompt_cache_mb": 0.0}) as node:
        with grpc.insecure_channel(node.target) as ch:
            stub = rpc.InferenceStub(ch)
            with pytest.raises(grpc.RpcError) as both:
                stub.LoadModel(pb.LoadModelRequest(name="huge"), timeout=600)
            stub.LoadModel(pb.LoadModelRequest(name="big"), timeout=600)
            _, done = chat(stub, "big", "hello w1", 8)
            memory = stub.GetMemory(pb.GetMemoryRequest(), timeout=10)
    assert done.usage.completion_tokens > 0
    for h in memory.hosts:  # each host holds its part, within its own budget
        assert 40 * 2**20 < h.weights_bytes <= h.budget_bytes
    assert memory.weights_bytes > 61 * 2**20  # more than any one host could hold
    assert both.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    message = both.value.details()
    assert "huge (tensor split over 2 ranks) does not fit on rank 0 on 127.0.0.1" in message
    assert "rank 0 on 127.0.0.1 needs" in message and "rank 1 on 127.0.0.1 needs" in message


def _stream_until(stub: Any, n: int, then: Any) -> tuple[grpc.RpcError, float]:
    """Stream from `loop`; after `n` tokens call `then()`; return the error and its delay."""
    request = pb.ChatRequest(model="loop", messages=[pb.Message(role="user", text="hi")],
                             max_tokens=1800)
    seen, t0 = 0, 0.0
    try:
        for ev in stub.Chat(request, timeout=600):
            if ev.WhichOneof("event") == "delta":
                seen += 1
                if seen == n:
                    then()
                    t0 = time.monotonic()
    except grpc.RpcError as e:
        return e, time.monotonic() - t0
    raise AssertionError("the stream ended without an error")


def test_killing_rank_1_mid_stream_is_unavailable_naming_it_and_the_ranks_come_back(
        tmp_path: Path, tiny: dict[str, Path]) -> None:
    models = [{"name": "loop", "path": str(tiny["loop"])}]
    with serving_ranks(tmp_path, models,
                       distributed={"relaunch_s": 4.0, "step_timeout_s": 5.0}) as node:
        with grpc.insecure_channel(node.target) as ch:
            stub = rpc.InferenceStub(ch)
            victim = rank_pids(node.port)[1]
            error, after = _stream_until(stub, 10, lambda: os.kill(victim, signal.SIGKILL))
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            assert after < 10.0
            assert "rank 1 on 127.0.0.1" in error.details()
            # Until the ranks are back: NOT_SERVING (from rank 0, then from the supervisor
            # holding the port), and every call says why.
            seen = []
            while "NOT_SERVING" not in seen[-1:] and len(seen) < 100:
                seen.append(health(node.target))
                time.sleep(0.1)
            assert seen[-1] == "NOT_SERVING" and "SERVING" not in seen
            again = _refused_with_a_reason(stub)
            assert again.code() == grpc.StatusCode.UNAVAILABLE
            assert "rank 1 on 127.0.0.1" in again.details()
            wait_for_health(node.target, "SERVING", 300, node.proc, node.log)
            assert chat(stub, "loop", "hi", 6)[0] == "a b c d e f"


def _refused_with_a_reason(stub: Any) -> grpc.RpcError:
    """A chat while the ranks are down. As rank 0 exits and the supervisor takes the port over
    there is a moment with nothing listening (a refused connection, which says nothing of
    why); that moment is waited out, up to 30 s, and the next answer returned."""
    deadline = time.monotonic() + 30
    while True:
        with pytest.raises(grpc.RpcError) as e:
            chat(stub, "loop", "hi", 3, timeout=60)
        if "failed to connect" not in (e.value.details() or "") or time.monotonic() > deadline:
            return e.value
        time.sleep(0.1)


def test_a_hung_rank_is_unavailable_after_the_step_timeout_and_a_restart_restores_service(
        tmp_path: Path, tiny: dict[str, Path]) -> None:
    models = [{"name": "loop", "path": str(tiny["loop"])}]
    with serving_ranks(tmp_path, models,
                       distributed={"relaunch_s": 0.0, "step_timeout_s": 3.0}) as node:
        with grpc.insecure_channel(node.target) as ch:
            stub = rpc.InferenceStub(ch)
            victim = rank_pids(node.port)[1]
            error, after = _stream_until(stub, 10, lambda: os.kill(victim, signal.SIGSTOP))
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            # the timeout runs from the step rank 1 stopped in, which began just before SIGSTOP
            assert 2.5 <= after < 10.0
            assert "rank 1 on 127.0.0.1 did not answer within 3 s" in error.details()
            wait_for_health(node.target, "NOT_SERVING", 30)
            assert node.stop() == 1  # it was down when stopped
            node.start()
            assert chat(stub, "loop", "hi", 6)[0] == "a b c d e f"


def test_greedy_output_across_two_ranks_equals_one_rank_on_a_tiny_llama(
        two_ranks: tuple[Node, list[dict[str, Any]]], stub: Any) -> None:
    prompts = [("tiny-llama", "hello w3 w4", 24),
               # a long prompt: its insert goes to the other rank in more than one frame
               ("tiny-llama", WORDS, 24)]
    split = [chat(stub, m, t, n)[0] for m, t, n in prompts]
    again, done = chat(stub, *prompts[1])  # the same prefix again, from the prompt cache
    assert done.usage.cached_prompt_tokens > 0
    whole = one_rank(two_ranks[1][:1], prompts)
    assert all(len(s.split()) >= 3 for s in split), split
    assert split == whole
    assert again == whole[1]


def test_greedy_output_of_a_pipeline_split_equals_one_rank(
        two_ranks: tuple[Node, list[dict[str, Any]]], stub: Any) -> None:
    prompts = [("tiny-qwen2", "hello w9 w10", 24), ("tiny-qwen2", WORDS, 24)]
    split = [chat(stub, m, t, n)[0] for m, t, n in prompts]
    memory = stub.GetMemory(pb.GetMemoryRequest(), timeout=10)
    assert split == one_rank(two_ranks[1][1:2], prompts)
    assert [h.rank for h in memory.hosts] == [0, 1]


def test_greedy_output_across_two_ranks_equals_one_rank_on_qwen_coder(
        two_ranks: tuple[Node, list[dict[str, Any]]], stub: Any) -> None:
    if os.environ.get(QWEN_RANKS_ENV) != "1":
        pytest.skip(f"{QWEN} on two ranks runs only with {QWEN_RANKS_ENV}=1 (about 2 minutes)")
    if not any(m["name"] == QWEN for m in two_ranks[1]):
        pytest.skip(f"{QWEN} is not installed in the store (`inference-node install {QWEN}`)")
    prompts = [(QWEN, "Write a Python function that reverses a string.", 32)]
    split = [chat(stub, m, t, n, timeout=900)[0] for m, t, n in prompts]
    whole = one_rank([m for m in two_ranks[1] if m["name"] == QWEN], prompts)
    assert "def" in split[0] and split == whole


def test_smollm2_is_refused_on_two_ranks_naming_its_heads(stub: Any) -> None:
    # SmolLM2-135M has 9 attention heads and 3 KV heads: mlx-lm splits llama by heads only.
    with pytest.raises(grpc.RpcError) as e:
        stub.LoadModel(pb.LoadModelRequest(name="smollm2"), timeout=600)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "9 attention heads do not divide among 2 ranks" in e.value.details()
    assert "3 ranks would divide them" in e.value.details()


def test_two_concurrent_streams_and_a_cancel_stay_in_step(
        two_ranks: tuple[Node, list[dict[str, Any]]], stub: Any) -> None:
    # The chain model's words are fixed by its weights, so the text shows whether each rank
    # ran the same batch: sequences joining, finishing at different lengths, one cancelled.
    results: dict[int, tuple[str, pb.Done]] = {}

    def run(n: int) -> None:
        results[n] = chat(stub, "loop", "hi", n)

    threads = [threading.Thread(target=run, args=(n,)) for n in (9, 20)]
    for t in threads:
        t.start()
    request = pb.ChatRequest(model="loop", messages=[pb.Message(role="user", text="hi")],
                             max_tokens=1500)
    call = stub.Chat(request, timeout=900)
    cancel_after_deltas(call)
    for t in threads:
        t.join(300)
    cycle = "a b c d e f".split()
    for n in (9, 20):
        text, done = results[n]
        assert text.split() == (cycle * 4)[:n] and done.finish_reason == "length"
    # After the cancel the ranks still agree on the split model's arithmetic.
    prompt = ("tiny-llama", "hello w1 w2", 24)
    assert chat(stub, *prompt)[0] == one_rank(two_ranks[1][:1], [prompt])[0]
    memory = stub.GetMemory(pb.GetMemoryRequest(), timeout=10)
    assert all(h.reserved_bytes == 0 for h in memory.hosts)  # every reservation released


def test_get_memory_has_a_row_per_host_with_its_part_of_the_weights(
        two_ranks: tuple[Node, list[dict[str, Any]]], stub: Any) -> None:
    chat(stub, "tiny-llama", "hello", 2)
    memory = stub.GetMemory(pb.GetMemoryRequest(), timeout=10)
    assert [h.host for h in memory.hosts] == ["rank 0 on 127.0.0.1", "rank 1 on 127.0.0.1"]
    for h in memory.hosts:
        assert h.budget_bytes > 0 and 0 < h.weights_bytes <= h.committed_bytes
    assert memory.weights_bytes == sum(h.weights_bytes for h in memory.hosts)
    assert memory.budget_bytes == sum(h.budget_bytes for h in memory.hosts)


def test_the_launcher_and_the_other_rank_of_an_idle_node_sleep(
        two_ranks: tuple[Node, list[dict[str, Any]]], stub: Any) -> None:
    # mlx.launch as shipped waits on its ranks' always-writable stdin pipes and spun a core
    # here (3.4 s of CPU in 3 s) with nothing to forward; MLX's ring backend polls its sockets,
    # so a rank waiting in a collective for rank 0's next message spun another. Once a
    # heartbeat finds the group idle, the other rank waits on its wake-up line instead.
    node = two_ranks[0]
    assert chat(stub, "loop", "hi", 6)[0] == "a b c d e f"
    time.sleep(2.5)  # a heartbeat (every second when idle) parks rank 1
    launcher = launcher_pid(node.port)
    follower = rank_pids(node.port)[1]
    before = {pid: cpu_seconds(pid) for pid in (launcher, follower)}
    time.sleep(3)
    used = {pid: cpu_seconds(pid) - before[pid] for pid in before}
    assert used[launcher] < 0.3 and used[follower] < 0.5, used
    assert chat(stub, "loop", "hi", 6)[0] == "a b c d e f"  # rung awake, it follows again
