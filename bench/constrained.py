"""Constrained decoding benchmark: what the grammar mask costs in decode speed.

    .venv/bin/python -m bench.constrained [--quick]      # JSON on stdout, progress on stderr

Same model (SmolLM2-135M-Instruct, dequantized as the engine loads it: bench.servers.load_model),
same prompt, greedy: generation with a response_format JSON schema against generation without one,
interleaved (A B, B A, ...) after a warm-up. Decode tokens/s is mlx-lm's own figure (tokens
after the first / time since the first). Also: the processor's cost per token replayed alone
(consume the token, compute the mask, apply it), without the overlap with the forward pass.
Target: constrained decode >= 0.90 x unconstrained.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.stats import interleave, median, ratio, smoke, summary
from inference_node import blas

SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "characters": {"type": "array", "items": {"type": "string"}},
        # long enough that both sides run to max_tokens: equal lengths, equal attention cost
        "story": {"type": "string", "minLength": 1000},
    },
    "required": ["title", "characters", "story"],
}
PROMPT = "Tell me a long story about a dragon who learns to code, as JSON."


def log(msg: str) -> None:
    print(f"bench.constrained: {msg}", file=sys.stderr, flush=True)


def run(quick: bool) -> dict[str, Any]:
    from mlx_lm import stream_generate

    from bench.servers import load_model, prepare_model
    from inference_node.constrained import compile_response_format

    repeats, max_tokens = (1, 8) if smoke() else (5, 64) if quick else (7, 160)
    with tempfile.TemporaryDirectory() as tmp:
        path, model_info = prepare_model(Path(tmp), tiny=False)  # llguidance needs a real one
        model, tokenizer = load_model(path)
        t0 = time.perf_counter()
        compile_response_format(tokenizer, SCHEMA, False)  # builds the llguidance tokenizer
        first_compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        constraint = compile_response_format(tokenizer, SCHEMA, False)
        compile_ms = (time.perf_counter() - t0) * 1e3
        system = "You are a helpful assistant." + constraint.instruction
        prompt = tokenizer.apply_chat_template(
            [{"role": "system", "content": system}, {"role": "user", "content": PROMPT}],
            add_generation_prompt=True)
        last_tokens: list[int] = []

        def generate(constrained: bool) -> tuple[float, int]:
            processors = [constraint.logits_processor()] if constrained else []
            tokens: list[int] = []
            for r in stream_generate(model, tokenizer, prompt, max_tokens=max_tokens,
                                     logits_processors=processors):
                tokens.append(r.token)
            if constrained:
                last_tokens[:] = tokens
            return r.generation_tps, len(tokens)

        log(f"{repeats} interleaved rounds of {max_tokens} tokens on {model_info['name']}")
        samples = interleave({"unconstrained": lambda: generate(False),
                              "constrained": lambda: generate(True)}, n=repeats, warmup=1)
        mask_ms = _replay_ms(constraint, prompt, last_tokens, tokenizer)

    tps = {k: [s[0] for s in v] for k, v in samples.items()}
    r = ratio(median(tps["constrained"]), median(tps["unconstrained"]))
    return {
        "model": model_info,
        "max_tokens": max_tokens,
        "decode_tokens_per_s": {k: summary(v) for k, v in tps.items()},
        "tokens_generated": {k: [s[1] for s in v] for k, v in samples.items()},
        "constrained_over_unconstrained": round(r, 4),
        "mask_cost_fraction_of_decode": round(1 - r, 4),
        "target": "constrained >= 0.90 x unconstrained (mask costs <= 10% of decode time)",
        "met": bool(r >= 0.90),
        "processor_ms_per_token_alone": summary(mask_ms),
        "grammar_compile_ms": round(compile_ms, 3),
        "first_compile_s_with_tokenizer": round(first_compile_s, 3),
    }


def _replay_ms(constraint: Any, prompt: list[int], tokens: list[int],
               tokenizer: Any) -> list[float]:
    """The processor's own time per token: consume, mask, apply, on ready-made logits."""
    import mlx.core as mx

    processor = constraint.logits_processor()
    vocab = len(tokenizer.vocab) if hasattr(tokenizer, "vocab") else 49152
    logits = mx.zeros((1, vocab))
    mx.eval(logits)
    out = []
    context = list(prompt)
    for tok in [None, *tokens[:-1]]:
        if tok is not None:
            context.append(tok)
        ctx = mx.array(context)
        mx.eval(ctx)
        t0 = time.perf_counter()
        mx.eval(processor(ctx, logits))
        out.append((time.perf_counter() - t0) * 1e3)
    return out


if __name__ == "__main__":
    blas.reexec_with_openblas(sys.argv[1:], module=__spec__.name)  # timed as `make bench` times it
    print(json.dumps(run("--quick" in sys.argv), indent=1))
