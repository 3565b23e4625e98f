"""Describe latency: a desktop (1280×800) and a phone (390×844) screenshot, with the tiny VLM.

The model is the tests' random-weight Qwen3-VL (tests/tiny_vlm.py: one vision block, one text
layer), so the numbers measure the pipeline around the model — image checks, mlx-vlm's
preprocessing, the vision tower and prefill over the real number of image tokens, decode — not
a real model's speed. Stages, each timed separately on the same inputs:

1. request: what the gRPC handler does before admission (`describe.check_request`: magic bytes
   and the header's size; `describe.decode`: full PNG decode and downscale; `build_prompt`;
   `prompt_tokens`, the exact count).
2. preprocess: mlx-vlm's `prepare_inputs` (the Qwen-VL processor's resize, normalize and
   patchify; tokenization with the image slot expanded), evaluated.
3. prefill: `stream_generate` on the prepared inputs until the first token (vision tower +
   language-model prefill).
4. decode: the remaining tokens of a fixed-length reply, as tokens per second.
5. end to end: the same request through a real server over gRPC (admitted → deltas → done).

One warm-up, then `repeats` runs; medians with min, max and quartiles (the machine is shared).
"""

from __future__ import annotations

import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from inference_node import blas

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "describe.json"
SCREENS = {"desktop": (1280, 800), "phone": (390, 844)}
DECODE_TOKENS = 32


def screenshot(width: int, height: int) -> bytes:
    """A page-like PNG: header bar, navigation, headline, text lines, cards, a button."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    d.rectangle((0, 0, width, 64), fill=(24, 28, 48))
    for i, word in enumerate(("Home", "Pricing", "Docs", "Sign in")):
        d.text((width - 320 + i * 75 if width > 600 else 16 + i * 80, 26), word, fill="white")
    d.text((32, 100), "Ship faster with studio-coder", fill="black")
    for row in range(12):
        d.text((32, 140 + row * 18), "Lorem ipsum dolor sit amet, consectetur " * 2, fill=(60,) * 3)
    cols = 3 if width > 600 else 1
    card_w = (width - 64 - (cols - 1) * 16) // cols
    for c in range(cols):
        x = 32 + c * (card_w + 16)
        d.rounded_rectangle((x, 380, x + card_w, 560), 8, outline=(200,) * 3, fill=(245,) * 3)
        d.text((x + 12, 392), f"Plan {c + 1}", fill="black")
    d.rounded_rectangle((32, 600, 200, 644), 6, fill=(20, 90, 220))
    d.text((60, 614), "Get started", fill="white")
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def _stats(xs: list[float], digits: int = 4) -> dict[str, float]:
    q = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
    return {"median": round(statistics.median(xs), digits), "min": round(min(xs), digits),
            "max": round(max(xs), digits), "p25": round(q[0], digits),
            "p75": round(q[2], digits), "n": len(xs)}


def _one(lm: Any, entry: Any, data: bytes, cfg: Any, decode_tokens: int) -> dict[str, float]:
    import mlx.core as mx
    from mlx_vlm import stream_generate
    from mlx_vlm.utils import prepare_inputs, should_add_special_tokens

    from inference_node.api import pb
    from inference_node.describe import build_prompt, check_request, decode, prompt_tokens

    t0 = time.perf_counter()
    image, _ = decode(check_request(pb.DescribeRequest(image=pb.Image(data=data)), cfg), cfg)
    text = build_prompt(lm, cfg.prompt, "")
    n_prompt = len(prompt_tokens(lm, text, image))
    t1 = time.perf_counter()
    inputs = prepare_inputs(
        lm.processor, images=[image], prompts=text,
        image_token_index=lm.model.config.image_token_index,
        add_special_tokens=should_add_special_tokens(lm.model.config.model_type, lm.processor),
    )
    mx.eval([v for v in inputs.values() if isinstance(v, mx.array)])
    t2 = time.perf_counter()
    assert inputs["input_ids"].size == n_prompt, "the admission count must match mlx-vlm's"
    extra = {k: v for k, v in inputs.items()
             if k not in ("input_ids", "pixel_values", "attention_mask")}
    first = 0.0
    n = 0
    for r in stream_generate(
        lm.model, lm.processor, text, input_ids=inputs["input_ids"],
        pixel_values=inputs["pixel_values"], mask=inputs.get("attention_mask"),
        max_tokens=decode_tokens, temperature=0.0, **extra,
    ):
        if not first:
            first = time.perf_counter()
        n = r.generation_tokens
    t3 = time.perf_counter()
    return {"request_s": t1 - t0, "preprocess_s": t2 - t1, "prefill_s": first - t2,
            "decode_tok_s": (n - 1) / (t3 - first) if t3 > first else 0.0,
            "prompt_tokens": n_prompt}


def _end_to_end(path: Path, shots: dict[str, bytes], repeats: int,
                decode_tokens: int) -> dict[str, Any]:
    import grpc

    from inference_node.api import pb, rpc
    from inference_node.config import InferenceConfig, MemoryConfig, ModelEntry
    from inference_node.server import create_server
    from studio_common.channel import MAX_MESSAGE_BYTES, channel_options

    cfg = InferenceConfig(models=[ModelEntry(name="eyes", path=str(path), role="vision")])
    cfg.memory = MemoryConfig(budget_gb=4.0, floor_gb=0.0)
    server, port = create_server("127.0.0.1:0", cfg)
    server.start()
    out: dict[str, Any] = {}
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}",
                                   options=channel_options(MAX_MESSAGE_BYTES)) as ch:
            stub = rpc.InferenceStub(ch)
            for name, data in shots.items():
                req = pb.DescribeRequest(image=pb.Image(data=data), max_tokens=decode_tokens)
                totals, ttft = [], []
                for i in range(repeats + 1):
                    t0 = time.perf_counter()
                    first = 0.0
                    for ev in stub.Describe(req, timeout=300):
                        if ev.WhichOneof("event") == "delta" and not first:
                            first = time.perf_counter()
                    if i:  # the first is the warm-up
                        totals.append(time.perf_counter() - t0)
                        ttft.append(first - t0)
                out[name] = {"total_s": _stats(totals), "time_to_first_delta_s": _stats(ttft)}
    finally:
        server.stop(0)
    return out


def run(quick: bool) -> dict:
    sys.path.insert(0, str(REPO / "tests"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from mlx_vlm import load
    from tiny_vlm import build_tiny_vlm

    from bench.stats import smoke
    from inference_node.config import DescribeConfig
    from inference_node.engine import LoadedModel
    from inference_node.models import CatalogModel

    repeats, decode_tokens = (1, 4) if smoke() else (5 if quick else 10, DECODE_TOKENS)
    cfg = DescribeConfig()
    shots = {name: screenshot(w, h) for name, (w, h) in SCREENS.items()}
    result: dict[str, Any] = {
        "model": "tests/tiny_vlm.py: random-weight Qwen3-VL, 1 vision block, 1 text layer",
        "machine": {"cpus": os.cpu_count(), "platform": sys.platform},
        "repeats": repeats, "decode_tokens": decode_tokens, "max_pixels": cfg.max_pixels,
        "screens": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = build_tiny_vlm(Path(tmp) / "eyes")
        model, processor = load(str(path))
        entry = CatalogModel(name="eyes", role="vision", path=path, source=str(path),
                             pinned=False, context=8192, config={})
        lm = LoadedModel(entry=entry, model=model, processor=processor,
                         tokenizer=getattr(processor, "tokenizer", processor))
        for name, data in shots.items():
            _one(lm, entry, data, cfg, decode_tokens)  # warm-up
            runs = [_one(lm, entry, data, cfg, decode_tokens) for _ in range(repeats)]
            w, h = SCREENS[name]
            result["screens"][name] = {
                "size": f"{w}x{h}", "png_bytes": len(data),
                "prompt_tokens": runs[0]["prompt_tokens"],
                **{k: _stats([r[k] for r in runs], 2 if k == "decode_tok_s" else 4)
                   for k in ("request_s", "preprocess_s", "prefill_s", "decode_tok_s")},
            }
        result["end_to_end_grpc"] = _end_to_end(path, shots, repeats, decode_tokens)
    return result


if __name__ == "__main__":
    blas.reexec_with_openblas(sys.argv[1:], module=__spec__.name)  # timed as `make bench` times it
    out = run("--quick" in sys.argv)
    if "--quick" not in sys.argv:
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
