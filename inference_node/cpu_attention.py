"""Prefill attention through numpy when MLX runs on the CPU.

    cpu_attention.install()      # once per process, before or after models are loaded

MLX's CPU backend computes `exp` at about 25 ns an element on the dev machine (numpy: 1.8), and a
prefill step's softmax has heads x step x context of them: for a 512-token step at a 2k context
on SmolLM2, MLX's attention took 275 ms a layer, 250 of them in softmax; through numpy, 84 ms.
Over a 2,000-token agent prompt that was three quarters of the prefill.

mlx-lm's models all attend through `mlx_lm.models.base.scaled_dot_product_attention`; this
replaces it (`mlx_compat.replace_attention`) with a function that sends float32 steps of at
least MIN_QUERIES queries and MIN_SCORES scores a head, causal, unmasked or with a batch's
(B, 1, L, S) mask, to numpy (the same float32 math; outputs differ from MLX's by about 1e-7)
and everything else (decode, short prompts, other masks, attention sinks, quantized caches) to
MLX's.
With Metal nothing is installed: MLX's fused kernel is the fast path there.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import numpy as np

MIN_QUERIES = 16  # decode (1 query) and speculative verification stay on MLX
# Below this many scores per head, numpy's per-layer sync costs more than MLX's softmax: a
# 64-token prompt prefilled at 0.9x through numpy (bench/cpu.py).
MIN_SCORES = 1 << 16

_mlx_attention: Any = None


def install() -> bool:
    """Route prefill attention through numpy; False (and nothing changed) where Metal runs."""
    global _mlx_attention
    if mx.metal.is_available():
        return False
    from inference_node import mlx_compat

    _mlx_attention = mlx_compat.replace_attention(attention)
    return True


def attention(queries: mx.array, keys: mx.array, values: mx.array, cache: Any, scale: float,
              mask: Any, sinks: Any = None) -> mx.array:
    if (sinks is not None or hasattr(cache, "bits") or queries.shape[2] < MIN_QUERIES
            or queries.shape[2] * keys.shape[2] < MIN_SCORES
            or not _numpy_mask_ok(mask, queries.shape)
            or not queries.dtype == keys.dtype == values.dtype == mx.float32):
        return _mlx_attention(queries, keys, values, cache=cache, scale=scale, mask=mask,
                              sinks=sinks)
    return numpy_attention(queries, keys, values, scale, mask)


def _numpy_mask_ok(mask: Any, shape: tuple[int, ...]) -> bool:
    """None, "causal", or a (B or 1, 1, L, S) array: the batch's causal-and-padding mask."""
    if mask is None or (isinstance(mask, str) and mask == "causal"):
        return True
    return (isinstance(mask, mx.array) and mask.ndim == 4 and mask.shape[1] == 1
            and mask.shape[0] in (1, shape[0]) and mask.dtype in (mx.bool_, mx.float32))


def numpy_attention(queries: mx.array, keys: mx.array, values: mx.array, scale: float,
                    mask: Any) -> mx.array:
    """softmax(q k^T * scale + mask) v for q (B, H, L, D) and k, v (B, KH, S, D), H a multiple
    of KH. `mask`: None; "causal" (the L queries are the last L of the S keys); or a
    (B, 1, L, S) array, True to attend (or added to the scores if float). A query that may
    attend nothing (left padding) gets a uniform average, as MLX's does, never NaN."""
    arrays = [queries, keys, values] + ([mask] if isinstance(mask, mx.array) else [])
    mx.eval(*arrays)
    q, k, v = np.asarray(queries), np.asarray(keys), np.asarray(values)  # views, no copies
    b, heads, n_q, dim = q.shape
    kv_heads, n_k = k.shape[1], k.shape[2]
    group = heads // kv_heads
    # The heads that share a KV head become rows of one product with it.
    scores = (q * np.float32(scale)).reshape(b, kv_heads, group * n_q, dim) @ k.swapaxes(2, 3)
    scores = scores.reshape(b, kv_heads, group, n_q, n_k)
    lowest = np.finfo(np.float32).min  # finite: a fully masked row stays a number
    if isinstance(mask, str):
        future = np.arange(n_q)[:, None] + (n_k - n_q) < np.arange(n_k)[None, :]
        scores[..., future] = lowest
    elif mask is not None:
        m = np.asarray(mask)[:, :, None]  # (B or 1, 1, 1, L, S) against (B, KH, group, L, S)
        if m.dtype == np.bool_:
            np.copyto(scores, lowest, where=~m)
        else:
            scores += m
    scores -= scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=-1, keepdims=True)
    out = scores.reshape(b, kv_heads, group * n_q, n_k) @ v
    return mx.array(out.reshape(b, heads, n_q, dim))
