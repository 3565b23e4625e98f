"""Memory admission: every load and every request is admitted against a budget first.

    committed = resident bytes of loaded (and loading) models (weights + overhead)
              + bytes reserved by requests in flight (KV, and image decodes while they run)

A load that does not fit evicts least-recently-used idle, unpinned models (policy "evict") or
is refused (policy "refuse"); a request whose KV does not fit now waits in a bounded FIFO queue
with a deadline. Under the system memory floor nothing new is admitted. One lock and one
condition guard all of it; the engine thread and the gRPC threads both call in. What the machine
says (available memory, the default budget, MLX's limits) is `inference_node.machine`. Sizes are
binary and labelled so: 1 GiB is 2**30 bytes, as macOS and MLX count unified memory.

    adm = Admission(cfg.memory, cfg.source)
    victims = adm.admit_load("coder", fp.resident_bytes, pinned=True)  # unload these, then load
    adm.loaded("coder", estimated, measured)
    r = adm.reserve("coder", prompt_tokens, max_tokens, fp.kv_per_token)
    try: ... finally: adm.release(r)
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from inference_node.api import reasons as R
from inference_node.config import MemoryConfig
from inference_node.errors import Cancelled, QueueFull, QueueTimeout, Unavailable, WouldNotFit
from inference_node.machine import (  # noqa: F401 - machine readings, re-exported
    GiB,
    MiB,
    Watchdog,
    _parse_vm_stat,
    apply_mlx_limits,
    default_budget,
    gib,
    mlx_readings,
    system_available_bytes,
)
from inference_node.mlx_compat import KV_STEP

log = logging.getLogger(__name__)

GB = GiB  # the config's *_gb keys count GiB
CANCEL_POLL_S = 0.05  # how often a queued request checks whether its client went away


def kv_tokens(tokens: int) -> int:
    """The tokens a KV cache holding `tokens` has allocated: whole steps of KV_STEP."""
    return -(-tokens // KV_STEP) * KV_STEP


# ---------------------------------------------------------------- the ledger


@dataclass
class ModelRow:
    name: str
    pinned: bool
    estimated_bytes: int = 0  # before loading: weights from the headers + overhead
    measured_bytes: int = 0  # MLX active memory added by the load; 0 until loaded
    weights_bytes: int = 0  # the weights: measured once loaded, else estimated; kept on unload
    overhead_bytes: int = 0  # the fixed allowance (memory.overhead_mb) counted beside them
    loaded: bool = False
    loading: bool = False
    evicting: bool = False  # named as a victim; the engine unloads it before loading the new one
    kv_reserved_bytes: int = 0
    in_flight: int = 0
    last_used: float = 0.0  # admission clock
    last_used_unix: float = 0.0

    @property
    def counted(self) -> bool:
        return (self.loaded or self.loading) and not self.evicting

    @property
    def resident_bytes(self) -> int:
        """What this model holds against the budget now: weights + overhead, 0 unloaded."""
        return self.weights_bytes + self.overhead_bytes if self.counted else 0


@dataclass
class Reservation:
    model: str
    bytes: int
    queue_seconds: float
    tokens: int
    id: int = 0
    released: bool = False
    counts_in_flight: bool = True  # a request's KV; False for a transient use (image decode)


@dataclass
class _Ticket:
    id: int
    need: int


class Admission:
    """The budget, what is committed against it, and the queue of requests waiting for room."""

    def __init__(self, memory: MemoryConfig, source: str, *,
                 available_bytes: Callable[[], int] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 budget_bytes: int | None = None) -> None:
        self.memory = memory
        self.source = source
        if budget_bytes is not None:
            self.budget_bytes, self.budget_source = budget_bytes, "given by the caller"
        else:
            self.budget_bytes, self.budget_source = default_budget(memory, source)
        self.policy = memory.policy
        self.floor_bytes = int(memory.floor_gb * GiB)
        self.overhead_bytes = int(memory.overhead_mb * MiB)
        self.queue_limit = memory.queue_limit
        self._read_available = available_bytes or system_available_bytes
        self._clock = clock
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._models: dict[str, ModelRow] = {}
        self._reserved = 0
        self._queue: deque[_Ticket] = deque()
        self._ids = itertools.count(1)
        self._available: int | None = None  # the watchdog's last reading
        self._below_floor = False
        self._watchdog = Watchdog(lambda: int(self._read_available()), self._on_reading,
                                  memory.watchdog_interval_s)

    # ------------------------------------------------------------ accounting (lock held)

    def _resident(self) -> int:
        return sum(m.resident_bytes for m in self._models.values())

    def _committed(self) -> int:
        return self._resident() + self._reserved

    def _free(self) -> int:
        return self.budget_bytes - self._committed()

    def _numbers(self) -> dict[str, Any]:
        return {R.COMMITTED_BYTES: self._committed(), R.BUDGET_BYTES: self.budget_bytes}

    def _of_budget(self) -> str:
        return f"{self._committed() / GiB:.1f} of {gib(self.budget_bytes)} committed"

    def _holders(self) -> str:
        parts = []
        rows = sorted((m for m in self._models.values() if m.counted),
                      key=lambda m: -m.resident_bytes)
        for m in rows:
            flags = (("pinned", m.pinned), (f"{m.in_flight} in flight", m.in_flight),
                     ("loading", m.loading))
            tags = "".join(f" {t}" for t, on in flags if on)
            parts.append(f"{m.name} {gib(m.resident_bytes)}{tags}")
        if self._reserved:
            parts.append(f"{gib(self._reserved)} reserved by requests")
        return ", ".join(parts) or "nothing"

    def _where(self) -> str:
        return self.source if self.source.endswith(".toml") else "[memory] of inference-node.toml"

    def _available_now(self) -> int:
        if self._watchdog.running and self._available is not None:
            return self._available
        return int(self._read_available())

    def _check_floor(self, what: str) -> None:
        available = self._available_now()
        if available < self.floor_bytes:
            log.warning("refused %s: system has %s available, under the %s floor",
                        what, gib(available), gib(self.floor_bytes))
            raise Unavailable(
                f"system has {gib(available)} available, under the {gib(self.floor_bytes)} "
                f"floor; {what} was not admitted. Close other applications or unload a model, "
                f"or lower floor_gb (GiB) in {self._where()}", reason=R.MEMORY_FLOOR,
                available_bytes=available, floor_bytes=self.floor_bytes)

    def _row(self, name: str, pinned: bool = False) -> ModelRow:
        row = self._models.get(name)
        if row is None:
            row = self._models[name] = ModelRow(name=name, pinned=pinned)
        return row

    def _use(self, row: ModelRow) -> None:
        row.last_used = self._clock()
        row.last_used_unix = time.time()

    # ------------------------------------------------------------ loads

    def admit_load(self, name: str, footprint_bytes: int, *, pinned: bool) -> list[str]:
        """Admit a load of `footprint_bytes` (weights + overhead); return the models to unload
        first (may be empty). Raises WouldNotFit with the numbers when it cannot fit under the
        policy, Unavailable under the memory floor.
        """
        with self._lock:
            row = self._models.get(name)
            if row is not None and (row.loaded or row.loading) and not row.evicting:
                return []
            self._check_floor(f"loading {name}")
            numbers = {R.MODEL: name, R.NEEDED_BYTES: footprint_bytes, **self._numbers()}
            if footprint_bytes > self.budget_bytes:
                raise WouldNotFit(
                    f"{name} needs {gib(footprint_bytes)}, more than the whole budget of "
                    f"{gib(self.budget_bytes)} ({self.budget_source}); use a smaller "
                    f"quantization or raise budget_gb (GiB) in {self._where()}", **numbers)
            free = self._free()
            victims: list[ModelRow] = []
            if footprint_bytes > free:
                idle = sorted((m for m in self._models.values() if m.counted and m.loaded
                               and not m.pinned and m.in_flight == 0
                               and m.kv_reserved_bytes == 0), key=lambda m: m.last_used)
                if self.policy == "evict":
                    for m in idle:
                        if free >= footprint_bytes:
                            break
                        victims.append(m)
                        free += m.resident_bytes
                if free < footprint_bytes:
                    raise WouldNotFit(self._load_refusal(name, footprint_bytes, idle), **numbers)
            for m in victims:
                m.evicting = True
            row = self._row(name, pinned)
            row.pinned = pinned
            row.loading, row.loaded, row.evicting = True, False, False
            row.estimated_bytes = footprint_bytes
            row.overhead_bytes = min(self.overhead_bytes, footprint_bytes)
            row.weights_bytes = footprint_bytes - row.overhead_bytes
            row.measured_bytes = 0
            self._use(row)
            return [m.name for m in victims]

    def _load_refusal(self, name: str, need: int, idle: list[ModelRow]) -> str:
        head = f"{name} needs {gib(need)}; {self._of_budget()} ({self._holders()})"
        if self.policy == "refuse" and idle:
            names = ", ".join(m.name for m in idle)
            return (f"{head}; unload {names}, set policy = \"evict\", "
                    f"or raise budget_gb (GiB) in {self._where()}")
        return (f"{head}; nothing idle and unpinned can be evicted: wait for requests to "
                f"finish, unpin or unload a model, or raise budget_gb (GiB) in {self._where()}")

    def loaded(self, name: str, estimated_bytes: int, measured_bytes: int) -> None:
        """The load finished: count the measured weights (+ overhead) from now on."""
        with self._cond:
            row = self._row(name)
            row.loading, row.loaded = False, True
            row.estimated_bytes, row.measured_bytes = estimated_bytes, measured_bytes
            row.overhead_bytes = min(self.overhead_bytes, estimated_bytes)
            row.weights_bytes = (measured_bytes if measured_bytes > 0
                                 else estimated_bytes - row.overhead_bytes)
            self._use(row)
            self._cond.notify_all()

    def load_failed(self, name: str) -> None:
        with self._cond:
            row = self._models.get(name)
            if row is not None:
                row.loading = row.loaded = False
            self._cond.notify_all()

    def unloaded(self, name: str) -> None:
        with self._cond:
            row = self._models.get(name)
            if row is not None:
                row.loaded = row.loading = row.evicting = False
            self._cond.notify_all()

    def touch(self, name: str) -> None:
        with self._lock:
            row = self._models.get(name)
            if row is not None:
                self._use(row)

    def in_flight(self, name: str) -> int:
        """Requests holding a reservation for `name` now."""
        with self._lock:
            row = self._models.get(name)
            return row.in_flight if row is not None else 0

    # ------------------------------------------------------------ requests

    def reserve(self, model: str, prompt_tokens: int, max_tokens: int, kv_per_token: int, *,
                fixed_bytes: int = 0, timeout_s: float | None = None,
                cancelled: Callable[[], bool] | None = None) -> Reservation:
        """Reserve (prompt + max_tokens) × kv_per_token (+ fixed_bytes) of KV for one request.

        The tokens are counted as the cache allocates them, in whole steps of KV_STEP.

        Waits in FIFO order while it does not fit now. Raises QueueFull when the queue is at its
        limit, QueueTimeout past `timeout_s` (default memory.queue_timeout_s), WouldNotFit when
        it could never fit beside the loaded weights, Unavailable under the memory floor,
        Cancelled when `cancelled()` turns true while waiting.
        """
        tokens = kv_tokens(prompt_tokens + max_tokens)
        need = tokens * kv_per_token + fixed_bytes

        def check() -> None:
            self._check_ever_fits(model, prompt_tokens, max_tokens, kv_per_token, fixed_bytes)

        return self._reserve(model, need, tokens, f"a request for {model}", f"KV for {model}",
                             check, timeout_s, cancelled, counts_in_flight=True)

    def reserve_bytes(self, model: str, need: int, what: str, *,
                      timeout_s: float | None = None,
                      cancelled: Callable[[], bool] | None = None) -> Reservation:
        """Reserve `need` bytes for a transient use on behalf of `model` (decoding an image):
        queued, refused and released like a request's KV, but no request in flight."""

        def check() -> None:
            ceiling = self.budget_bytes - self._resident()
            if need > ceiling:
                raise WouldNotFit(
                    f"{what} needs {gib(need)}; only {gib(max(ceiling, 0))} of the "
                    f"{gib(self.budget_bytes)} budget is left beside the loaded models "
                    f"({self._holders()}); send a smaller image, unload a model, or raise "
                    f"budget_gb (GiB) in {self._where()}", reason=R.REQUEST_WOULD_NOT_FIT,
                    model=model, needed_bytes=need, available_bytes=max(ceiling, 0),
                    budget_bytes=self.budget_bytes)

        return self._reserve(model, need, 0, what, what, check, timeout_s, cancelled,
                             counts_in_flight=False)

    def _reserve(self, model: str, need: int, tokens: int, what: str, for_what: str,
                 check: Callable[[], None], timeout_s: float | None,
                 cancelled: Callable[[], bool] | None, *, counts_in_flight: bool
                 ) -> Reservation:
        timeout = self.memory.queue_timeout_s if timeout_s is None else timeout_s
        start = self._clock()
        with self._cond:
            self._check_floor(what)
            check()
            if not self._queue and need <= self._free():
                return self._grant(model, need, tokens, start, counts_in_flight)
            if len(self._queue) >= self.queue_limit:
                raise QueueFull(
                    f"the memory queue is full ({len(self._queue)} requests waiting, limit "
                    f"{self.queue_limit}); {self._of_budget()} ({self._holders()}); retry "
                    f"later, lower max_tokens, or raise queue_limit in {self._where()}",
                    queue_depth=len(self._queue), queue_limit=self.queue_limit,
                    **self._numbers())
            ticket = _Ticket(next(self._ids), need)
            self._queue.append(ticket)
            deadline = start + timeout
            try:
                while True:
                    if cancelled is not None and cancelled():
                        raise Cancelled(f"the client went away while waiting for memory for "
                                        f"{model}")
                    check()
                    if (self._queue[0] is ticket and need <= self._free()
                            and self._available_now() >= self.floor_bytes):
                        self._queue.popleft()
                        return self._grant(model, need, tokens, start, counts_in_flight)
                    remaining = deadline - self._clock()
                    if remaining <= 0:
                        raise QueueTimeout(
                            f"waited {timeout:.1f} s for {gib(need)} of {for_what}; "
                            f"{self._of_budget()} ({self._holders()}); retry, lower "
                            f"max_tokens, or raise queue_timeout_s in {self._where()}",
                            waited_seconds=f"{timeout:.1f}", needed_bytes=need,
                            **self._numbers())
                    wait = remaining if cancelled is None else min(remaining, CANCEL_POLL_S)
                    self._cond.wait(wait)
            finally:
                if ticket in self._queue:
                    self._queue.remove(ticket)
                self._cond.notify_all()  # the next head may fit now

    def _check_ever_fits(self, model: str, prompt_tokens: int, max_tokens: int,
                         kv_per_token: int, fixed_bytes: int) -> None:
        ceiling = self.budget_bytes - self._resident()
        need = kv_tokens(prompt_tokens + max_tokens) * kv_per_token + fixed_bytes
        if need <= ceiling:
            return
        head = (f"a request for {model} needs {gib(need)} of KV "
                f"({prompt_tokens} prompt + {max_tokens} max tokens); only {gib(max(ceiling, 0))} "
                f"of the {gib(self.budget_bytes)} budget is left beside the loaded weights "
                f"({self._holders()})")
        whole_steps = (ceiling - fixed_bytes) // kv_per_token // KV_STEP * KV_STEP
        room = whole_steps - prompt_tokens if kv_per_token else -1
        numbers: dict[str, Any] = {
            R.MODEL: model, R.NEEDED_BYTES: need, R.AVAILABLE_BYTES: max(ceiling, 0),
            R.BUDGET_BYTES: self.budget_bytes, R.PROMPT_TOKENS: prompt_tokens,
            R.MAX_TOKENS: max_tokens, R.MAX_TOKENS_ALLOWED: max(room, 0)}
        if room > 0:
            raise WouldNotFit(f"{head}; max_tokens <= {room} would fit",
                              reason=R.REQUEST_WOULD_NOT_FIT, **numbers)
        raise WouldNotFit(f"{head}; the prompt alone does not fit: shorten it, unload a model, "
                          f"or raise budget_gb (GiB) in {self._where()}",
                          reason=R.REQUEST_WOULD_NOT_FIT, **numbers)

    def _grant(self, model: str, need: int, tokens: int, start: float,
               counts_in_flight: bool = True) -> Reservation:
        self._reserved += need
        if counts_in_flight:
            row = self._row(model)
            row.in_flight += 1
            row.kv_reserved_bytes += need
            self._use(row)
        return Reservation(model, need, max(0.0, self._clock() - start), tokens,
                           next(self._ids), counts_in_flight=counts_in_flight)

    def try_grow(self, reservation: Reservation, extra_bytes: int) -> bool:
        """Add `extra_bytes` to a reservation in flight if they fit now; never waits.

        The engine asks before a request joins a running batch, whose every sequence is stored
        at the batch's longest length: the padding is memory no single reservation counted.
        """
        with self._cond:
            if reservation.released or extra_bytes <= 0:
                return extra_bytes <= 0
            if extra_bytes > self._free() or self._available_now() < self.floor_bytes:
                return False
            reservation.bytes += extra_bytes
            self._reserved += extra_bytes
            row = self._models.get(reservation.model)
            if row is not None and reservation.counts_in_flight:
                row.kv_reserved_bytes += extra_bytes
            return True

    def release(self, reservation: Reservation) -> None:
        """Free a reservation (idempotent) and wake the queue."""
        with self._cond:
            if reservation.released:
                return
            reservation.released = True
            self._reserved -= reservation.bytes
            row = self._models.get(reservation.model)
            if row is not None and reservation.counts_in_flight:
                row.in_flight -= 1
                row.kv_reserved_bytes -= reservation.bytes
                self._use(row)
            self._cond.notify_all()

    # ------------------------------------------------------------ the floor watchdog

    def start(self) -> None:
        """Read system available memory every watchdog_interval_s in a daemon thread."""
        if self._watchdog.running:
            return
        self._available = int(self._read_available())
        self._watchdog.start()

    def stop(self) -> None:
        self._watchdog.stop()

    def _on_reading(self, reading: int) -> None:
        below = reading < self.floor_bytes
        with self._cond:
            self._available = reading
            if below != self._below_floor:
                if below:
                    log.warning("system has %s available, under the %s floor: admitting "
                                "nothing new", gib(reading), gib(self.floor_bytes))
                else:
                    log.info("system available memory back to %s, above the %s floor",
                             gib(reading), gib(self.floor_bytes))
                self._below_floor = below
            self._cond.notify_all()

    # ------------------------------------------------------------ reporting

    def snapshot(self) -> dict[str, Any]:
        """Everything `GetMemory` reports; keys follow pb.MemoryStatus / pb.ModelMemory."""
        with self._lock:
            counted = [m for m in self._models.values() if m.counted]
            rows = [
                {"name": m.name, "loaded": m.loaded, "weights_bytes": m.weights_bytes,
                 "overhead_bytes": m.overhead_bytes, "resident_bytes": m.resident_bytes,
                 "kv_reserved_bytes": m.kv_reserved_bytes, "last_used_unix": m.last_used_unix,
                 "pinned": m.pinned, "in_flight": m.in_flight,
                 "estimated_bytes": m.estimated_bytes, "measured_bytes": m.measured_bytes,
                 "loading": m.loading}
                for m in self._models.values()
            ]
            snap: dict[str, Any] = {
                "budget_bytes": self.budget_bytes, "budget_source": self.budget_source,
                "committed_bytes": self._committed(),
                "weights_bytes": sum(m.weights_bytes for m in counted),
                "overhead_bytes": sum(m.overhead_bytes for m in counted),
                "reserved_bytes": self._reserved, "floor_bytes": self.floor_bytes,
                "models": rows, "queue_depth": len(self._queue),
                "queue_limit": self.queue_limit, "policy": self.policy,
            }
        try:
            snap["system_available_bytes"] = max(0, self._available_now())
        except Exception:  # reporting must not fail for a bad reading
            snap["system_available_bytes"] = 0
        snap.update(mlx_readings())
        return snap
