"""Speculative decoding with the real MLX engine: the draft changes the speed, never the tokens.

Random-weight llamas with one word-level tokenizer (tiny_models.py): every word is one token, so
equal replies are equal token sequences. A draft with the served model's own weights has every
proposal kept; one with other weights has most of them refused, which exercises the rollback.
Prompt lookup (no draft model: proposals from the request's own tokens) is checked the same
way, and with SmolLM2 copying a text it was given, where most of its proposals are kept.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import running_server
from tiny_models import write_random_chat_model

from inference_node.api import pb

PROMPTS = ["hello w1 w2", "what is the weather in Paris", "w9 w8 w7 w6 w5 w4 w3 w2 w1 a b c"]
# An earlier turn: the prompt's last token (the assistant's header) came before, so prompt lookup
# proposes from the first step on.
TURNS = [pb.Message(role="user", text=PROMPTS[0]), pb.Message(role="assistant", text="a b c"),
         pb.Message(role="user", text=PROMPTS[0])]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("spec")
    return {"target": write_random_chat_model(root / "target", "llama", seed=4),
            "other": write_random_chat_model(root / "other", "llama", seed=5)}


@pytest.fixture(scope="module")
def server(dirs: dict[str, Path]) -> Iterator[tuple[Any, str]]:
    target, other = str(dirs["target"]), str(dirs["other"])
    models = [
        {"name": "plain", "path": target, "prompt_lookup": False},
        {"name": "self-drafted", "path": target, "draft": "twin"},
        {"name": "other-drafted", "path": target, "draft": "other"},
        {"name": "twin", "path": target},
        {"name": "other", "path": other},
        {"name": "looked-up", "path": target, "prompt_lookup": True},
        {"name": "by-default", "path": target},  # a coder model with no draft: lookup is on
    ]
    with running_server(models, engine={"draft_tokens": 3}) as s:
        yield s


def ask(stub: Any, model: str, text: str | list[Any], max_tokens: int = 24,
        **request: Any) -> tuple[str, pb.Done]:
    messages = [pb.Message(role="user", text=text)] if isinstance(text, str) else text
    out, done = "", None
    for ev in stub.Chat(pb.ChatRequest(model=model, messages=messages, max_tokens=max_tokens,
                                       **request), timeout=180):
        kind = ev.WhichOneof("event")
        if kind == "delta":
            out += ev.delta.text
        elif kind == "done":
            done = ev.done
    assert done is not None
    return out, done


def one_turn(text: str) -> list[Any]:
    return [pb.Message(role="user", text=text)]


def two_streams(stub: Any, first: tuple[str, list[Any], int], second: tuple[str, list[Any], int]
                ) -> list[tuple[str, pb.Done]]:
    """(model, messages, max_tokens) each: the first streamed in a thread, the second asked
    once the first has its first token (it joins while the first decodes); both replies."""
    results: dict[int, tuple[str, pb.Done]] = {}
    first_token = threading.Event()

    def stream() -> None:
        model, messages, max_tokens = first
        out, done = "", None
        request = pb.ChatRequest(model=model, max_tokens=max_tokens, messages=messages)
        for ev in stub.Chat(request, timeout=180):
            kind = ev.WhichOneof("event")
            if kind == "delta":
                out += ev.delta.text
                first_token.set()
            elif kind == "done":
                done = ev.done
        first_token.set()
        assert done is not None
        results[0] = (out, done)

    t = threading.Thread(target=stream)
    t.start()
    assert first_token.wait(120)
    model, messages, max_tokens = second
    results[1] = ask(stub, model, messages, max_tokens=max_tokens)
    t.join(180)
    return [results[0], results[1]]


def test_greedy_output_with_a_draft_is_token_for_token_the_output_without(
        server: tuple[Any, str], stub_for: Any) -> None:
    stub = stub_for(server[1])
    for text in PROMPTS:
        plain, plain_done = ask(stub, "plain", text)
        assert len(plain.split()) >= 5, plain
        assert plain_done.usage.draft_tokens == plain_done.usage.accepted_draft_tokens == 0
        for model in ("self-drafted", "other-drafted", "looked-up", "by-default"):
            reply, done = ask(stub, model, text)
            assert reply == plain, (model, text)
            assert done.usage.completion_tokens == plain_done.usage.completion_tokens
            assert done.usage.draft_tokens > 0, (model, text)  # the lookup's: it repeats itself
            assert 0 <= done.usage.accepted_draft_tokens <= done.usage.draft_tokens


def test_a_draft_with_the_models_own_weights_has_its_proposals_kept(
        server: tuple[Any, str], stub_for: Any) -> None:
    _, done = ask(stub_for(server[1]), "self-drafted", PROMPTS[0], max_tokens=32)
    u = done.usage
    # the last round may be cut short by max_tokens; every other proposal is the model's own
    assert u.accepted_draft_tokens >= u.draft_tokens - 3 > 0
    # each pass of the model emits its kept proposals plus one token of its own
    assert u.completion_tokens >= u.accepted_draft_tokens


@pytest.mark.parametrize("model", ["other-drafted", "looked-up"])
def test_a_second_stream_moves_the_first_into_the_batch_with_the_same_tokens(
        model: str, server: tuple[Any, str], stub_for: Any,
        caplog: pytest.LogCaptureFixture) -> None:
    stub = stub_for(server[1])
    long = 400  # the first is still decoding when the second joins
    expected = [ask(stub, "plain", TURNS, max_tokens=long)[0],
                ask(stub, "plain", PROMPTS[1], max_tokens=48)[0]]
    with caplog.at_level(logging.INFO, logger="inference_node.engine"):
        results = two_streams(stub, (model, TURNS, long), (model, one_turn(PROMPTS[1]), 48))
    assert [results[0][0], results[1][0]] == expected
    assert results[0][1].usage.draft_tokens > 0  # it began speculatively
    assert results[0][1].usage.completion_tokens == long
    assert any("decodes in the batch from now on" in r.getMessage() for r in caplog.records)


def test_a_stream_left_alone_in_the_batch_goes_back_to_prompt_lookup_with_the_same_tokens(
        server: tuple[Any, str], stub_for: Any, caplog: pytest.LogCaptureFixture) -> None:
    """Two agents at once: the second request joins the first's batch, and once the first
    has finished the second decodes alone with prompt lookup, from the batch's KV of it, to
    the same tokens. It never began speculatively, so every proposal it was counted was made
    after the batch let it go."""
    stub = stub_for(server[1])
    short, long = 64, 400
    expected = [ask(stub, "plain", PROMPTS[1], max_tokens=short)[0],
                ask(stub, "plain", TURNS, max_tokens=long)[0]]
    # the first begins alone, speculatively, and goes to the batch when the second joins
    with caplog.at_level(logging.INFO, logger="inference_node.engine"):
        results = two_streams(stub, ("looked-up", one_turn(PROMPTS[1]), short),
                              ("looked-up", TURNS, long))
    messages = [r.getMessage() for r in caplog.records]
    assert any("decodes in the batch from now on" in m for m in messages), messages
    assert [results[0][0], results[1][0]] == expected
    alone = [m for m in messages if "decodes alone with prompt lookup from now on" in m]
    assert len(alone) == 1, alone  # the second, once the first had finished
    assert results[1][1].usage.completion_tokens == long
    assert results[1][1].usage.draft_tokens > 0


def test_a_model_that_drafts_for_itself_is_refused_at_config() -> None:
    from inference_node.config import ConfigError, InferenceConfig, ModelEntry, validate

    cfg = InferenceConfig(models=[ModelEntry(name="a", path="/x", draft="a")])
    with pytest.raises(ConfigError, match="draft names the model itself"):
        validate(cfg)
    cfg = InferenceConfig(models=[ModelEntry(name="a", path="/x", draft="b")])
    with pytest.raises(ConfigError, match="not in \\[\\[models\\]\\]"):
        validate(cfg)


def test_prompt_lookup_is_refused_beside_a_draft_for_a_vision_model_or_across_ranks() -> None:
    from inference_node.config import (
        ConfigError,
        DistributedConfig,
        EngineConfig,
        InferenceConfig,
        ModelEntry,
        validate,
    )

    both = [ModelEntry(name="a", path="/x", draft="b", prompt_lookup=True),
            ModelEntry(name="b", path="/y")]
    with pytest.raises(ConfigError, match="both draft and prompt_lookup; .* keep one"):
        validate(InferenceConfig(models=both))
    vision = [ModelEntry(name="v", path="/x", role="vision", prompt_lookup=True)]
    with pytest.raises(ConfigError, match="prompt_lookup: speculative decoding is for coder"):
        validate(InferenceConfig(models=vision))
    split = InferenceConfig(models=[ModelEntry(name="a", path="/x", prompt_lookup=True)],
                            distributed=DistributedConfig(ranks=2))
    with pytest.raises(ConfigError, match="prompt_lookup: .*not available .*across ranks"):
        validate(split)
    many = InferenceConfig(models=[ModelEntry(name="a", path="/x", prompt_lookup=True)],
                           engine=EngineConfig(lookup_tokens=17))
    with pytest.raises(ConfigError, match="engine.lookup_tokens must be 1 to 16, not 17"):
        validate(many)


def test_prompt_lookup_is_on_unless_set_for_a_lone_coder_model_only() -> None:
    from inference_node.config import ModelEntry

    assert ModelEntry(name="a").looks_up(distributed=False)
    assert not ModelEntry(name="a", prompt_lookup=False).looks_up(distributed=False)
    assert not ModelEntry(name="a", draft="b").looks_up(distributed=False)  # the draft proposes
    assert not ModelEntry(name="v", role="vision").looks_up(distributed=False)
    assert not ModelEntry(name="a").looks_up(distributed=True)  # unset: no error, just off
    assert ModelEntry(name="a", prompt_lookup=True).looks_up(distributed=False)


def test_prompt_lookup_proposes_fewer_after_a_miss_and_more_while_all_are_kept() -> None:
    from inference_node.speculative import next_span

    assert next_span(5, kept=0, proposed=5, k=5) == 1  # wrong from the first: one at a time
    assert next_span(5, kept=3, proposed=5, k=5) == 4
    assert next_span(1, kept=1, proposed=1, k=5) == 3  # all kept: wider again
    assert next_span(3, kept=3, proposed=3, k=5) == 5
    assert next_span(5, kept=5, proposed=5, k=5) == 5  # never past engine.lookup_tokens
    assert next_span(5, kept=2, proposed=2, k=5) == 5  # the match ran out, none was wrong


def test_prompt_lookup_proposes_what_followed_the_longest_earlier_match() -> None:
    from inference_node.speculative import Lookup

    tokens = [1, 2, 3, 4, 5, 9, 2, 3, 7, 8, 0, 3]
    # the last token (3) came twice before: the latest one is followed by 7 8 0 3
    assert Lookup().propose(tokens, 3) == [7, 8, 0]
    # "9 2 3" came once before, followed by 7 8; the last 3 alone by 9 2: the longest wins
    assert Lookup().propose([*tokens, 9, 2, 3], 2) == [7, 8]  # not 9 2, after the last 3
    assert Lookup().propose([1, 2, 3], 4) == []  # 3 never came before: nothing to propose
    grown = Lookup()  # one lookup over a growing request answers as a fresh one each time
    for end in range(1, len(tokens) + 1):
        assert grown.propose(tokens[:end], 4) == Lookup().propose(tokens[:end], 4), end


def test_greedy_verification_takes_the_argmax_without_normalizing(monkeypatch) -> None:
    """A pass's log-softmax over the vocabulary costs more than its argmax on a CPU; greedy
    never needs it. A sampler that does still gets normalized log-probabilities."""
    from types import SimpleNamespace

    import mlx.core as mx

    from inference_node import mlx_compat
    from inference_node.speculative import Speculation

    logits = mx.array([[0.5, 3.0, -1.0, 2.9], [7.0, 1.0, 6.0, 0.0]])
    normalized: list[mx.array] = []
    logsumexp = mx.logsumexp

    def spy(x: mx.array, *args: Any, **kwargs: Any) -> mx.array:
        normalized.append(x)
        return logsumexp(x, *args, **kwargs)

    monkeypatch.setattr(mx, "logsumexp", spy)
    greedy = SimpleNamespace(sampler=mlx_compat.greedy_sampler())
    assert Speculation._sample(greedy, logits).tolist() == [1, 0]  # type: ignore[arg-type]
    assert normalized == []
    given: list[mx.array] = []
    sampled = SimpleNamespace(sampler=lambda lp: given.append(lp) or mx.argmax(lp, axis=-1))
    assert Speculation._sample(sampled, logits).tolist() == [1, 0]  # type: ignore[arg-type]
    assert len(normalized) == 1
    assert mx.allclose(mx.exp(given[0]).sum(axis=-1), mx.array([1.0, 1.0])).item()


def test_grammar_constrained_output_with_a_draft_equals_without(smollm2_dir: Path,
                                                                 stub_for: Any) -> None:
    path = str(smollm2_dir)
    models = [{"name": "plain", "path": path},
              {"name": "drafted", "path": path, "draft": "twin"},
              {"name": "twin", "path": path},
              {"name": "looked-up", "path": path, "prompt_lookup": True}]
    schema = ('{"type": "object", "properties": {"name": {"type": "string"}, '
              '"age": {"type": "integer"}}, "required": ["name", "age"]}')
    fmt = pb.ResponseFormat(type=pb.ResponseFormat.JSON_SCHEMA, schema_json=schema, name="p")
    with running_server(models) as (_, target):
        stub = stub_for(target)
        text = "Give me a person as JSON."
        plain, _ = ask(stub, "plain", text, max_tokens=40, response_format=fmt)
        drafted, done = ask(stub, "drafted", text, max_tokens=40, response_format=fmt)
        looked_up, _ = ask(stub, "looked-up", text, max_tokens=40, response_format=fmt)
        # a model writing back a file it was shown: most of what it writes is proposed, and kept
        source = "\n".join(f"def f{i}(x):\n    return x * {i} + {i * i}\n" for i in range(6))
        copy = f"Write this file back exactly as it is:\n\n```python\n{source}```"
        copied, plain_done = ask(stub, "plain", copy, max_tokens=120)
        copied_again, copy_done = ask(stub, "looked-up", copy, max_tokens=120)
    assert plain.startswith("{"), plain
    assert drafted == plain and looked_up == plain
    assert done.usage.accepted_draft_tokens > 0
    assert "return x * 3 + 9" in copied, copied  # it did copy
    assert copied_again == copied
    u = copy_done.usage
    assert u.completion_tokens == plain_done.usage.completion_tokens
    # each pass of the model kept several of the tokens the prompt proposed
    assert u.accepted_draft_tokens > u.completion_tokens / 2, (u.accepted_draft_tokens,
                                                                u.completion_tokens)


def test_a_draft_whose_kv_does_not_fit_leaves_the_request_to_the_batch(
        dirs: dict[str, Path], stub_for: Any, caplog: pytest.LogCaptureFixture) -> None:
    from inference_node.admission import kv_tokens

    models = [{"name": "drafted", "path": str(dirs["target"]), "draft": "other"},
              {"name": "other", "path": str(dirs["other"])}]
    with running_server(models, engine={"prompt_cache_mb": 0.0}) as (srv, target):
        stub = stub_for(target)
        first, warm = ask(stub, "drafted", PROMPTS[2], max_tokens=64)  # loads both
        assert warm.usage.draft_tokens > 0
        lm = srv.engine.loaded["drafted"]
        one_kv = (kv_tokens(warm.usage.prompt_tokens + 64) * lm.kv_per_token
                  + lm.kv_fixed_bytes)
        # room beside the weights for the request's own KV, not for its draft's as well
        srv.admission.budget_bytes = srv.admission._committed() + one_kv + one_kv // 2
        with caplog.at_level(logging.INFO, logger="inference_node.engine"):
            again, done = ask(stub, "drafted", PROMPTS[2], max_tokens=64)
    assert done.usage.draft_tokens == 0
    assert any("the draft's KV" in r.getMessage() and "does not fit" in r.getMessage()
               for r in caplog.records)
    assert again == first


def test_a_model_whose_kv_cannot_roll_back_decodes_without_lookup_and_says_so(
        dirs: dict[str, Path], stub_for: Any, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """As a model with sliding windows or recurrent state would: a warning where the config
    asked for prompt lookup, a line of information where it was only the default."""
    from inference_node import speculative

    monkeypatch.setattr(speculative, "rolls_back", lambda lm: False)
    models = [{"name": "asked", "path": str(dirs["target"]), "prompt_lookup": True},
              {"name": "by-default", "path": str(dirs["target"])}]
    with running_server(models) as (srv, target), \
            caplog.at_level(logging.INFO, logger="inference_node.engine"):
        stub = stub_for(target)
        for name in ("asked", "by-default"):
            _, done = ask(stub, name, PROMPTS[0])
            assert done.usage.draft_tokens == 0 and not srv.engine.loaded[name].lookup
    said = {r.getMessage().split()[0]: r.levelno for r in caplog.records
            if "decodes without prompt lookup" in r.getMessage()}
    assert said == {"asked": logging.WARNING, "by-default": logging.INFO}
