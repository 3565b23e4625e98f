"""Tiny real MLX models built in a temp folder, for tests of the real engine.

`build_chain_model` makes a llama whose greedy output is a chosen chain of words. The token
embedding is one-hot, attention and MLP write nothing back to the residual stream, and the
output head maps each token to its successor, so after the prompt's last token the model emits
exactly the chain. The weights, the loader, the batch generator, the detokenizer and the text
state machine are all the real ones; only the numbers in the weights are chosen.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlx.core as mx
from mlx.utils import tree_flatten

EOS = "</s>"
GEN = "<|assistant|>"

# Hermes-style template: tools listed, assistant tool calls as <tool_call> JSON </tool_call>.
# The literal `tool_call.name` makes mlx-lm pick its json_tools parser.
TEMPLATE = (
    "{% if tools %}<tools> {% for t in tools %}{{ t.function.name }} {% endfor %}</tools> "
    "{% endif %}"
    "{% for m in messages %}<|{{ m.role }}|> {{ m.content }} "
    "{% if m.tool_calls %}{% for tc in m.tool_calls %}{% set tool_call = tc.function %}"
    "<tool_call> {{ tool_call.name }} </tool_call> {% endfor %}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}" + GEN + "{% endif %}"
)

BASE_WORDS = [
    EOS, "<unk>", GEN, "<|user|>", "<|system|>", "<|tool|>", "<tools>", "</tools>",
    "<think>", "</think>", "<tool_call>", "</tool_call>",
    "hello", "world", "the", "answer", "is", "42", "a", "b", "c", "d", "e", "f", "hmm", "let",
    "me", "think", "ok", "done", "what", "weather", "in", "Paris", "sunny", "get_weather",
]
# Word chunks of `{"name": "get_weather", "arguments": {"city": "Paris"}}` split on spaces.
TOOL_CALL_WORDS = ['{"name":', '"get_weather",', '"arguments":', '{"city":', '"Paris"}}']


RANDOM_LLAMA = {"model_type": "llama", "hidden_size": 256, "num_hidden_layers": 4,
                "intermediate_size": 768, "num_attention_heads": 4, "num_key_value_heads": 2,
                "rms_norm_eps": 1e-5, "vocab_size": 4096, "tie_word_embeddings": False,
                "torch_dtype": "float32"}


def write_random_llama(path: Path, **config: Any) -> Path:
    """A llama with random weights as an MLX folder (weights and config.json, no tokenizer);
    `config` overrides RANDOM_LLAMA. For sizing and loading; its output is noise."""
    from mlx_lm.models.llama import Model, ModelArgs

    config = {**RANDOM_LLAMA, **config}
    model = Model(ModelArgs.from_dict(config))
    weights = dict(tree_flatten(model.parameters()))
    mx.eval(weights)
    path.mkdir(parents=True)
    mx.save_safetensors(str(path / "model.safetensors"), weights)
    (path / "config.json").write_text(json.dumps(config))
    return path


def build_chain_model(
    path: Path,
    chain: list[str],
    *,
    hidden: int = 128,
    layers: int = 2,
    context: int = 2048,
    extra_words: list[str] | None = None,
    with_tools_template: bool = True,
) -> Path:
    """Write an MLX model folder whose greedy continuation after GEN is `chain`.

    `chain` may end in EOS (the reply stops) or loop back to an earlier word (it never stops).
    Every word in the chain, except a loop's return, must be distinct.
    """
    from mlx_lm.models import llama

    words = list(dict.fromkeys(BASE_WORDS + TOOL_CALL_WORDS + (extra_words or [])))
    vocab = {w: i for i, w in enumerate(words)}
    if len(vocab) > hidden:
        raise ValueError(f"{len(vocab)} words need hidden >= {len(vocab)}")
    path.mkdir(parents=True, exist_ok=True)
    _write_tokenizer(path, vocab, context, with_tools_template)

    args = llama.ModelArgs(
        model_type="llama", hidden_size=hidden, num_hidden_layers=layers,
        intermediate_size=hidden * 2, num_attention_heads=4, num_key_value_heads=2,
        rms_norm_eps=1e-5, vocab_size=len(vocab), tie_word_embeddings=False,
        max_position_embeddings=context,
    )
    model = llama.Model(args)
    weights = dict(tree_flatten(model.parameters()))
    embed = mx.zeros((len(vocab), hidden))
    embed[mx.arange(len(vocab)), mx.arange(len(vocab))] = 1.0
    head = mx.zeros((len(vocab), hidden))
    previous = GEN
    for word in chain:
        head[vocab[word], vocab[previous]] = 50.0  # previous -> word wins by a wide margin
        previous = word
    for name in weights:
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            weights[name] = mx.zeros_like(weights[name])
    weights["model.embed_tokens.weight"] = embed
    weights["lm_head.weight"] = head
    mx.save_safetensors(str(path / "model.safetensors"), weights)
    config = {
        "model_type": "llama", "hidden_size": hidden, "num_hidden_layers": layers,
        "intermediate_size": hidden * 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5, "vocab_size": len(vocab), "tie_word_embeddings": False,
        "max_position_embeddings": context, "eos_token_id": vocab[EOS], "torch_dtype": "float32",
    }
    (path / "config.json").write_text(json.dumps(config, indent=1))
    return path


def _write_tokenizer(path: Path, vocab: dict[str, int], context: int, tools: bool) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(path / "tokenizer.json"))
    template = TEMPLATE if tools else TEMPLATE.replace("tool_call.name", "tc.function.name")
    (path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "chat_template": template,
        "eos_token": EOS,
        "unk_token": "<unk>",
        "model_max_length": context,
    }))


def write_random_chat_model(path: Path, model_type: str = "llama", *, seed: int = 0,
                            extra_words: int = 200, **config: Any) -> Path:
    """A random-weight `model_type` (llama, qwen2, ...) with a word-level tokenizer and a chat
    template: it talks nonsense, but real nonsense through every real part, so two ways of
    running it (one process, or split across ranks) can be compared word for word."""
    import importlib

    words = list(dict.fromkeys(BASE_WORDS + TOOL_CALL_WORDS
                               + [f"w{i}" for i in range(extra_words)]))
    vocab = {w: i for i, w in enumerate(words)}
    context = int(config.pop("max_position_embeddings", 2048))
    config = {**RANDOM_LLAMA, "vocab_size": len(vocab), "max_position_embeddings": context,
              "eos_token_id": vocab[EOS], "model_type": model_type, **config}
    arch = importlib.import_module(f"mlx_lm.models.{model_type}")
    mx.random.seed(seed)
    model = arch.Model(arch.ModelArgs.from_dict(config))
    weights = dict(tree_flatten(model.parameters()))
    mx.eval(weights)
    path.mkdir(parents=True)
    mx.save_safetensors(str(path / "model.safetensors"), weights)
    (path / "config.json").write_text(json.dumps(config))
    _write_tokenizer(path, vocab, context, True)
    return path
