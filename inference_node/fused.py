"""One product for a layer's q, k and v projections, and one for its gate and up.

    fused.fuse_projections(model)   # after loading; how many groups were fused

Decode multiplies a few rows by every weight matrix of the model, one BLAS call each, and each
call has a fixed cost besides streaming its matrix (threads woken and joined, the matrix's
tiles set up). A Llama-family layer makes seven such calls. q, k and v read the same input, as
do gate and up, so their matrices stacked make one call each, and a layer makes four.

mlx-lm's model code is left as it is: each projection becomes a `Part` that returns its slice
of the shared product. The first part called with an input computes the product; the others
slice the same one, and the last lets it go, so no activation outlives the call.

Only float `nn.Linear` layers of the model types in FUSED_TYPES are fused (their attention and
MLP call every projection of a group with the same input). Quantized layers (Metal keeps them)
and sharded ones (distributed/) stay as they are.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.nn as nn

FUSED_TYPES = frozenset({"llama", "qwen2", "qwen3"})
GROUPS = (("self_attn", ("q_proj", "k_proj", "v_proj")), ("mlp", ("gate_proj", "up_proj")))


class Product:
    """The stacked matrix's product with the last input, split into its parts' outputs."""

    def __init__(self, owner: Part, sizes: list[int]) -> None:
        self.owner = owner  # the part that holds the stacked weight (and bias) as parameters
        self.offsets = [sum(sizes[:i]) for i in range(1, len(sizes))]
        self.parts = len(sizes)
        self._x: mx.array | None = None
        self._outputs: list[mx.array] = []
        self._taken: set[int] = set()

    def take(self, index: int, x: mx.array) -> mx.array:
        if x is not self._x or index in self._taken:
            w = self.owner.weight
            y = mx.addmm(self.owner.bias, x, w.T) if "bias" in self.owner else x @ w.T
            self._x, self._taken = x, set()
            self._outputs = list(mx.split(y, self.offsets, axis=-1))
        self._taken.add(index)
        out = self._outputs[index]
        if len(self._taken) == self.parts:
            self._x, self._outputs = None, []
        return out


class Part(nn.Module):
    """Stands in for one projection of a fused group; the group's first part holds the weight."""

    def __init__(self, product: Product | None, index: int, sizes: list[int]) -> None:
        super().__init__()
        self.product = product if product is not None else Product(self, sizes)
        self.index = index

    def __call__(self, x: mx.array) -> mx.array:
        return self.product.take(self.index, x)


def fuse_projections(model: Any) -> int:
    """Fuse every layer's q/k/v and gate/up projections in place; 0 when the model is not one
    of FUSED_TYPES or its projections are not plain float Linear layers."""
    if getattr(model, "model_type", None) not in FUSED_TYPES:
        return 0
    inner = getattr(model, "model", None)
    fused = 0
    for layer in getattr(inner, "layers", []):
        for block_name, names in GROUPS:
            block = getattr(layer, block_name, None)
            linears = [getattr(block, n, None) for n in names]
            if block is None or not _fusable(linears):
                continue
            _fuse(block, names, [m for m in linears if m is not None])
            fused += 1
        if fused and fused % 8 == 0:
            mx.clear_cache()
    mx.clear_cache()
    return fused


def _fusable(linears: list[Any]) -> bool:
    if not all(type(m) is nn.Linear for m in linears):  # noqa: E721  subclasses shard or quantize
        return False
    weights = [m.weight for m in linears]
    return (all(w.ndim == 2 and w.shape[1] == weights[0].shape[1] for w in weights)
            and len({w.dtype for w in weights}) == 1
            and len({"bias" in m for m in linears}) == 1)


def _fuse(block: nn.Module, names: tuple[str, ...], linears: list[nn.Linear]) -> None:
    sizes = [int(m.weight.shape[0]) for m in linears]
    first = Part(None, 0, sizes)
    first.weight = mx.concatenate([m.weight for m in linears])
    if "bias" in linears[0]:
        first.bias = mx.concatenate([m.bias for m in linears])
    mx.eval(first.parameters())
    setattr(block, names[0], first)
    for i, name in enumerate(names[1:], start=1):
        setattr(block, name, Part(first.product, i, sizes))
