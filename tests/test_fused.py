"""Fused projections: q, k and v as one product, gate and up as another, and the same numbers out.

Random-weight llama and qwen2 models (qwen2's q, k and v have biases) built by tiny_models.py,
loaded through the engine's own loader; the served ones go through the real gRPC server.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import pytest
from conftest import running_server
from mlx.utils import tree_flatten
from tiny_models import write_random_chat_model

from inference_node import fused, mlx_compat
from inference_node.api import pb


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fused")
    return {t: write_random_chat_model(root / t, t, seed=7) for t in ("llama", "qwen2")}


def nbytes(model: Any) -> int:
    return sum(w.nbytes for _, w in tree_flatten(model.parameters()))


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_a_fused_model_computes_what_the_plain_one_does(dirs: dict[str, Path],
                                                        model_type: str) -> None:
    from mlx_lm.models.cache import make_prompt_cache

    plain, _ = mlx_compat.load(dirs[model_type], dequantize=False)
    model, _ = mlx_compat.load(dirs[model_type], dequantize=False)
    before = nbytes(model)
    layers = len(model.model.layers)
    assert fused.fuse_projections(model) == 2 * layers
    assert nbytes(model) == before  # the stacked matrices replace the originals

    attn = model.model.layers[0].self_attn
    assert isinstance(attn.q_proj, fused.Part) and isinstance(attn.v_proj, fused.Part)
    assert [k for k, _ in tree_flatten(attn.parameters()) if "proj" in k and "o_proj" not in k] \
        == (["q_proj.weight", "q_proj.bias"] if model_type == "qwen2" else ["q_proj.weight"])

    # a 2-stream prompt, then decode steps on the KV cache, as the engine runs them
    caches = make_prompt_cache(plain), make_prompt_cache(model)
    tokens = mx.array([[5, 9, 12, 40, 41, 42, 7, 3], [60, 61, 9, 9, 12, 5, 3, 2]])
    for _ in range(6):
        want, got = plain(tokens, cache=caches[0]), model(tokens, cache=caches[1])
        assert mx.allclose(want, got, atol=1e-5).item()
        assert (want.argmax(-1) == got.argmax(-1)).all().item()
        tokens = want[:, -1:].argmax(-1)


def test_each_part_is_its_own_projection_whatever_the_order_of_the_calls() -> None:
    mx.random.seed(3)
    linears = [nn.Linear(16, n, bias=True) for n in (8, 4, 4)]
    block = nn.Module()
    fused._fuse(block, ("q_proj", "k_proj", "v_proj"), linears)
    parts = [block.q_proj, block.k_proj, block.v_proj]
    x, y = mx.random.normal((2, 3, 16)), mx.random.normal((2, 3, 16))

    for order in itertools.permutations(range(3)):
        for i in order:
            assert mx.allclose(parts[i](x), linears[i](x), atol=1e-6).item()
        assert parts[0].product._x is None  # the whole group taken: nothing held past the call
    # interleaved inputs, a part asked twice: each answer is still its own input's
    for i, inp in [(0, x), (1, y), (0, y), (0, x), (2, x), (1, x)]:
        assert mx.allclose(parts[i](inp), linears[i](inp), atol=1e-6).item()


def test_quantized_and_unknown_models_are_left_as_they_are(dirs: dict[str, Path]) -> None:
    model, _ = mlx_compat.load(dirs["llama"], dequantize=False)
    nn.quantize(model, group_size=32, bits=4)
    assert fused.fuse_projections(model) == 0
    assert type(model.model.layers[0].self_attn.q_proj) is nn.QuantizedLinear

    model, _ = mlx_compat.load(dirs["llama"], dequantize=False)
    model.model_type = "some_new_arch"
    assert fused.fuse_projections(model) == 0
    assert type(model.model.layers[0].mlp.up_proj) is nn.Linear


@pytest.fixture(scope="module")
def servers(dirs: dict[str, Path]) -> Iterator[dict[bool, tuple[Any, str]]]:
    models = [{"name": "qwen", "path": str(dirs["qwen2"])}]
    with running_server(models, engine={"fuse_projections": True}) as on, \
            running_server(models, engine={"fuse_projections": False}) as off:
        yield {True: on, False: off}


def replies(stub: Any, prompts: list[str]) -> list[str]:
    """The prompts sent together, so the engine decodes them as one batch."""
    out = [""] * len(prompts)

    def ask(i: int) -> None:
        for ev in stub.Chat(pb.ChatRequest(model="qwen", max_tokens=24,
                                           messages=[pb.Message(role="user", text=prompts[i])]),
                            timeout=180):
            if ev.WhichOneof("event") == "delta":
                out[i] += ev.delta.text

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def test_the_served_replies_are_word_for_word_those_of_the_unfused_engine(
        servers: dict[bool, tuple[Any, str]], stub_for: Any) -> None:
    prompts = ["hello w1 w2", "what is the weather in Paris", "w9 w8 w7 w6 w5 w4 w3 w2 w1"]
    plain = replies(stub_for(servers[False][1]), prompts)
    assert all(len(r) >= 20 for r in plain), plain  # words, joined without spaces here
    assert replies(stub_for(servers[True][1]), prompts) == plain
    for on, (srv, _) in servers.items():  # engine.fuse_projections, and only it, fused
        attn = srv.engine.loaded["qwen"].model.model.layers[0].self_attn
        assert isinstance(attn.k_proj, fused.Part) is on
