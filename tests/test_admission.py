"""Admission: loads and requests against the memory budget, the queue, the floor."""

from __future__ import annotations

import gc
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import mlx.core as mx
import pytest
from tiny_models import write_random_llama

from inference_node.admission import GB, Admission, _parse_vm_stat, apply_mlx_limits
from inference_node.config import MemoryConfig
from inference_node.errors import QueueFull, QueueTimeout, Unavailable, WouldNotFit
from inference_node.footprint import estimate

MB = 1 << 20
PLENTY = 64 * GB


def make(budget_gb: float = 10.0, available: Callable[[], int] = lambda: PLENTY,
         **memory: object) -> Admission:
    cfg = MemoryConfig(budget_gb=budget_gb, overhead_mb=0, **memory)  # type: ignore[arg-type]
    return Admission(cfg, "/etc/studio-coder/inference-node.toml", available_bytes=available)


def load(adm: Admission, name: str, size: int, pinned: bool = False) -> list[str]:
    victims = adm.admit_load(name, size, pinned=pinned)
    for v in victims:
        adm.unloaded(v)
    adm.loaded(name, size, 0)
    return victims


def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.005)


# ---------------------------------------------------------------- loads


def test_budget_and_its_source_come_from_the_config() -> None:
    adm = make(2.0)
    assert adm.budget_bytes == 2 * GB
    assert adm.budget_source == "budget_gb = 2.0 in /etc/studio-coder/inference-node.toml"


def test_default_budget_on_linux_is_a_fraction_of_ram() -> None:
    adm = Admission(MemoryConfig(linux_fraction=0.5), "built-in defaults")
    assert "total RAM" in adm.budget_source and "× 0.5" in adm.budget_source
    assert adm.budget_bytes > 0


def test_model_larger_than_the_budget_is_refused_with_the_numbers() -> None:
    adm = make(2.0)
    with pytest.raises(WouldNotFit) as e:
        adm.admit_load("huge", 3 * GB, pinned=False)
    msg = str(e.value)
    assert "huge needs 3.0 GiB" in msg and "2.0 GiB" in msg and "budget_gb" in msg


def test_second_model_that_would_overflow_evicts_the_lru_idle_one() -> None:
    adm = make(10.0, policy="evict")
    load(adm, "a", 4 * GB)
    load(adm, "b", 4 * GB)
    adm.touch("a")  # b is now the least recently used
    assert adm.admit_load("c", 4 * GB, pinned=False) == ["b"]
    adm.unloaded("b")
    adm.loaded("c", 4 * GB, 0)
    names = {m["name"]: m for m in adm.snapshot()["models"]}
    assert names["a"]["loaded"] and names["c"]["loaded"] and not names["b"]["loaded"]
    assert adm.snapshot()["committed_bytes"] == 8 * GB


def test_second_model_that_would_overflow_is_refused_under_refuse() -> None:
    adm = make(10.0, policy="refuse")
    load(adm, "a", 6 * GB)
    with pytest.raises(WouldNotFit) as e:
        adm.admit_load("b", 6 * GB, pinned=False)
    msg = str(e.value)
    assert "b needs 6.0 GiB; 6.0 of 10.0 GiB committed (a 6.0 GiB)" in msg
    assert "unload a" in msg and "/etc/studio-coder/inference-node.toml" in msg


def test_pinned_model_is_never_evicted() -> None:
    adm = make(10.0)
    load(adm, "coder", 8 * GB, pinned=True)
    with pytest.raises(WouldNotFit) as e:
        adm.admit_load("vision", 3 * GB, pinned=False)
    assert "coder 8.0 GiB pinned" in str(e.value)


def test_model_with_a_request_in_flight_is_never_evicted() -> None:
    adm = make(10.0)
    load(adm, "a", 6 * GB)
    r = adm.reserve("a", 10, 10, 1024)
    with pytest.raises(WouldNotFit) as e:
        adm.admit_load("b", 6 * GB, pinned=False)
    assert "1 in flight" in str(e.value)
    adm.release(r)
    assert adm.admit_load("b", 6 * GB, pinned=False) == ["a"]


def test_load_failed_and_measured_size_correct_the_ledger() -> None:
    adm = make(10.0)
    adm.admit_load("a", 4 * GB, pinned=False)
    adm.load_failed("a")
    assert adm.snapshot()["committed_bytes"] == 0
    adm.admit_load("a", 4 * GB, pinned=False)
    adm.loaded("a", 4 * GB, 3 * GB)
    row = adm.snapshot()["models"][0]
    assert (row["estimated_bytes"], row["measured_bytes"], row["weights_bytes"]) == (
        4 * GB, 3 * GB, 3 * GB)


def tiny_model(path: Path, layers: int) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers

    write_random_llama(path, num_hidden_layers=layers)
    tok = Tokenizer(models.WordLevel({"<unk>": 0, "</s>": 1}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "</s>"}))
    return path


def test_real_models_that_fit_alone_but_not_together_evict(tmp_path: Path) -> None:
    """The engine's sequence with real loads: admit, unload victims, load, correct."""
    from mlx_lm import load as mlx_load

    dirs = [tiny_model(tmp_path / n, 4) for n in ("m1", "m2")]
    fps = [estimate(d, 2 * MB) for d in dirs]
    budget = int(fps[0].resident_bytes * 1.5)
    adm = Admission(MemoryConfig(overhead_mb=2), "test.toml",
                    available_bytes=lambda: PLENTY, budget_bytes=budget)
    held: dict[str, object] = {}
    for name, d, fp in zip(("m1", "m2"), dirs, fps, strict=True):
        for victim in adm.admit_load(name, fp.resident_bytes, pinned=False):
            del held[victim]
            gc.collect()
            mx.clear_cache()
            adm.unloaded(victim)
        before = mx.get_active_memory()
        model, _ = mlx_load(str(d))
        mx.eval(model.parameters())
        held[name] = model
        del model  # only `held` may keep a model alive, or eviction frees nothing
        adm.loaded(name, fp.resident_bytes, mx.get_active_memory() - before)
    assert list(held) == ["m2"]
    snap = adm.snapshot()
    assert snap["committed_bytes"] <= budget
    (m2,) = [m for m in snap["models"] if m["loaded"]]
    assert m2["name"] == "m2"
    assert abs(m2["measured_bytes"] - fps[1].weights_bytes) < 0.15 * fps[1].weights_bytes


# ---------------------------------------------------------------- requests


def test_request_that_can_never_fit_is_refused_with_the_largest_max_tokens() -> None:
    adm = make(1.0)
    load(adm, "a", GB // 2)
    kv = 1024 * 1024  # 1 MB per token: 512 tokens fit beside the weights
    with pytest.raises(WouldNotFit) as e:
        adm.reserve("a", 100, 1000, kv)
    assert "max_tokens <= 412 would fit" in str(e.value)
    r = adm.reserve("a", 100, 412, kv)
    adm.release(r)


def test_concurrent_reservations_past_the_budget_queue_in_fifo_order() -> None:
    adm = make(1.0)
    load(adm, "a", GB // 2)
    kv = MB
    first = adm.reserve("a", 0, 400, kv)  # 400 of the 512 MB left
    order: list[int] = []
    results: list[object] = []

    def request(i: int) -> None:
        r = adm.reserve("a", 0, 300, kv, timeout_s=10)
        order.append(i)
        results.append(r)

    threads = []
    for i in range(3):
        t = threading.Thread(target=request, args=(i,))
        t.start()
        threads.append(t)
        wait_for(lambda i=i: adm.snapshot()["queue_depth"] == i + 1)
    assert order == []
    adm.release(first)
    wait_for(lambda: len(order) == 1)
    assert order == [0] and adm.snapshot()["queue_depth"] == 2
    for expected in (1, 2):
        adm.release(results[-1])  # type: ignore[arg-type]
        wait_for(lambda expected=expected: len(order) == expected + 1)
    for t in threads:
        t.join()
    assert order == [0, 1, 2]


def test_full_queue_refuses_at_once() -> None:
    adm = make(1.0, queue_limit=1)
    load(adm, "a", GB // 2)
    held = adm.reserve("a", 0, 500, MB)
    waiter = threading.Thread(target=lambda: adm.release(adm.reserve("a", 0, 100, MB)))
    waiter.start()
    wait_for(lambda: adm.snapshot()["queue_depth"] == 1)
    with pytest.raises(QueueFull) as e:
        adm.reserve("a", 0, 100, MB)
    assert "limit 1" in str(e.value) and "queue_limit" in str(e.value)
    adm.release(held)
    waiter.join()


def test_waiting_past_the_deadline_is_a_queue_timeout() -> None:
    adm = make(1.0)
    load(adm, "a", GB // 2)
    held = adm.reserve("a", 0, 500, MB)
    with pytest.raises(QueueTimeout) as e:
        adm.reserve("a", 0, 100, MB, timeout_s=0.05)
    assert "queue_timeout_s" in str(e.value)
    assert adm.snapshot()["queue_depth"] == 0
    adm.release(held)


def test_release_is_idempotent_and_returns_the_memory() -> None:
    adm = make(1.0)
    load(adm, "a", GB // 2)
    r = adm.reserve("a", 10, 90, MB)
    assert r.bytes == 256 * MB and adm.snapshot()["reserved_bytes"] == 256 * MB  # whole steps
    adm.release(r)
    adm.release(r)
    snap = adm.snapshot()
    assert snap["reserved_bytes"] == 0 and snap["models"][0]["in_flight"] == 0


# ---------------------------------------------------------------- the floor


def test_below_the_floor_new_work_is_refused_with_the_reading() -> None:
    reading = [PLENTY]
    adm = make(10.0, available=lambda: reading[0], floor_gb=1.0)
    load(adm, "a", GB)
    reading[0] = int(0.8 * GB)
    with pytest.raises(Unavailable) as e:
        adm.reserve("a", 10, 10, MB)
    assert "system has 0.8 GiB available, under the 1.0 GiB floor" in str(e.value)
    with pytest.raises(Unavailable):
        adm.admit_load("b", GB, pinned=False)
    reading[0] = PLENTY
    adm.release(adm.reserve("a", 10, 10, MB))


def test_watchdog_reads_the_floor_in_the_background() -> None:
    reading = [PLENTY]
    adm = make(10.0, available=lambda: reading[0], watchdog_interval_s=0.01)
    adm.start()
    try:
        reading[0] = int(0.5 * GB)
        wait_for(lambda: adm.snapshot()["system_available_bytes"] == int(0.5 * GB))
        with pytest.raises(Unavailable):
            adm.admit_load("b", GB, pinned=False)
    finally:
        adm.stop()


def test_vm_stat_counts_free_inactive_and_purgeable_pages() -> None:
    text = ("Mach Virtual Memory Statistics: (page size of 16384 bytes)\n"
            "Pages free:                               10.\n"
            "Pages active:                            999.\n"
            "Pages inactive:                           20.\n"
            "Pages purgeable:                           5.\n")
    assert _parse_vm_stat(text) == 35 * 16384


def test_mlx_limits_follow_the_budget() -> None:
    previous = apply_mlx_limits(2 * GB, None, 0)
    try:
        assert mx.set_memory_limit(2 * GB) == 2 * GB
        assert mx.set_cache_limit(GB // 4) == GB // 4
    finally:
        mx.set_memory_limit(previous["memory_limit"])
        mx.set_cache_limit(previous["cache_limit"])


def test_a_reservation_grows_only_into_free_memory_and_release_returns_all_of_it() -> None:
    adm = make(1.0)
    load(adm, "a", GB // 2)
    r = adm.reserve("a", 0, 256, MB)  # 256 MB of the 512 MB left
    assert adm.try_grow(r, 200 * MB) and r.bytes == 456 * MB
    assert not adm.try_grow(r, 100 * MB) and r.bytes == 456 * MB  # 56 MB free
    adm.release(r)
    assert adm.snapshot()["reserved_bytes"] == 0
    assert not adm.try_grow(r, MB)  # released: nothing to grow
