"""The prompt cache with the real MLX engine: KV reused across requests, output unchanged.

A random-weight llama with a word-level tokenizer (tiny_models.py) talks nonsense, but every
word is one token, so equal replies are equal token sequences; any KV served wrongly (a wrong
position, a stale layer) changes what a random model says next.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import running_server
from tiny_models import write_random_chat_model

from inference_node.api import pb

SYSTEM = ("you are w1 w2 w3 w4 w5 w6 w7 w8 w9 w10 w11 w12 w13 w14 w15 w16 w17 w18 w19 w20 "
          "w21 w22 w23 w24 w25 w26 w27 w28 w29 w30 w31 w32")
TOOL = pb.Tool(name="get_weather", description="w40 w41 w42",
               parameters_json='{"type": "object", "properties": {"city": {"type": "string"}}}')


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_chat_model(tmp_path_factory.mktemp("pc") / "m", "llama", seed=3)


@pytest.fixture(scope="module")
def cached(model_dir: Path) -> Iterator[tuple[Any, str]]:
    with running_server([{"name": "m", "path": str(model_dir)}],
                        engine={"prompt_cache_mb": 64.0, "pinned_prefix_mb": 16.0}) as s:
        yield s


@pytest.fixture(scope="module")
def uncached(model_dir: Path) -> Iterator[tuple[Any, str]]:
    with running_server([{"name": "m", "path": str(model_dir)}],
                        engine={"prompt_cache_mb": 0.0}) as s:
        yield s


def msg(role: str, text: str) -> pb.Message:
    return pb.Message(role=role, text=text)


def ask(stub: Any, messages: list[pb.Message], tools: list[pb.Tool] | None = None,
        max_tokens: int = 12) -> tuple[str, pb.Done]:
    request = pb.ChatRequest(model="m", messages=messages, tools=tools or [],
                             max_tokens=max_tokens)
    text, done = "", None
    for ev in stub.Chat(request, timeout=120):
        kind = ev.WhichOneof("event")
        if kind == "delta":
            text += ev.delta.text
        elif kind == "done":
            done = ev.done
    assert done is not None
    return text, done


def test_next_turn_is_served_from_the_cache_and_says_what_it_says_without(
        cached: tuple[Any, str], uncached: tuple[Any, str], stub_for: Any) -> None:
    with_cache, without = stub_for(cached[1]), stub_for(uncached[1])
    turn1 = [msg("system", SYSTEM), msg("user", "hello w50 w51 w52")]
    reply1, done1 = ask(with_cache, turn1)
    assert reply1 == ask(without, turn1)[0]
    assert len(reply1.split()) >= 3, reply1
    turn2 = [*turn1, msg("assistant", reply1), msg("user", "w60 w61 w62 what")]
    reply2, done2 = ask(with_cache, turn2)
    plain2, plain_done2 = ask(without, turn2)
    # the whole first turn (its prompt) came from the cache; the reply is the same tokens
    assert done2.usage.cached_prompt_tokens >= done1.usage.prompt_tokens
    assert plain_done2.usage.cached_prompt_tokens == 0
    assert reply2 == plain2
    assert done2.usage.completion_tokens == plain_done2.usage.completion_tokens


def test_a_fresh_conversation_reuses_the_pinned_system_prefix(
        cached: tuple[Any, str], uncached: tuple[Any, str], stub_for: Any) -> None:
    with_cache, without = stub_for(cached[1]), stub_for(uncached[1])
    engine = cached[0].engine
    system = SYSTEM + " w33 w34 w35"  # a system part no earlier test sent
    first = [msg("system", system), msg("user", "w70 w71")]
    ask(with_cache, first, [TOOL])
    pins = engine.prompt_cache.pins("m")
    assert pins and max(pins) >= 30, pins  # the system part and the tool schema, pinned
    engine.call(lambda: engine.prompt_cache.lru.trim_to(n_sequences=0))  # the LRU forgets
    other = [msg("system", system), msg("user", "w80 w81 w82 w83")]
    reply, done = ask(with_cache, other, [TOOL])
    assert done.usage.cached_prompt_tokens >= max(pins) - 1
    assert done.usage.cached_prompt_tokens < done.usage.prompt_tokens
    assert reply == ask(without, other, [TOOL])[0]
    stats = engine.prompt_cache.stats["m"]
    assert stats.pinned_tokens >= max(pins) - 1


def test_another_task_s_first_turn_is_no_miss_and_a_rewritten_past_is_one(
        cached: tuple[Any, str], stub_for: Any) -> None:
    stub, stats = stub_for(cached[1]), cached[0].engine.prompt_cache.stats
    words = " ".join(f"w{i}" for i in range(100, 130))
    ask(stub, [msg("system", SYSTEM), msg("user", "task w90 w91 w92 w93")])
    rerendered = stats["m"].misses.get("rerendered", 0)
    # the next task's first call: the same system part and opening, then its own longer text
    ask(stub, [msg("system", SYSTEM), msg("user", f"task w90 w91 {words}")])
    assert stats["m"].misses.get("rerendered", 0) == rerendered
    # a conversation that carries a reply on, with its first message written another way
    reply, _ = ask(stub, [msg("system", SYSTEM), msg("user", "task w90 w91 w92 w94")])
    ask(stub, [msg("system", SYSTEM), msg("user", "task w90 w91 w92 w95"),
               msg("assistant", reply), msg("user", words)])
    assert stats["m"].misses.get("rerendered", 0) > rerendered


def test_each_reply_says_what_it_computed_again_and_why(
        cached: tuple[Any, str], stub_for: Any) -> None:
    stub, engine = stub_for(cached[1]), cached[0].engine
    words = " ".join(f"w{i}" for i in range(140, 160))
    first = [msg("system", SYSTEM), msg("user", "task w96 w97 w98")]
    reply, done = ask(stub, first)
    assert (done.usage.recomputed_prompt_tokens, done.usage.recompute_cause) == (0, "")
    # the next turn, its past as it was: served, nothing computed again
    _, done = ask(stub, [*first, msg("assistant", reply), msg("user", words)])
    assert (done.usage.recomputed_prompt_tokens, done.usage.recompute_cause) == (0, "")
    # the same turn with the first message written another way: its past is computed again
    _, done = ask(stub, [msg("system", SYSTEM), msg("user", "task w96 w97 w99"),
                         msg("assistant", reply), msg("user", words)])
    assert done.usage.recompute_cause == "rerendered"
    assert done.usage.recomputed_prompt_tokens >= len(reply.split())
    assert done.usage.cached_prompt_tokens + done.usage.recomputed_prompt_tokens \
        <= done.usage.prompt_tokens
    # the LRU forgets everything: the conversation's next turn had been seen, and is gone
    engine.call(lambda: engine.prompt_cache.lru.trim_to(n_sequences=0))
    _, done = ask(stub, [*first, msg("assistant", reply), msg("user", words + " w161")])
    assert done.usage.recompute_cause == "evicted"
    assert done.usage.recomputed_prompt_tokens > len(words.split())
    assert done.usage.cached_prompt_tokens + done.usage.recomputed_prompt_tokens \
        <= done.usage.prompt_tokens


def test_instructions_two_requests_open_with_stay_cached_after_the_lru_forgets(
        cached: tuple[Any, str], uncached: tuple[Any, str], stub_for: Any) -> None:
    # an orchestrator's review prompt: the same instructions in a user message, then the task
    with_cache, without = stub_for(cached[1]), stub_for(uncached[1])
    cache = cached[0].engine.prompt_cache
    rules = " ".join(f"w{i}" for i in range(160, 200))
    ask(with_cache, [msg("user", f"{rules} task w1 w2")])
    pins = len(cache.pins("m"))
    ask(with_cache, [msg("user", f"{rules} task w3 w4")])  # the second to open that way
    assert len(cache.pins("m")) == pins + 1 and cache.pins("m")[-1] >= 40
    cached[0].engine.call(lambda: cache.lru.trim_to(n_sequences=0))  # the LRU forgets
    third = [msg("user", f"{rules} task w5 w6")]
    reply, done = ask(with_cache, third)
    assert done.usage.cached_prompt_tokens >= 40
    assert (done.usage.recomputed_prompt_tokens, done.usage.recompute_cause) == (0, "")
    assert reply == ask(without, third)[0]
    # a conversation carrying its own reply on shares no opening with another request
    pins = cache.pins("m")
    ask(with_cache, [*third, msg("assistant", reply), msg("user", "w7 w8")])
    assert cache.pins("m")[:-1] == pins[:-1] and len(cache.pins("m")) == len(pins)


def test_cached_kv_stays_inside_the_prompt_cache_cap_set_aside_from_the_budget(
        cached: tuple[Any, str], uncached: tuple[Any, str]) -> None:
    srv, _ = cached
    cache = srv.engine.prompt_cache
    cap = 64 * 2**20
    assert cache.max_bytes == cap
    assert cache.pinned_bytes == 16 * 2**20
    assert cache.lru.max_bytes == cap - cache.pinned_bytes  # pins come out of the same cap
    # admission never promises the cap to a model or a request
    assert uncached[0].admission.budget_bytes - srv.admission.budget_bytes == cap
    assert cache.pinned_nbytes() <= cache.pinned_bytes
    assert cache.lru.nbytes <= cache.lru.max_bytes


def test_pins_beyond_their_share_evict_the_least_recently_used(model_dir: Path) -> None:
    from inference_node import mlx_compat
    from inference_node.prompt_cache import PromptCache

    kv = _kv_of(model_dir)
    pc = PromptCache(mlx_compat.lru_prompt_cache(8, 2**20), 2**24,
                     int(mlx_compat.cache_nbytes(kv([5] * 10)) * 2.5))  # room for two pins
    assert pc.pin("m", [5] * 10, kv([5] * 10))
    assert pc.pin("m", [6] * 10, kv([6] * 10))
    assert pc.fetch("m", [5] * 10 + [7, 8]).pinned == 10  # [5]*10 used last now
    assert pc.pin("m", [7] * 10, kv([7] * 10))  # a third does not fit: [6]*10 goes
    assert sorted(pc.pins("m")) == [10, 10] and not pc.has_pin("m", [6] * 10)
    assert pc.pinned_nbytes() <= pc.pinned_bytes
    # KV is held in whole steps of 256 tokens: 600 tokens take 3 steps, more than the share
    assert not pc.pin("m", [9] * 600, kv([9] * 600))  # alone larger than the share: refused
    found = pc.fetch("m", [5] * 10 + [1, 2, 3])
    assert (found.cached, len(found.rest)) == (10, 3)
    assert mlx_compat.cache_tokens(found.cache) == 10  # a copy, trimmed to what is served


def test_a_system_part_outlives_the_shared_parts_pinned_after_it(model_dir: Path) -> None:
    # Each task's brief, shared by its rounds, is pinned as a shared part; the classify call's
    # system part serves every task. In a 22-task run the briefs pushed it out before the last.
    from inference_node import mlx_compat
    from inference_node.prompt_cache import PromptCache

    kv = _kv_of(model_dir)
    pc = PromptCache(mlx_compat.lru_prompt_cache(8, 2**20), 2**24,
                     int(mlx_compat.cache_nbytes(kv([5] * 10)) * 2.5))  # room for two pins
    assert pc.pin("m", [1] * 10, kv([1] * 10))  # a system part
    for brief in range(20, 26):  # one task's brief after another, each used once
        assert pc.pin("m", [brief] * 10, kv([brief] * 10), system=False)
    assert pc.has_pin("m", [1] * 10) and pc.has_pin("m", [25] * 10)
    assert len(pc.pins("m")) == 2  # the share holds two: each brief pushed out the one before
    assert pc.fetch("m", [1] * 10 + [7, 8]).pinned == 10
    # a shared part never pushes out a system part; another system part does, the oldest
    assert pc.pin("m", [2] * 10, kv([2] * 10))  # the last brief goes
    assert not pc.pin("m", [26] * 10, kv([26] * 10), system=False)
    assert pc.has_pin("m", [1] * 10) and pc.has_pin("m", [2] * 10)
    assert pc.pin("m", [3] * 10, kv([3] * 10))  # [1]*10 was used before [2]*10 was pinned
    assert not pc.has_pin("m", [1] * 10) and pc.has_pin("m", [2] * 10)
    assert pc.pinned_nbytes() <= pc.pinned_bytes


def test_misses_name_their_cause_and_another_conversation_is_not_one() -> None:
    from inference_node import mlx_compat
    from inference_node.prompt_cache import PromptCache

    pc = PromptCache(mlx_compat.lru_prompt_cache(8, 2**20), 2**24, 0)
    system, turn1, reply = [1, 2, 3, 4, 5, 6], [7, 8, 9, 10], [11, 12, 13, 14]
    pc.remember("m", system + turn1 + reply, len(system + turn1))
    # the next turn carries the reply on, but it was evicted: every shared token is a miss
    nxt = system + turn1 + reply + [15, 16, 17]
    miss = pc.fetch("m", nxt).miss
    assert miss is not None and (miss.cause, miss.tokens) == ("evicted", len(nxt) - 3)
    # the next turn repeats the reply differently (its reasoning dropped, re-rendered)
    edited = system + turn1 + [11, 99, 98, 97, 96, 15, 16, 17]
    miss = pc.fetch("m", edited).miss
    assert miss is not None and miss.cause == "evicted"  # what it shared is gone
    pc.lru.insert_cache("m", system + turn1 + [11], _kv(len(system + turn1) + 1))
    miss = pc.fetch("m", edited).miss
    assert miss is not None and (miss.cause, miss.at) == ("rerendered", len(system + turn1) + 1)
    assert miss.tokens == len(reply) - 1
    # a different user message after the same system part is another conversation
    assert pc.fetch("m", system + [20, 21]).miss is None
    # so is a first turn that shares the system part and the user message's opening, and is
    # longer (every task's first call to the classifier, the review, a fresh coder)
    other_task = system + turn1[:3] + list(range(40, 60))
    assert pc.fetch("m", other_task, continues=False).miss is None
    miss = pc.fetch("m", other_task).miss  # one that carries a reply on parts from its own past
    assert miss is not None and (miss.cause, miss.at) == ("rerendered", len(system) + 3)
    assert pc.stats["m"].misses["evicted"] > 0


def _kv(n: int) -> list[Any]:
    """A llama-shaped KV cache holding n positions (values do not matter to the trie)."""
    import mlx.core as mx
    from mlx_lm.models.cache import KVCache

    c = KVCache()
    c.update_and_fetch(mx.zeros((1, 2, n, 8)), mx.zeros((1, 2, n, 8)))
    return [c]


def _kv_of(model_dir: Path) -> Callable[[list[int]], list[Any]]:
    """tokens -> the KV the tiny model computes for them."""
    import mlx.core as mx

    from inference_node import mlx_compat

    model, _ = mlx_compat.load(model_dir, dequantize=False)

    def kv(tokens: list[int]) -> list[Any]:
        c = mlx_compat.make_cache(model)
        model(mx.array(tokens)[None], cache=c)
        mx.eval([x.state for x in c])
        return c

    return kv
