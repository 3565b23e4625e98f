"""A failure in one request's generation step fails that request only (issue 18).

Before: `min_p=5` beside three greedy streams failed all four with INTERNAL, and every sampled
request after it failed with "[eval] Attempting to eval an array without a primitive" until a
restart (mlx-lm's samplers are compiled with MLX's random state, which the exception left
holding a traced array). Now the request at fault fails alone, the batch and the random state
are rebuilt, and the other requests resume from the tokens they already had.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from conftest import running_server

from inference_node.api import pb, reasons
from inference_node.service import InferenceServicer

LOOP = ["a", "b", "c", "d", "e", "f"]  # the "loop" chain model repeats these forever


def user(text: str) -> pb.Message:
    return pb.Message(role="user", text=text)


@pytest.fixture(scope="module")
def server(chain_models):
    models = [{"name": "loop", "path": str(chain_models["loop"])},
              {"name": "hello", "path": str(chain_models["hello"])}]
    with running_server(models) as (srv, target):
        yield srv, target


@pytest.fixture
def stub(server, stub_for):
    return stub_for(server[1])


class Stream(threading.Thread):
    """A Chat stream read in the background: content, the done event or the error."""

    def __init__(self, stub: Any, request: pb.ChatRequest) -> None:
        super().__init__(daemon=True)
        self.stub, self.request = stub, request
        self.content, self.done, self.error = "", None, None
        self.tokens_seen = threading.Event()

    def run(self) -> None:
        try:
            for ev in self.stub.Chat(self.request, timeout=180):
                if ev.HasField("delta"):
                    self.content += ev.delta.text
                    if len(self.content.split()) >= 10:
                        self.tokens_seen.set()
                elif ev.HasField("done"):
                    self.done = ev.done
        except grpc.RpcError as e:
            self.error = e
        finally:
            self.tokens_seen.set()


def greedy_streams(stub: Any, n: int = 3, max_tokens: int = 1500) -> list[Stream]:
    streams = [Stream(stub, pb.ChatRequest(model="loop", messages=[user(f"go {i}")],
                                           max_tokens=max_tokens)) for i in range(n)]
    for s in streams:
        s.start()
    for s in streams:
        assert s.tokens_seen.wait(60), "a greedy stream never started"
    return streams


def assert_finished_whole(streams: list[Stream], max_tokens: int = 1500) -> None:
    for s in streams:
        s.join(180)
        assert s.error is None, s.error
        assert s.done is not None and s.done.finish_reason == "length"
        assert s.done.usage.completion_tokens == max_tokens
        words = s.content.split()  # resumed from what it had: nothing lost, nothing repeated
        assert words == [LOOP[i % 6] for i in range(len(words))]
        assert len(words) == max_tokens


def assert_sampled_requests_work(stub: Any) -> None:
    # unseeded first: a seed would rebuild MLX's random state and hide a broken one
    for sampling in (pb.Sampling(temperature=0.7), pb.Sampling(temperature=0.7, top_k=5),
                     pb.Sampling(temperature=0.7, min_p=0.05, seed=2)):
        events = list(stub.Chat(pb.ChatRequest(model="hello", messages=[user("hi")],
                                               max_tokens=8, sampling=sampling), timeout=60))
        assert events[-1].HasField("done")


def poison_on(call_number: int, *, when: Callable[[pb.ChatRequest], bool]
              ) -> Callable[..., Any]:
    """A wrapped InferenceServicer._job adding, to matching requests, a logits processor
    that raises on its `call_number`-th call, inside the batch's step."""
    original = InferenceServicer._job

    def _job(self: InferenceServicer, request: pb.ChatRequest, *args: Any) -> Any:
        job = original(self, request, *args)
        if when(request):
            calls = [0]

            def explode(tokens: Any, logits: Any) -> Any:
                calls[0] += 1
                if calls[0] >= call_number:
                    raise RuntimeError("injected failure in this request's processor")
                return logits

            job.logits_processors.append(explode)
        return job

    return _job


def test_a_failure_injected_mid_batch_fails_that_request_alone(server, stub, monkeypatch):
    monkeypatch.setattr(InferenceServicer, "_job",
                        poison_on(5, when=lambda r: r.request_id == "poison"))
    streams = greedy_streams(stub)
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Chat(pb.ChatRequest(model="loop", messages=[user("poison")], max_tokens=500,
                                      request_id="poison",
                                      sampling=pb.Sampling(temperature=0.7)), timeout=120))
    assert all(s.is_alive() for s in streams), "the poison must fail mid-batch"
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert "failed for this request" in err.value.details()
    assert "injected failure" in err.value.details()
    info = reasons.from_error(err.value)
    assert info is not None and info.reason == reasons.GENERATION_FAILED
    assert info.metadata[reasons.REQUEST_ID] == "poison"
    assert_finished_whole(streams)
    assert_sampled_requests_work(stub)


def test_min_p_5_past_the_edge_check_fails_alone_and_sampling_still_works(server, stub,
                                                                          monkeypatch):
    # The issue's own case, with validation switched off so that mlx-lm's compiled sampler
    # raises inside the step, as it did before the edge check existed.
    from inference_node import validate

    monkeypatch.setattr(validate, "check_sampling", lambda *a, **k: None)
    streams = greedy_streams(stub)
    for bad in (pb.Sampling(temperature=0.7, min_p=5.0),
                pb.Sampling(temperature=0.7, top_k=2**31 - 1)):
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Chat(pb.ChatRequest(model="loop", messages=[user("bad")], max_tokens=50,
                                          sampling=bad), timeout=120))
        assert all(s.is_alive() for s in streams), "the bad request must fail mid-batch"
        assert err.value.code() == grpc.StatusCode.INTERNAL
        assert "failed for this request" in err.value.details()
    assert_finished_whole(streams)
    assert_sampled_requests_work(stub)


def test_a_failure_no_request_owns_fails_the_batch_and_the_next_request_is_served(
        server, stub, monkeypatch):
    from mlx_lm.models import llama

    original = llama.Model.__call__
    armed = threading.Event()

    def forward(self: Any, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        if armed.is_set() and inputs.shape[0] >= 3:  # the batch's decode step, not a prefill
            armed.clear()
            raise RuntimeError("injected failure in the model's forward pass")
        return original(self, inputs, *args, **kwargs)

    monkeypatch.setattr(llama.Model, "__call__", forward)
    streams = greedy_streams(stub)
    armed.set()
    for s in streams:
        s.join(120)
        assert s.error is not None and s.error.code() == grpc.StatusCode.INTERNAL
        assert "every request in loop's batch" in s.error.details()
    assert not armed.is_set()
    monkeypatch.undo()
    again = greedy_streams(stub, n=2, max_tokens=100)
    assert_finished_whole(again, max_tokens=100)
    assert_sampled_requests_work(stub)


@pytest.mark.slow
def test_a_grammar_constrained_reply_survives_a_rebuilt_batch(smol_server, stub_for,
                                                             monkeypatch):
    """The survivor's grammar matcher resumes after the tokens it already emitted, so a
    JSON-schema reply interrupted by another request's failure is still valid JSON."""
    import jsonschema

    stub = stub_for(smol_server[1])
    schema = {"type": "object", "properties": {"colours": {
        "type": "array", "items": {"type": "string", "maxLength": 12},
        "minItems": 12, "maxItems": 12}}, "required": ["colours"]}
    monkeypatch.setattr(InferenceServicer, "_job",
                        poison_on(3, when=lambda r: r.request_id == "poison"))
    survivor = Stream(stub, pb.ChatRequest(
        model="smollm2", max_tokens=300,
        messages=[user("List twelve colours as JSON.")],
        response_format=pb.ResponseFormat(type=pb.ResponseFormat.JSON_SCHEMA,
                                          schema_json=json.dumps(schema))))
    survivor.start()
    deadline = time.monotonic() + 120
    while not survivor.content and survivor.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert survivor.content, "the constrained reply never started"
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Chat(pb.ChatRequest(model="smollm2", messages=[user("x")], max_tokens=20,
                                      request_id="poison"), timeout=120))
    assert err.value.code() == grpc.StatusCode.INTERNAL
    survivor.join(240)
    assert survivor.error is None, survivor.error
    assert survivor.done is not None
    jsonschema.validate(json.loads(survivor.content), schema)
