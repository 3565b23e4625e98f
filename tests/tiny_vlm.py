"""A tiny random-weight Qwen3-VL model folder that `mlx_vlm.load` accepts offline.

The architecture, loader, image processor (mlx-vlm's numpy port of Qwen's), chat template
handling and generation are all the real ones; only the sizes are shrunk (one vision block, one
text layer, a few hundred KB of weights) and the vocabulary is a word list with Qwen's special
tokens. The output head's rows for the special tokens are zero, so the random model almost
never stops or emits markers on its own and a reply runs to `max_tokens` in plain words.
`ends_at_once=True` zeroes the final norm instead: every logit is 0, greedy picks token 0,
which is an end token, so the reply stops on its first step.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

SPECIAL = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<unk>",
]
WORDS = [
    "the", "a", "page", "header", "footer", "button", "text", "image", "blue", "white", "red",
    "green", "black", "grey", "left", "right", "top", "bottom", "column", "row", "menu", "logo",
    "title", "link", "card", "grid", "cut", "off", "overflow", "edge", "shows", "with", "and",
    "on", "in", "of", "is", "large", "small", "bold", "navigation", "form", "input", "search",
    "system", "user", "assistant", "describe", "screenshot", "focus",
]
HIDDEN = 64
PATCH = 16
MERGE = 2

# Qwen's template shape: content is a string or a list of {"type": "image"|"text"} parts.
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n"
    "{% if m.content is string %}{{ m.content }}{% else %}{% for c in m.content %}"
    "{% if c.type == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c.type == 'text' %}{{ c.text }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_vlm(path: Path, *, context: int = 8192, max_pixels: int = 16_777_216,
                   seed: int = 0, ends_at_once: bool = False) -> Path:
    """Write a Qwen3-VL model folder (weights, config, processor, tokenizer) into `path`."""
    from mlx_vlm.models.qwen3_vl import Model, ModelConfig

    vocab = {w: i for i, w in enumerate(SPECIAL + WORDS)}
    path.mkdir(parents=True, exist_ok=True)
    config = {
        "model_type": "qwen3_vl",
        "architectures": ["Qwen3VLForConditionalGeneration"],
        "image_token_id": vocab["<|image_pad|>"],
        "video_token_id": vocab["<|video_pad|>"],
        "vision_start_token_id": vocab["<|vision_start|>"],
        "vision_end_token_id": vocab["<|vision_end|>"],
        "vision_token_id": vocab["<|vision_pad|>"],
        "eos_token_id": [vocab["<|im_end|>"], vocab["<|endoftext|>"]],
        "vocab_size": len(vocab),
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "text_config": {
            "model_type": "qwen3_vl_text", "num_hidden_layers": 1, "hidden_size": HIDDEN,
            "intermediate_size": HIDDEN * 2, "num_attention_heads": 2,
            "num_key_value_heads": 1, "head_dim": 32, "rms_norm_eps": 1e-6,
            "vocab_size": len(vocab), "rope_theta": 5_000_000.0,
            "max_position_embeddings": context, "tie_word_embeddings": False,
            "rope_scaling": {"rope_type": "default", "mrope_section": [6, 5, 5],
                             "mrope_interleaved": True},
            "torch_dtype": "float32",
        },
        "vision_config": {
            "model_type": "qwen3_vl", "depth": 1, "hidden_size": 32, "intermediate_size": 64,
            "out_hidden_size": HIDDEN, "num_heads": 2, "patch_size": PATCH,
            "spatial_patch_size": PATCH, "spatial_merge_size": MERGE, "temporal_patch_size": 2,
            "num_position_embeddings": 64, "in_channels": 3, "deepstack_visual_indexes": [],
        },
    }
    mx.random.seed(seed)
    model = Model(ModelConfig.from_dict(config))
    weights = dict(tree_flatten(model.parameters()))
    head = "language_model.lm_head.weight"
    weights[head][: len(SPECIAL)] = 0.0  # special tokens score 0, words up to about ±1
    if ends_at_once:
        norm = "language_model.model.norm.weight"
        weights[norm] = mx.zeros_like(weights[norm])
    mx.save_safetensors(str(path / "model.safetensors"), weights)
    (path / "config.json").write_text(json.dumps(config, indent=1))
    _write_processor(path, vocab, context, max_pixels)
    return path


def _write_processor(path: Path, vocab: dict[str, int], context: int, max_pixels: int) -> None:
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL])
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "chat_template": TEMPLATE,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": "<unk>",
        "model_max_length": context,
    }))
    (path / "chat_template.json").write_text(json.dumps({"chat_template": TEMPLATE}))
    image = {
        "image_processor_type": "Qwen2VLImageProcessorFast",
        "processor_class": "Qwen3VLProcessor",
        "patch_size": PATCH, "temporal_patch_size": 2, "merge_size": MERGE,
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
        "size": {"shortest_edge": 64 * 64, "longest_edge": max_pixels},
    }
    (path / "preprocessor_config.json").write_text(json.dumps(image, indent=1))
    (path / "video_preprocessor_config.json").write_text(json.dumps(
        {**image, "video_processor_type": "Qwen3VLVideoProcessor"}, indent=1))
    (path / "processor_config.json").write_text(json.dumps(
        {"processor_class": "Qwen3VLProcessor"}, indent=1))
