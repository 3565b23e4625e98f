"""Memory admission: every load and every request is admitted against a budget first.

    committed = weights of loaded (and loading) models + KV reserved by requests in flight

A load that does not fit evicts least-recently-used idle, unpinned models (policy "evict") or
is refused (policy "refuse"); a request whose KV does not fit now waits in a bounded FIFO queue
with a deadline. Under the system memory floor nothing new is admitted. One lock and one
condition guard all of it; the engine thread and the gRPC threads both call in.

Sizes are binary: 1 GB here is 2**30 bytes, as macOS and MLX count unified memory.

    adm = Admission(cfg.memory, cfg.source)
    victims = adm.admit_load("coder", fp.resident_bytes, pinned=True)  # unload these, then load
    adm.loaded("coder", estimated, measured)
    r = adm.reserve("coder", prompt_tokens, max_tokens, fp.kv_per_token)
    try: ... finally: adm.release(r)
"""

from __future__ import annotations

import itertools
import logging
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from inference_node.api.tomlconf import ConfigError
from inference_node.config import MemoryConfig
from inference_node.errors import Cancelled, QueueFull, QueueTimeout, Unavailable, WouldNotFit

log = logging.getLogger(__name__)

GB = 1 << 30
KV_STEP = 256  # mlx-lm's KV caches grow in steps of this many tokens (KVCache.step)
CANCEL_POLL_S = 0.05  # how often a queued request checks whether its client went away


def kv_tokens(tokens: int) -> int:
    """The tokens a KV cache holding `tokens` has allocated: whole steps of KV_STEP."""
    return -(-tokens // KV_STEP) * KV_STEP


def gb(n: float) -> str:
    """Bytes for a person: GB with one decimal, or MB under a tenth of a GB (tiny models)."""
    if abs(n) < GB / 10:
        return f"{n / (1024 * 1024):.1f} MB"
    return f"{n / GB:.1f} GB"


# ---------------------------------------------------------------- readings from the machine


def _parse_vm_stat(text: str) -> int:
    """Free + inactive + purgeable bytes from `vm_stat` output (macOS)."""
    page = 4096
    pages: dict[str, int] = {}
    for line in text.splitlines():
        if "page size of" in line:
            page = int(line.split("page size of")[1].split()[0])
        elif ":" in line:
            key, _, value = line.partition(":")
            value = value.strip().rstrip(".")
            if value.isdigit():
                pages[key.strip()] = int(value)
    keys = ("Pages free", "Pages inactive", "Pages purgeable")
    return sum(pages.get(k, 0) for k in keys) * page


def system_available_bytes() -> int:
    """Memory the system could hand out now without swapping."""
    if sys.platform == "darwin":
        # psutil's macOS `available` is free + inactive; purgeable pages are reclaimable too.
        try:
            out = subprocess.run(["vm_stat"], capture_output=True, text=True, timeout=2).stdout
            reading = _parse_vm_stat(out)
            if reading:
                return reading
        except (OSError, subprocess.SubprocessError):
            pass
    import psutil

    return int(psutil.virtual_memory().available)


def default_budget(memory: MemoryConfig, source: str) -> tuple[int, str]:
    """The budget in bytes and a sentence saying where it came from."""
    if memory.budget_gb is not None:
        return int(memory.budget_gb * GB), f"budget_gb = {memory.budget_gb} in {source}"
    if sys.platform == "darwin":
        import mlx.core as mx

        info = mx.device_info() if hasattr(mx, "device_info") else mx.metal.device_info()
        rec = int(info.get("max_recommended_working_set_size", 0))
        if rec:
            budget = rec - int(memory.reserve_gb * GB)
            if budget <= 0:
                raise ConfigError(f"reserve_gb = {memory.reserve_gb} leaves no budget out of the "
                                 f"recommended working set of {gb(rec)}; lower it in {source}")
            return budget, (f"recommended working set {gb(rec)} − reserve "
                            f"{memory.reserve_gb:.1f} GB (mlx device info)")
    import psutil

    total = int(psutil.virtual_memory().total)
    return int(total * memory.linux_fraction), (
        f"total RAM {gb(total)} × {memory.linux_fraction} ({sys.platform.capitalize()})")


def apply_mlx_limits(budget_bytes: int, cache_limit_bytes: int | None,
                     wired_limit_mb: int = 0) -> dict[str, int]:
    """Bound MLX to the budget; returns the previous limits.

    - memory limit = the budget, so MLX itself keeps to what admission promised;
    - cache limit = `cache_limit_bytes` (None: 1/8 of the budget), so freed buffers are
      returned to the system instead of hoarded by MLX's allocator cache;
    - wired limit: left alone unless `wired_limit_mb` > 0. Wiring pins pages in the GPU's
      residency set so the OS cannot page them; mlx-lm's server sets it to the whole recommended
      working set. Public reports tie that to macOS kernel panics in IOGPUMemory
      ("completeMemory() prepare count underflow"): ml-explore/mlx#3186 isolates the trigger
      to concurrent requests with buffer churn and saw no panic with set_wired_limit never
      called; ml-explore/mlx-lm#883 is the same panic on a 96 GB M3 Ultra with ~75% of memory
      wired and a growing KV cache. An appliance that reboots loses every session, while an
      unwired page costs some speed at worst, so wiring is an explicit opt-in (memory.
      wired_limit_mb), to be set with `sysctl iogpu.wired_limit_mb` headroom in mind.
    """
    import mlx.core as mx

    cache = cache_limit_bytes if cache_limit_bytes is not None else budget_bytes // 8
    previous = {"memory_limit": mx.set_memory_limit(budget_bytes),
                "cache_limit": mx.set_cache_limit(cache)}
    if wired_limit_mb > 0:
        if mx.metal.is_available():
            previous["wired_limit"] = mx.set_wired_limit(wired_limit_mb * 1024 * 1024)
        else:
            log.info("memory.wired_limit_mb = %d ignored: no Metal device", wired_limit_mb)
    return previous


# ---------------------------------------------------------------- the ledger


@dataclass
class ModelRow:
    name: str
    pinned: bool
    estimated_bytes: int = 0
    measured_bytes: int = 0
    weights_bytes: int = 0  # what counts against the budget: measured + overhead once loaded
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


@dataclass
class Reservation:
    model: str
    bytes: int
    queue_seconds: float
    tokens: int
    id: int = 0
    released: bool = False


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
        self.floor_bytes = int(memory.floor_gb * GB)
        self.overhead_bytes = int(memory.overhead_mb * 1024 * 1024)
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
        self._stop = threading.Event()
        self._watchdog: threading.Thread | None = None

    # ------------------------------------------------------------ accounting (lock held)

    def _weights(self) -> int:
        return sum(m.weights_bytes for m in self._models.values() if m.counted)

    def _committed(self) -> int:
        return self._weights() + self._reserved

    def _free(self) -> int:
        return self.budget_bytes - self._committed()

    def _holders(self) -> str:
        parts = []
        rows = sorted((m for m in self._models.values() if m.counted),
                      key=lambda m: -m.weights_bytes)
        for m in rows:
            flags = (("pinned", m.pinned), (f"{m.in_flight} in flight", m.in_flight),
                     ("loading", m.loading))
            tags = "".join(f" {t}" for t, on in flags if on)
            parts.append(f"{m.name} {gb(m.weights_bytes)}{tags}")
        if self._reserved:
            parts.append(f"{gb(self._reserved)} reserved by requests")
        return ", ".join(parts) or "nothing"

    def _where(self) -> str:
        return self.source if self.source.endswith(".toml") else "[memory] of inference-node.toml"

    def _available_now(self) -> int:
        running = self._watchdog is not None and self._watchdog.is_alive()
        if running and self._available is not None:
            return self._available
        return int(self._read_available())

    def _check_floor(self, what: str) -> None:
        available = self._available_now()
        if available < self.floor_bytes:
            log.warning("refused %s: system has %s available, under the %s floor",
                        what, gb(available), gb(self.floor_bytes))
            raise Unavailable(
                f"system has {gb(available)} available, under the {gb(self.floor_bytes)} floor; "
                f"{what} was not admitted. Close other applications or unload a model, "
                f"or lower floor_gb in {self._where()}")

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
        """Admit a load of `footprint_bytes`; return the models to unload first (may be empty).

        Raises WouldNotFit with the numbers when it cannot fit under the policy, Unavailable
        under the memory floor.
        """
        with self._lock:
            row = self._models.get(name)
            if row is not None and (row.loaded or row.loading) and not row.evicting:
                return []
            self._check_floor(f"loading {name}")
            if footprint_bytes > self.budget_bytes:
                raise WouldNotFit(
                    f"{name} needs {gb(footprint_bytes)}, more than the whole budget of "
                    f"{gb(self.budget_bytes)} ({self.budget_source}); use a smaller "
                    f"quantization or raise budget_gb in {self._where()}")
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
                        free += m.weights_bytes
                if free < footprint_bytes:
                    raise WouldNotFit(self._load_refusal(name, footprint_bytes, idle))
            for m in victims:
                m.evicting = True
            row = self._row(name, pinned)
            row.pinned = pinned
            row.loading, row.loaded, row.evicting = True, False, False
            row.estimated_bytes = row.weights_bytes = footprint_bytes
            row.measured_bytes = 0
            self._use(row)
            return [m.name for m in victims]

    def _load_refusal(self, name: str, need: int, idle: list[ModelRow]) -> str:
        head = (f"{name} needs {gb(need)}; {self._committed() / GB:.1f} of {gb(self.budget_bytes)} "
                f"committed ({self._holders()})")
        if self.policy == "refuse" and idle:
            names = ", ".join(m.name for m in idle)
            return (f"{head}; unload {names}, set policy = \"evict\", "
                    f"or raise budget_gb in {self._where()}")
        return (f"{head}; nothing idle and unpinned can be evicted: wait for requests to "
                f"finish, unpin or unload a model, or raise budget_gb in {self._where()}")

    def loaded(self, name: str, estimated_bytes: int, measured_bytes: int) -> None:
        """The load finished: count the measured size (+ overhead) from now on."""
        with self._cond:
            row = self._row(name)
            row.loading, row.loaded = False, True
            row.estimated_bytes, row.measured_bytes = estimated_bytes, measured_bytes
            row.weights_bytes = (measured_bytes + self.overhead_bytes if measured_bytes > 0
                                 else estimated_bytes)
            self._use(row)
            self._cond.notify_all()

    def load_failed(self, name: str) -> None:
        with self._cond:
            row = self._models.get(name)
            if row is not None:
                row.loading = row.loaded = False
                row.weights_bytes = 0
            self._cond.notify_all()

    def unloaded(self, name: str) -> None:
        with self._cond:
            row = self._models.get(name)
            if row is not None:
                row.loaded = row.loading = row.evicting = False
                row.weights_bytes = 0
            self._cond.notify_all()

    def touch(self, name: str) -> None:
        with self._lock:
            row = self._models.get(name)
            if row is not None:
                self._use(row)

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
        timeout = self.memory.queue_timeout_s if timeout_s is None else timeout_s
        start = self._clock()
        with self._cond:
            self._check_floor(f"a request for {model}")
            self._check_ever_fits(model, prompt_tokens, max_tokens, kv_per_token, fixed_bytes)
            if not self._queue and need <= self._free():
                return self._grant(model, need, tokens, start)
            if len(self._queue) >= self.queue_limit:
                raise QueueFull(
                    f"the memory queue is full ({len(self._queue)} requests waiting, limit "
                    f"{self.queue_limit}); {self._committed() / GB:.1f} of {gb(self.budget_bytes)} "
                    f"committed ({self._holders()}); retry later, lower max_tokens, "
                    f"or raise queue_limit in {self._where()}")
            ticket = _Ticket(next(self._ids), need)
            self._queue.append(ticket)
            deadline = start + timeout
            try:
                while True:
                    if cancelled is not None and cancelled():
                        raise Cancelled(f"the client went away while waiting for memory for "
                                        f"{model}")
                    self._check_ever_fits(model, prompt_tokens, max_tokens, kv_per_token,
                                          fixed_bytes)
                    if (self._queue[0] is ticket and need <= self._free()
                            and self._available_now() >= self.floor_bytes):
                        self._queue.popleft()
                        return self._grant(model, need, tokens, start)
                    remaining = deadline - self._clock()
                    if remaining <= 0:
                        raise QueueTimeout(
                            f"waited {timeout:.1f} s for {gb(need)} of KV for {model}; "
                            f"{self._committed() / GB:.1f} of {gb(self.budget_bytes)} committed "
                            f"({self._holders()}); retry, lower max_tokens, or raise "
                            f"queue_timeout_s in {self._where()}")
                    wait = remaining if cancelled is None else min(remaining, CANCEL_POLL_S)
                    self._cond.wait(wait)
            finally:
                if ticket in self._queue:
                    self._queue.remove(ticket)
                self._cond.notify_all()  # the next head may fit now

    def _check_ever_fits(self, model: str, prompt_tokens: int, max_tokens: int,
                         kv_per_token: int, fixed_bytes: int) -> None:
        ceiling = self.budget_bytes - self._weights()
        need = kv_tokens(prompt_tokens + max_tokens) * kv_per_token + fixed_bytes
        if need <= ceiling:
            return
        head = (f"a request for {model} needs {gb(need)} of KV "
                f"({prompt_tokens} prompt + {max_tokens} max tokens); only {gb(max(ceiling, 0))} "
                f"of the {gb(self.budget_bytes)} budget is left beside the loaded weights "
                f"({self._holders()})")
        whole_steps = (ceiling - fixed_bytes) // kv_per_token // KV_STEP * KV_STEP
        room = whole_steps - prompt_tokens if kv_per_token else -1
        if room > 0:
            raise WouldNotFit(f"{head}; max_tokens <= {room} would fit")
        raise WouldNotFit(f"{head}; the prompt alone does not fit: shorten it, unload a model, "
                          f"or raise budget_gb in {self._where()}")

    def _grant(self, model: str, need: int, tokens: int, start: float) -> Reservation:
        row = self._row(model)
        row.in_flight += 1
        row.kv_reserved_bytes += need
        self._reserved += need
        self._use(row)
        return Reservation(model, need, max(0.0, self._clock() - start), tokens,
                           next(self._ids))

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
            if row is not None:
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
            if row is not None:
                row.in_flight -= 1
                row.kv_reserved_bytes -= reservation.bytes
                self._use(row)
            self._cond.notify_all()

    # ------------------------------------------------------------ the floor watchdog

    def start(self) -> None:
        """Read system available memory every watchdog_interval_s in a daemon thread."""
        if self._watchdog is not None and self._watchdog.is_alive():
            return
        self._stop.clear()
        self._available = int(self._read_available())
        self._watchdog = threading.Thread(target=self._watch, name="memory-watchdog",
                                          daemon=True)
        self._watchdog.start()

    def stop(self) -> None:
        self._stop.set()
        if self._watchdog is not None:
            self._watchdog.join(timeout=5)
            self._watchdog = None

    def _watch(self) -> None:
        while not self._stop.wait(self.memory.watchdog_interval_s):
            try:
                reading = int(self._read_available())
            except Exception:  # a failed reading must not kill the watchdog
                log.exception("could not read system available memory")
                continue
            below = reading < self.floor_bytes
            with self._cond:
                self._available = reading
                if below != self._below_floor:
                    if below:
                        log.warning("system has %s available, under the %s floor: admitting "
                                    "nothing new", gb(reading), gb(self.floor_bytes))
                    else:
                        log.info("system available memory back to %s, above the %s floor",
                                 gb(reading), gb(self.floor_bytes))
                    self._below_floor = below
                self._cond.notify_all()

    # ------------------------------------------------------------ reporting

    def snapshot(self) -> dict[str, Any]:
        """Everything `GetMemory` reports; keys follow pb.MemoryStatus / pb.ModelMemory."""
        with self._lock:
            rows = [
                {"name": m.name, "loaded": m.loaded, "weights_bytes": m.weights_bytes,
                 "kv_reserved_bytes": m.kv_reserved_bytes, "last_used_unix": m.last_used_unix,
                 "pinned": m.pinned, "in_flight": m.in_flight,
                 "estimated_bytes": m.estimated_bytes, "measured_bytes": m.measured_bytes,
                 "loading": m.loading}
                for m in self._models.values()
            ]
            snap: dict[str, Any] = {
                "budget_bytes": self.budget_bytes, "budget_source": self.budget_source,
                "committed_bytes": self._committed(), "weights_bytes": self._weights(),
                "reserved_bytes": self._reserved, "floor_bytes": self.floor_bytes,
                "models": rows, "queue_depth": len(self._queue),
                "queue_limit": self.queue_limit, "policy": self.policy,
            }
        try:
            snap["system_available_bytes"] = max(0, self._available_now())
        except Exception:  # reporting must not fail for a bad reading
            snap["system_available_bytes"] = 0
        try:
            import mlx.core as mx

            snap["mlx_active_bytes"] = mx.get_active_memory()
            snap["mlx_peak_bytes"] = mx.get_peak_memory()
            snap["mlx_cache_bytes"] = mx.get_cache_memory()
        except ImportError:
            pass
        return snap
