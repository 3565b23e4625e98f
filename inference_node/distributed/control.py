"""Control messages from rank 0 to every other rank, carried by mlx.distributed collectives.

No transport of our own: a broadcast is an `all_sum` in which every rank but 0 contributes
zeros, and rank 0's bytes come out everywhere. A message is JSON (never pickle: a rank runs
nothing but what the message names). One fixed frame of FRAME bytes carries the length and
the start of the message, so a step's small message costs one collective; a longer one (a
prompt to insert) takes a second collective for the rest.

`gather` is the other direction: every rank contributes a few integers (its memory readings,
its measured load) and every rank receives all of them, through `all_gather`.

Every collective runs on mlx-lm's generation stream, the one the batch steps run on. A rank
queues the next step's work asynchronously (mlx-lm overlaps it with the host's bookkeeping); a
collective on another stream could run before or after that work, in a different order on each
rank, and the ring would pair one rank's control frame with another's sampled token. On one
stream every rank runs its collectives in the same order.

The channel times every collective it runs, so the benchmark can report the communication cost
per message apart from the model's own collectives.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx
import numpy as np

FRAME = 1024  # bytes in the first collective of every message: 8 of length, the rest payload
HEADER = 8
JSON_SLOT = 4096  # bytes per rank in gather_json


class RankLost(RuntimeError):
    """A collective failed: a peer closed its connection or the backend gave up."""


@dataclass
class Traffic:
    """What the channel sent, and how long its collectives took (rank 0's view)."""

    messages: int = 0
    collectives: int = 0
    bytes: int = 0
    seconds: float = 0.0
    by_op: dict[str, int] = field(default_factory=dict)


class Channel:
    def __init__(self, group: Any) -> None:
        from inference_node.mlx_compat import generation_stream

        self.stream = generation_stream()
        self.group = group
        self.rank = group.rank()
        self.size = group.size()
        self.traffic = Traffic()

    # ------------------------------------------------------------ collectives

    def _all_sum(self, data: mx.array) -> mx.array:
        return self._collective(mx.distributed.all_sum, data)

    def _all_gather(self, data: mx.array) -> mx.array:
        return self._collective(mx.distributed.all_gather, data)

    def _collective(self, op: Callable[..., mx.array], data: mx.array) -> mx.array:
        """One collective over the group, evaluated now and counted; a lost rank is RankLost."""
        t0 = time.perf_counter()
        try:
            out = op(data, group=self.group, stream=self.stream)
            mx.eval(out)
        except RuntimeError as e:
            raise RankLost(str(e)) from e
        self.traffic.collectives += 1
        self.traffic.bytes += data.nbytes
        self.traffic.seconds += time.perf_counter() - t0
        return out

    # ------------------------------------------------------------ rank 0 -> all

    def broadcast(self, message: dict[str, Any]) -> None:
        """Rank 0: send `message` (JSON-able) to every rank."""
        assert self.rank == 0, "only rank 0 broadcasts"
        payload = json.dumps(message, separators=(",", ":")).encode()
        self.traffic.messages += 1
        op = str(message.get("op", ""))
        self.traffic.by_op[op] = self.traffic.by_op.get(op, 0) + 1
        frame = bytearray(FRAME)
        frame[:HEADER] = len(payload).to_bytes(HEADER, "little")
        head = payload[: FRAME - HEADER]
        frame[HEADER:HEADER + len(head)] = head
        self._all_sum(_u8(bytes(frame)))
        rest = payload[FRAME - HEADER:]
        if rest:
            self._all_sum(_u8(rest))

    def receive(self) -> dict[str, Any]:
        """Any rank but 0: wait for rank 0's next message."""
        frame = _bytes(self._all_sum(mx.zeros((FRAME,), dtype=mx.uint8)))
        length = int.from_bytes(frame[:HEADER], "little")
        payload = frame[HEADER:HEADER + min(length, FRAME - HEADER)]
        if length > FRAME - HEADER:
            rest = self._all_sum(mx.zeros((length - (FRAME - HEADER),), dtype=mx.uint8))
            payload += _bytes(rest)
        return dict(json.loads(payload))

    # ------------------------------------------------------------ all -> all

    def gather(self, values: list[int]) -> list[list[int]]:
        """Every rank gives the same number of integers; every rank gets them all, by rank."""
        mine = mx.array(values, dtype=mx.int64)
        flat: list[int] = np.array(self._all_gather(mine)).tolist()
        n = len(values)
        return [list(map(int, flat[r * n:(r + 1) * n])) for r in range(self.size)]

    def gather_json(self, value: dict[str, Any]) -> list[dict[str, Any]]:
        """Every rank gives a small JSON object (under JSON_SLOT bytes); all get them all."""
        data = json.dumps(value, separators=(",", ":")).encode()
        if len(data) > JSON_SLOT:
            raise ValueError(f"gather_json: {len(data)} bytes is over the {JSON_SLOT}-byte slot")
        slot = bytearray(JSON_SLOT)
        slot[:len(data)] = data
        flat = _bytes(self._all_gather(_u8(bytes(slot))))
        out = []
        for r in range(self.size):
            chunk = flat[r * JSON_SLOT:(r + 1) * JSON_SLOT].rstrip(b"\0")
            out.append(dict(json.loads(chunk)))
        return out


def memory_readings(available: Any) -> list[int]:
    """This host's readings for rank 0's ledger: MLX active, peak and cache bytes, and the
    system's available memory (`available()`)."""
    try:
        free = int(available())
    except Exception:  # noqa: BLE001 - a failed reading is reported as unknown
        free = -1
    return [mx.get_active_memory(), mx.get_peak_memory(), mx.get_cache_memory(), free]


def _u8(data: bytes) -> mx.array:
    return mx.array(np.frombuffer(data, dtype=np.uint8))


def _bytes(array: mx.array) -> bytes:
    return bytes(np.array(array, copy=False).tobytes())


def follow_rank0(sampled: mx.array, group: Any, leader: bool) -> mx.array:
    """The token rank 0 sampled, on every rank: rank 0 alone samples (its logits processors,
    grammar constraints and random state), and the others take its choice, so their caches
    never diverge. Lazily part of the step's graph: one small all_sum per sequence."""
    tokens = sampled.astype(mx.int32)
    if not leader:
        tokens = mx.zeros_like(tokens)
    return mx.distributed.all_sum(tokens, group=group).astype(sampled.dtype)
