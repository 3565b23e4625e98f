"""The tokenizer and chat template, built from the GGUF's own metadata.

Byte-level BPE (`tokenizer.ggml.model == "gpt2"`: merges + the pre-tokenizer regex named by
`tokenizer.ggml.pre`, e.g. Qwen2's, which splits digits one by one) or SentencePiece BPE
("llama"), as a `tokenizers.Tokenizer`; tokenizer_config.json carries the chat template
(`tokenizer.chat_template`, e.g. Qwen's, with its default system prompt and tool section), so
mlx-lm recognises the template's tool-call format when it loads the folder.
"""

from __future__ import annotations

from typing import Any

from inference_node.gguf.reader import GGUFError

# Pre-tokenizer regexes of the BPE families we handle, keyed by `tokenizer.ggml.pre`.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")
PRE_TOKENIZERS = {
    "default": "gpt2", "gpt2": "gpt2", "gpt-2": "gpt2",
    "smollm": "digits+gpt2", "starcoder": "digits+gpt2", "refact": "digits+gpt2",
    "llama3": "llama3", "llama-bpe": "llama3", "llama-v3": "llama3", "smaug-bpe": "llama3",
    "qwen2": "qwen2", "deepseek-r1-qwen": "qwen2",
}
TOKEN_TYPE_NORMAL, TOKEN_TYPE_UNKNOWN, TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED = 1, 2, 3, 4


def _adds_bos(meta: dict[str, Any]) -> bool:
    # llama.cpp adds BOS by default for SentencePiece vocabularies, not for byte-level BPE.
    is_spm = meta.get("tokenizer.ggml.model") == "llama"
    return bool(meta.get("tokenizer.ggml.add_bos_token", is_spm))


def build_tokenizer(meta: dict[str, Any]) -> Any:
    """A `tokenizers.Tokenizer` equivalent to the GGUF's vocabulary (byte-level BPE or SPM)."""
    from tokenizers import AddedToken, processors

    kind = meta.get("tokenizer.ggml.model")
    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    vocab: dict[str, int] = {}
    for i, tok in enumerate(tokens):
        vocab.setdefault(tok, i)
    if kind == "gpt2":
        tokenizer = _byte_level_bpe(meta, vocab)
    elif kind == "llama":
        tokenizer = _sentencepiece_bpe(meta, vocab)
    else:
        raise GGUFError(
            f"tokenizer model {kind!r} is not supported; import-gguf builds byte-level BPE "
            "('gpt2') and SentencePiece BPE ('llama') tokenizers"
        )
    types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    named = {int(meta[f"tokenizer.ggml.{k}_token_id"]) for k in ("bos", "eos", "padding", "eot")
             if f"tokenizer.ggml.{k}_token_id" in meta}
    added = [AddedToken(tokens[i], special=t != TOKEN_TYPE_USER_DEFINED or i in named,
                        normalized=False)
             for i, t in enumerate(types)
             if t in (TOKEN_TYPE_UNKNOWN, TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED)
             or i in named]
    tokenizer.add_tokens(added)
    if _adds_bos(meta) and "tokenizer.ggml.bos_token_id" in meta:
        bos_id = int(meta["tokenizer.ggml.bos_token_id"])
        bos = tokens[bos_id]
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
            special_tokens=[(bos, bos_id)])
    return tokenizer


def _byte_level_bpe(meta: dict[str, Any], vocab: dict[str, int]) -> Any:
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    pre = meta.get("tokenizer.ggml.pre", "default")
    family = PRE_TOKENIZERS.get(pre)
    if family is None:
        raise GGUFError(f"pre-tokenizer {pre!r} is not supported; import-gguf knows "
                        f"{', '.join(sorted(PRE_TOKENIZERS))}")
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
    split_first = family in ("llama3", "qwen2")
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=split_first))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=not split_first)
    if family == "gpt2":
        tokenizer.pre_tokenizer = byte_level
    elif family == "digits+gpt2":
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        split = LLAMA3_SPLIT if family == "llama3" else QWEN2_SPLIT
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(split), behavior="isolated"), byte_level])
    if family == "qwen2":  # Qwen's own tokenizer composes Unicode first (NFC), as transformers'
        tokenizer.normalizer = normalizers.NFC()  # Qwen2Tokenizer does when it loads a folder
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def _sentencepiece_bpe(meta: dict[str, Any], vocab: dict[str, int]) -> Any:
    """SentencePiece BPE as tokenizers BPE: merges ranked by the merged piece's score."""
    from tokenizers import Tokenizer, decoders, models, normalizers

    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    scores = meta.get("tokenizer.ggml.scores") or [-float(i) for i in range(len(tokens))]
    types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    candidates = []
    for i, piece in enumerate(tokens):
        if types[i] != TOKEN_TYPE_NORMAL or len(piece) < 2:
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                candidates.append((-scores[i], i, vocab[left], vocab[right], left, right))
    merges = [(left, right) for *_, left, right in sorted(candidates)]
    unk_id = int(meta.get("tokenizer.ggml.unknown_token_id", 0))
    bpe = models.BPE(vocab=vocab, merges=merges, unk_token=tokens[unk_id], fuse_unk=True,
                     byte_fallback=True)
    tokenizer = Tokenizer(bpe)
    steps: list[Any] = [normalizers.Replace(" ", "\u2581")]
    decode = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    if meta.get("tokenizer.ggml.add_space_prefix", True):
        steps.insert(0, normalizers.Prepend("\u2581"))
        decode.append(decoders.Strip(" ", 1, 0))
    tokenizer.normalizer = normalizers.Sequence(steps)
    tokenizer.decoder = decoders.Sequence(decode)
    return tokenizer


def tokenizer_files(meta: dict[str, Any]) -> dict[str, dict]:
    """tokenizer_config.json and special_tokens_map.json contents."""
    tokens = meta["tokenizer.ggml.tokens"]
    arch = meta.get("general.architecture", "llama")
    special = {}
    for key, name in (("bos", "bos_token"), ("eos", "eos_token"), ("padding", "pad_token"),
                      ("unknown", "unk_token")):
        if (i := meta.get(f"tokenizer.ggml.{key}_token_id")) is not None and int(i) < len(tokens):
            special[name] = tokens[int(i)]
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": _adds_bos(meta),
        "add_eos_token": bool(meta.get("tokenizer.ggml.add_eos_token", False)),
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(meta.get(f"{arch}.context_length", 4096)),
        **special,
    }
    if template := meta.get("tokenizer.chat_template"):
        config["chat_template"] = template
    return {"tokenizer_config.json": config, "special_tokens_map.json": special}
