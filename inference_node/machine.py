"""What the machine says about memory: available bytes, the default budget, MLX's limits.

Sizes are binary and labelled so: 1 GiB is 2**30 bytes, as macOS and MLX count unified memory
(the config's `*_gb` keys are GiB too).
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from collections.abc import Callable

from inference_node.config import MemoryConfig
from studio_common.tomlconf import ConfigError

log = logging.getLogger("inference_node.admission")

GiB = 1 << 30
MiB = 1 << 20


def gib(n: float) -> str:
    """Bytes for a person: GiB with one decimal, or MiB under a tenth of a GiB (tiny models)."""
    if abs(n) < GiB / 10:
        return f"{n / MiB:.1f} MiB"
    return f"{n / GiB:.1f} GiB"


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
        return int(memory.budget_gb * GiB), f"budget_gb = {memory.budget_gb} in {source}"
    if sys.platform == "darwin":
        import mlx.core as mx

        info = mx.device_info() if hasattr(mx, "device_info") else mx.metal.device_info()
        rec = int(info.get("max_recommended_working_set_size", 0))
        if rec:
            budget = rec - int(memory.reserve_gb * GiB)
            if budget <= 0:
                raise ConfigError(f"reserve_gb = {memory.reserve_gb} leaves no budget out of the "
                                 f"recommended working set of {gib(rec)}; lower it in {source}")
            return budget, (f"recommended working set {gib(rec)} − reserve "
                            f"{memory.reserve_gb:.1f} GiB (mlx device info)")
    import psutil

    total = int(psutil.virtual_memory().total)
    return int(total * memory.linux_fraction), (
        f"total RAM {gib(total)} × {memory.linux_fraction} ({sys.platform.capitalize()})")


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


def mlx_readings() -> dict[str, int]:
    """MLX's active, peak and cache bytes, as GetMemory reports them ({} without mlx)."""
    try:
        import mlx.core as mx
    except ImportError:
        return {}
    return {"mlx_active_bytes": mx.get_active_memory(), "mlx_peak_bytes": mx.get_peak_memory(),
            "mlx_cache_bytes": mx.get_cache_memory()}


class Watchdog:
    """Calls `on_reading(read())` every `interval_s` in a daemon thread; a failed reading is
    logged and skipped, never fatal."""

    def __init__(self, read: Callable[[], int], on_reading: Callable[[int], None],
                 interval_s: float) -> None:
        self._read = read
        self._on_reading = on_reading
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name="memory-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _watch(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                reading = self._read()
            except Exception:  # a failed reading must not kill the watchdog
                log.exception("could not read system available memory")
                continue
            self._on_reading(reading)
