"""The embedded default, SmolLM2-135M-Instruct, over gRPC matches mlx-lm in process."""

from __future__ import annotations

import pytest
from test_server import collect, user

from inference_node.api import pb

PROMPTS = [
    "What is the capital of France?",
    "Write a Python function that reverses a string.",
    "List three colours of the rainbow.",
]
MAX_TOKENS = 24


@pytest.fixture
def smol(smol_server):
    return smol_server


@pytest.fixture(scope="module")
def in_process(smollm2_dir):
    """mlx-lm's own load, with the same settings the engine serves it with."""
    import mlx.core as mx
    from mlx_lm import load
    from mlx_lm.utils import dequantize_model

    model, tokenizer = load(str(smollm2_dir))[:2]
    if not mx.metal.is_available():  # engine.dequantize_on_cpu, the default
        model = dequantize_model(model)
    return model, tokenizer


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_output_over_grpc_is_identical_to_mlx_lm_in_process(
    smol, in_process, stub_for, prompt
):
    from mlx_lm import stream_generate

    model, tokenizer = in_process
    tokens = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True
    )
    pieces = list(stream_generate(model, tokenizer, tokens, max_tokens=MAX_TOKENS))
    expected_text = "".join(p.text for p in pieces)
    expected_tokens = [p.token for p in pieces]

    r = collect(stub_for(smol[1]).Chat(
        pb.ChatRequest(model="smollm2", messages=[user(prompt)], max_tokens=MAX_TOKENS),
        timeout=120,
    ))
    assert r["admitted"].prompt_tokens == len(tokens)
    assert r["done"].usage.completion_tokens == len(expected_tokens)
    assert r["content"] == expected_text
    assert r["done"].finish_reason == pieces[-1].finish_reason


def test_smollm2_answers_coherently(smol, stub_for):
    r = collect(stub_for(smol[1]).Chat(
        pb.ChatRequest(model="smollm2", messages=[user(PROMPTS[0])], max_tokens=16), timeout=120
    ))
    assert "Paris" in r["content"]
    assert r["done"].timings.decode_tokens_per_second > 0


def test_footprint_is_known_before_loading_and_close_to_what_loading_measured(smol, stub_for):
    """On a CPU the engine serves SmolLM2 dequantized; admission knew that size beforehand."""
    stub = stub_for(smol[1])
    collect(stub.Chat(pb.ChatRequest(model="smollm2", messages=[user("hi")], max_tokens=2),
                      timeout=120))
    (info,) = stub.ListModels(pb.ListModelsRequest(), timeout=10).models
    weights_estimate = info.estimated_bytes - 64 * 1024 * 1024  # minus the fixed overhead
    assert info.measured_bytes > 0
    assert abs(weights_estimate - info.measured_bytes) <= 0.15 * info.measured_bytes


def test_list_models_and_get_memory_give_one_figure_for_the_weights(smol, stub_for):
    """Issue 18: ListModels said 538,060,040 and GetMemory 605,168,904 for this model. The
    difference was the 64 MiB overhead, counted in one and not the other under one name.
    Now weights_bytes is the weights in both, and the overhead and what counts against the
    budget (resident_bytes) are labelled figures of their own."""
    stub = stub_for(smol[1])
    collect(stub.Chat(pb.ChatRequest(model="smollm2", messages=[user("hi")], max_tokens=2),
                      timeout=120))
    (info,) = stub.ListModels(pb.ListModelsRequest(), timeout=10).models
    memory = stub.GetMemory(pb.GetMemoryRequest(), timeout=10)
    (row,) = [m for m in memory.models if m.name == "smollm2"]
    assert info.weights_bytes == row.weights_bytes == info.measured_bytes > 0
    assert info.overhead_bytes == row.overhead_bytes == 64 * 1024 * 1024
    assert info.resident_bytes == row.resident_bytes == row.weights_bytes + row.overhead_bytes
    assert row.estimated_bytes == info.estimated_bytes and row.measured_bytes == info.measured_bytes
    assert memory.weights_bytes >= row.weights_bytes
    assert memory.committed_bytes == (memory.weights_bytes + memory.overhead_bytes
                                      + memory.reserved_bytes)
