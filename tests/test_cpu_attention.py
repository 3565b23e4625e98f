"""Prefill attention through numpy on a CPU-only MLX: the same numbers as MLX's, and only for the
steps it is meant for."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from inference_node import cpu_attention

pytestmark = pytest.mark.skipif(mx.metal.is_available(), reason="installed only without Metal")


@pytest.fixture(scope="module", autouse=True)
def installed():
    assert cpu_attention.install()


def mlx_attention(q, k, v, scale, mask):
    return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)


def randn(*shape, seed):
    return mx.array(np.random.default_rng(seed).standard_normal(shape, dtype=np.float32))


@pytest.mark.parametrize(("heads", "kv_heads", "n_q", "n_k", "mask"), [
    (9, 3, 64, 64, "causal"),      # a first prefill step, grouped-query heads
    (9, 3, 48, 300, "causal"),     # a later step: the queries are the last 48 of 300
    (4, 4, 32, 80, None),          # no mask, one KV head per head
    (14, 2, 16, 16, "causal"),     # the smallest step it takes
])
def test_prefill_steps_match_mlxs_attention(heads, kv_heads, n_q, n_k, mask):
    q, k, v = randn(1, heads, n_q, 64, seed=1), randn(1, kv_heads, n_k, 64, seed=2), \
        randn(1, kv_heads, n_k, 64, seed=3)
    got = cpu_attention.numpy_attention(q, k, v, 0.125, mask)
    want = mlx_attention(q, k, v, 0.125, mask)
    assert got.shape == want.shape and got.dtype == mx.float32
    assert float(mx.abs(got - want).max()) < 1e-5


def test_a_cache_view_is_read_in_place():
    # the KV cache hands out slices of a larger buffer
    q = randn(1, 6, 32, 32, seed=4)
    k_buf, v_buf = randn(1, 2, 256, 32, seed=5), randn(1, 2, 256, 32, seed=6)
    k, v = k_buf[:, :, :100, :], v_buf[:, :, :100, :]
    got = cpu_attention.numpy_attention(q, k, v, 0.2, "causal")
    assert float(mx.abs(got - mlx_attention(q, k, v, 0.2, "causal")).max()) < 1e-5


def test_a_batchs_causal_and_left_padding_mask_matches_mlxs_and_padding_stays_finite():
    from mlx_lm.models.cache import create_causal_mask

    # two prompts, the shorter left-padded by 30: its first 30 queries may attend nothing
    n_q, n_k = 64, 64
    mask = create_causal_mask(n_q, offset=0, left_padding=mx.array([0, 30]))
    assert mask.shape == (2, 1, n_q, n_k) and mask.dtype == mx.bool_
    q, k, v = randn(2, 9, n_q, 64, seed=12), randn(2, 3, n_k, 64, seed=13), \
        randn(2, 3, n_k, 64, seed=14)
    got = cpu_attention.numpy_attention(q, k, v, 0.125, mask)
    want = mlx_attention(q, k, v, 0.125, mask)
    assert not mx.isnan(got).any()
    assert float(mx.abs(got[:, :, 30:] - want[:, :, 30:]).max()) < 1e-5  # the real queries
    assert float(mx.abs(got[0] - want[0]).max()) < 1e-5
    additive = mx.where(mask, 0.0, -1e9).astype(mx.float32)
    got = cpu_attention.numpy_attention(q, k, v, 0.125, additive)
    assert float(mx.abs(got[:, :, 30:] - want[:, :, 30:]).max()) < 1e-5


def test_decode_short_prompts_other_masks_and_other_dtypes_stay_on_mlx(monkeypatch):
    calls = []
    monkeypatch.setattr(cpu_attention, "numpy_attention",
                        lambda *a, **k: calls.append("numpy"))
    k, v = randn(1, 2, 300, 16, seed=8), randn(1, 2, 300, 16, seed=9)
    q1 = randn(1, 2, 1, 16, seed=7)
    cpu_attention.attention(q1, k, v, cache=None, scale=0.25, mask=None)  # decode: 1 query
    short = randn(1, 2, 20, 16, seed=11)
    cpu_attention.attention(short, k[:, :, :20], v[:, :, :20], cache=None, scale=0.25,
                            mask="causal")  # 400 scores a head: a short prompt
    q = randn(1, 2, 256, 16, seed=10)
    per_head = mx.ones((1, 2, 256, 300), dtype=mx.bool_)  # not a batch's (B, 1, L, S) mask
    cpu_attention.attention(q, k, v, cache=None, scale=0.25, mask=per_head)
    half = q.astype(mx.float16), k.astype(mx.float16), v.astype(mx.float16)
    cpu_attention.attention(*half, cache=None, scale=0.25, mask="causal")
    assert calls == []
    cpu_attention.attention(q, k, v, cache=None, scale=0.25, mask="causal")
    cpu_attention.attention(q, k, v, cache=None, scale=0.25,
                            mask=mx.ones((1, 1, 256, 300), dtype=mx.bool_))
    assert calls == ["numpy", "numpy"]


def test_a_loaded_models_prefill_logits_match_mlxs(tmp_path, monkeypatch):
    from mlx_lm.models.cache import make_prompt_cache
    from tiny_models import write_random_chat_model

    from inference_node import mlx_compat

    path = write_random_chat_model(tmp_path / "m", "llama", seed=11)
    model, _ = mlx_compat.load_model(path, lazy=False)
    ids = mx.array([[(7 * i) % 200 + 3 for i in range(600)]])

    def prefill() -> mx.array:
        cache = make_prompt_cache(model)
        first = model(ids[:, :300], cache=cache)  # a step, then one at an offset: both numpy's
        return mx.concatenate([first, model(ids[:, 300:], cache=cache)], axis=1)

    import mlx_lm.models.llama as llama

    assert llama.scaled_dot_product_attention is cpu_attention.attention
    steps = []
    through_numpy = cpu_attention.numpy_attention
    monkeypatch.setattr(cpu_attention, "numpy_attention",
                        lambda *a: steps.append(a[0].shape[2]) or through_numpy(*a))
    ours = prefill()
    assert steps and set(steps) == {300}  # every layer's attention, both steps, went to numpy
    llama.scaled_dot_product_attention = cpu_attention._mlx_attention
    try:
        theirs = prefill()
    finally:
        llama.scaled_dot_product_attention = cpu_attention.attention
    assert float(mx.abs(ours - theirs).max()) < 1e-4
    assert (mx.argmax(ours, axis=-1) == mx.argmax(theirs, axis=-1)).all()
