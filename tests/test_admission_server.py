"""Admission through the real server: statuses over gRPC, and a bounded load test."""

from __future__ import annotations

import json
import logging
import random
import threading
import time

import grpc
import mlx.core as mx
import pytest
from conftest import running_server
from test_server import collect, user

from inference_node.api import pb

MB = 1024 * 1024
GB = 1024 * MB


@pytest.fixture(scope="module")
def tight(chain_models):
    """The loop model (it never stops, KV 1 KB/token) under a budget of ~1.5 MB for requests."""
    models = [{"name": "loop", "path": str(chain_models["loop"])},
              {"name": "hello", "path": str(chain_models["hello"])}]
    with running_server(models, engine={"prompt_cache_mb": 0, "max_concurrent": 4},
                        budget_gb=3 * MB / GB, overhead_mb=1.0, queue_limit=4,
                        queue_timeout_s=30.0) as (srv, target):
        yield srv, target


def test_a_request_that_can_never_fit_is_refused_with_the_largest_max_tokens(tight, stub_for):
    with pytest.raises(grpc.RpcError) as err:
        collect(stub_for(tight[1]).Chat(
            pb.ChatRequest(model="loop", messages=[user("go")], max_tokens=2000), timeout=30))
    # 2048-token context: it passes validation, but its KV can never fit the tiny budget
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_tokens" in err.value.details()


def test_get_memory_reports_budget_models_and_queue(tight, stub_for):
    stub = stub_for(tight[1])
    collect(stub.Chat(pb.ChatRequest(model="hello", messages=[user("hi")], max_tokens=8),
                      timeout=30))
    m = stub.GetMemory(pb.GetMemoryRequest(), timeout=5)
    assert m.budget_bytes == 3 * MB
    assert "budget_gb" in m.budget_source
    assert m.policy == "evict" and m.queue_limit == 4
    rows = {r.name: r for r in m.models}
    assert rows["hello"].loaded and rows["hello"].weights_bytes > 0
    assert m.committed_bytes >= rows["hello"].weights_bytes
    assert m.system_available_bytes > 0


def test_load_of_a_model_larger_than_the_budget_is_refused_with_the_numbers(chain_models,
                                                                             stub_for):
    models = [{"name": "hello", "path": str(chain_models["hello"])}]
    with running_server(models, engine={"prompt_cache_mb": 0}, budget_gb=0.5 * MB / GB,
                        overhead_mb=0.0) as (_, target):
        with pytest.raises(grpc.RpcError) as err:
            stub_for(target).LoadModel(pb.LoadModelRequest(name="hello"), timeout=30)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "hello needs" in err.value.details() and "budget" in err.value.details()


def test_load_test_eight_clients_never_overcommit_and_every_request_ends(tight, stub_for):
    """8 concurrent streams with random max_tokens against a budget that holds 2-3 of them."""
    srv, target = tight
    stub = stub_for(target)
    budget = srv.admission.budget_bytes
    rng = random.Random(7)
    outcomes: list[str] = []
    committed_max = [0]
    queued_max = [0]
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            snap = srv.admission.snapshot()
            committed_max[0] = max(committed_max[0], snap["committed_bytes"])
            queued_max[0] = max(queued_max[0], snap["queue_depth"])
            time.sleep(0.005)

    def client(max_tokens: int) -> None:
        try:
            r = collect(stub.Chat(pb.ChatRequest(model="loop", messages=[user("go")],
                                                 max_tokens=max_tokens), timeout=60))
            assert r["done"].usage.completion_tokens == max_tokens
            outcomes.append("done")
        except grpc.RpcError as e:
            assert e.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED,
                                grpc.StatusCode.DEADLINE_EXCEEDED), e.details()
            assert e.details()
            outcomes.append(e.code().name)

    collect(stub.Chat(pb.ChatRequest(model="loop", messages=[user("go")], max_tokens=4),
                      timeout=30))  # loaded before the clock starts
    mx.synchronize()
    active_before = mx.get_active_memory()
    mx.reset_peak_memory()
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    threads = [threading.Thread(target=client, args=(rng.randint(150, 1100),)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    stop.set()
    watcher.join()
    assert not any(t.is_alive() for t in threads), "a request hung"
    assert len(outcomes) == 8, "a request was lost"
    assert "done" in outcomes
    assert queued_max[0] > 0, "the budget never made anyone wait: the test tests nothing"
    assert committed_max[0] <= budget
    assert mx.get_peak_memory() - active_before <= budget
    assert srv.admission.snapshot()["reserved_bytes"] == 0


# mlx-lm stores every sequence of a batch at the batch's length (left-padded): a short request
# beside a long one holds as much KV as the long one, which no single reservation counts.


def run_beside(srv, stub, long_prompt: str, long_tokens: int, short_tokens: int) -> list[str]:
    """A long-prompt stream on the loop model, then a short one once it runs; the order of
    events that tells whether the short one joined the running batch."""
    order: list[str] = []
    done: dict[str, pb.Done] = {}
    started = threading.Event()

    def long() -> None:
        seen = 0
        for ev in stub.Chat(pb.ChatRequest(model="loop", messages=[user(long_prompt)],
                                           max_tokens=long_tokens), timeout=60):
            kind = ev.WhichOneof("event")
            if kind == "delta":
                seen += 1
                if seen == 5:
                    started.set()
            elif kind == "done":
                order.append("long done")
                done["long"] = ev.done

    def short() -> None:
        for ev in stub.Chat(pb.ChatRequest(model="loop", messages=[user("go")],
                                           max_tokens=short_tokens), timeout=60):
            kind = ev.WhichOneof("event")
            if kind == "delta" and "short first token" not in order:
                order.append("short first token")
            elif kind == "done":
                done["short"] = ev.done

    a = threading.Thread(target=long)
    a.start()
    assert started.wait(30), "the long stream never started"
    b = threading.Thread(target=short)
    b.start()
    a.join(60)
    b.join(60)
    assert done["long"].usage.completion_tokens == long_tokens
    assert done["short"].usage.completion_tokens == short_tokens
    assert srv.admission.snapshot()["reserved_bytes"] == 0
    return order


def test_a_short_request_waits_until_its_padding_into_the_batch_fits(chain_models, stub_for,
                                                                      caplog):
    """Whether the short request waited is read from the engine's own log: the order in which
    two client threads receive their events is not the order the server produced them in, and
    on a loaded machine the long stream's last event can reach its thread after the short
    stream's first token, though the server sent it first."""
    waited = "waits to join the batch"
    models = [{"name": "loop", "path": str(chain_models["loop"])}]
    with running_server(models, engine={"prompt_cache_mb": 0, "max_concurrent": 4},
                        budget_gb=4.5 * MB / GB, overhead_mb=1.0) as (srv, target):
        stub = stub_for(target)

        def prompt_tokens(text: str) -> int:
            r = collect(stub.Chat(pb.ChatRequest(model="loop", messages=[user(text)],
                                                 max_tokens=1), timeout=30))
            return int(r["admitted"].prompt_tokens)

        extra = prompt_tokens("go") - 1  # the chat template's tokens around one word
        free = srv.admission.budget_bytes - srv.admission.snapshot()["committed_bytes"]
        room = free // srv.engine.loaded["loop"].kv_per_token  # KV token-slots beside weights
        assert 2048 < room < 2560, f"room for {room} tokens: retune the budget of this test"

        # 1100 prompt + 600 new tokens (reserved as 1792) beside 256 for the short one: both
        # reservations fit. But while both run, the short one is stored at the long one's
        # length, 2 × 1280 slots: it must wait for the long one to finish.
        long_prompt = " ".join(["a"] * (1100 - extra))
        assert prompt_tokens(long_prompt) == 1100
        with caplog.at_level(logging.INFO, logger="inference_node.engine"):
            run_beside(srv, stub, long_prompt, long_tokens=600, short_tokens=100)
        assert [r for r in caplog.records if waited in r.getMessage()]
        caplog.clear()

        # A 600-token prompt: padded, both fit (2 × 768 slots), and the short one joins at once:
        # its 100 tokens end while the long one still has hundreds to go.
        with caplog.at_level(logging.INFO, logger="inference_node.engine"):
            order = run_beside(srv, stub, " ".join(["a"] * (600 - extra)), long_tokens=600,
                               short_tokens=100)
        assert not [r for r in caplog.records if waited in r.getMessage()]
        assert order == ["short first token", "long done"]


# ---------------------------------------------------------------- a schema'd reply's default


CLASSIFY_LIKE = {"type": "object", "additionalProperties": False, "required": ["ui", "reason"],
                 "properties": {"ui": {"type": "boolean"},
                                "reason": {"type": "string", "maxLength": 60}}}


def test_a_schemad_reply_reserves_what_its_schema_allows_not_the_default(
        smollm2_dir, smol_server, stub_for):
    """SmolLM2 does not reason, so a bounded schema decides its reply from the first token: a
    call that sets no max_tokens is admitted for what the schema allows. With room for ~3000
    tokens of KV beside the weights, the same call with an open string, or in plain text, asks
    for the default (the rest of the 8k context) and can never fit."""
    from inference_node.footprint import estimate

    stub = stub_for(smol_server[1])
    collect(stub.Chat(pb.ChatRequest(model="smollm2", messages=[user("hi")], max_tokens=1),
                      timeout=60))
    (row,) = [r for r in stub.GetMemory(pb.GetMemoryRequest(), timeout=5).models
              if r.name == "smollm2"]
    kv = estimate(smollm2_dir, 0).kv_per_token
    budget = row.resident_bytes + 3000 * kv

    def ask(target: str, schema: dict | None) -> dict:
        req = pb.ChatRequest(model="smollm2", messages=[user("Is a footer UI work? JSON.")])
        if schema is not None:
            req.response_format.type = pb.ResponseFormat.JSON_SCHEMA
            req.response_format.schema_json = json.dumps(schema)
        return collect(stub_for(target).Chat(req, timeout=120))

    with running_server([{"name": "smollm2", "path": str(smollm2_dir)}],
                        engine={"prompt_cache_mb": 0}, budget_gb=budget / GB,
                        overhead_mb=row.overhead_bytes / MB) as (_, target):
        reply = ask(target, CLASSIFY_LIKE)
        assert reply["done"].finish_reason == "stop"
        assert set(json.loads(reply["content"])) == {"ui", "reason"}
        open_reason = json.loads(json.dumps(CLASSIFY_LIKE))
        del open_reason["properties"]["reason"]["maxLength"]
        for schema in (open_reason, None):
            with pytest.raises(grpc.RpcError) as err:
                ask(target, schema)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "max_tokens" in err.value.details()
