"""Describe: one screenshot in, a description out, never a verdict.

`check_request` checks the options and the image's header (bytes, magic bytes, pixel count:
nothing is decoded yet); the server reserves `decode_bytes` from the memory budget while
`decode` decodes it fully and downscales it past `describe.max_pixels`. `describe_job` turns the
request into an engine `Job` for a vision model: it builds the prompt with mlx-vlm's own chat
template helpers and counts the prompt's tokens, image tokens included, so admission reserves
the right KV before anything runs. The describe-only prompt comes from configuration
(`[describe] prompt`); the caller's instruction is appended to the user turn as extra focus and
can never replace it.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any

from inference_node import chat, validate
from inference_node.api import pb
from inference_node.api import reasons as R
from inference_node.config import DescribeConfig
from inference_node.errors import BadRequest, invalid
from inference_node.jobs import Job, LoadedModel
from inference_node.models import CatalogModel

MAGIC = {b"\x89PNG\r\n\x1a\n": "png", b"\xff\xd8\xff": "jpeg"}
FIELD = "image.data"
MiB = 1 << 20
# Bytes a pixel takes decoded, by PIL mode: PIL keeps every multi-band mode (RGB included) at
# 4 bytes a pixel; a mode not listed is counted at 4.
BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2}
MAX_INSTRUCTION_CHARS = 4000
MAX_ASPECT = 200  # Qwen-VL's processors refuse anything longer and thinner
# Framing of the user turn; what the model must and must not do is `[describe] prompt`.
USER_TEXT = "Describe this screenshot."
FOCUS_TEXT = "Pay particular attention to: {instruction}"


@dataclass
class CheckedRequest:
    """A Describe request whose options and image header passed every check; nothing decoded
    or loaded yet. `decode_bytes` is what decoding the image will hold while it runs."""

    data: bytes
    fmt: str
    width: int
    height: int
    decode_bytes: int
    instruction: str


def check_request(request: pb.DescribeRequest, cfg: DescribeConfig,
                  vocab_size: int | None = None) -> CheckedRequest:
    """Everything that can refuse a request before a model is loaded (or evicted) for it, or
    its image decoded."""
    validate.check_request_id(request.request_id)
    validate.check_sampling(request.sampling, vocab_size=vocab_size, stop_allowed=False)
    if request.sampling.stop:
        raise invalid("sampling.stop", list(request.sampling.stop), "empty for Describe",
                      "a description ends on its own or at max_tokens; drop sampling.stop")
    if request.HasField("max_tokens") and request.max_tokens <= 0:
        raise invalid("max_tokens", request.max_tokens, "a positive number of tokens",
                      f"leave it unset for describe.max_tokens ({cfg.max_tokens})")
    instruction = request.instruction.strip()
    if len(instruction) > MAX_INSTRUCTION_CHARS:
        raise BadRequest(
            f"instruction is {len(instruction)} characters; the limit is "
            f"{MAX_INSTRUCTION_CHARS}. Say what to look at in a sentence or two",
            field="instruction", value=f"{len(instruction)} characters",
            expected=f"at most {MAX_INSTRUCTION_CHARS} characters")
    fmt, width, height, decode = read_header(request.image.data, cfg)
    return CheckedRequest(request.image.data, fmt, width, height, decode, instruction)


def describe_job(request: pb.DescribeRequest, checked: CheckedRequest, image: Any,
                 info: pb.ImageInfo, entry: CatalogModel, lm: LoadedModel, cfg: DescribeConfig
                 ) -> tuple[Job, list[pb.ImageInfo], str]:
    """A vision job for a checked request and its decoded image, the image rows for
    `Admitted`, and a note."""
    note = ""
    if info.downscaled:
        note = (f"image downscaled from {info.width}x{info.height} to {info.used_width}x"
                f"{info.used_height} (max_pixels {cfg.max_pixels})")
    text = build_prompt(lm, cfg.prompt, checked.instruction)
    prompt = prompt_tokens(lm, text, image)
    max_tokens = chat.resolve_max_tokens(
        request.max_tokens if request.HasField("max_tokens") else None,
        len(prompt), entry.context, cfg.max_tokens, entry.name,
    )
    job = Job(
        request_id=chat.new_request_id(request.request_id),
        model=entry.name,
        prompt=prompt,
        max_tokens=max_tokens,
        router=_plain_router(),
        vision_inputs={"prompt": text, "images": [image],
                       "sampling": sampling_kwargs(request.sampling)},
    )
    return job, [info], note


def sniff(data: bytes) -> str | None:
    """The image type from its magic bytes: "png", "jpeg", or None."""
    for magic, fmt in MAGIC.items():
        if data.startswith(magic):
            return fmt
    return None


def _image_error(message: str, data: bytes, fmt: str | None = None) -> BadRequest:
    return BadRequest(message, reason=R.IMAGE_INVALID, field=FIELD, image_format=fmt,
                      image_bytes=len(data))


def read_header(data: bytes, cfg: DescribeConfig) -> tuple[str, int, int, int]:
    """Check `data` from its header alone: (format, width, height, bytes decoding will hold).

    Nothing is decoded: an image past `describe.max_decode_pixels` is refused from the size
    its header declares, however few bytes it arrived in.
    """
    from PIL import Image

    limit = int(cfg.max_image_mb * MiB)
    if not data:
        raise _image_error("image is empty (0 bytes): put the PNG or JPEG bytes of the "
                           "screenshot in image.data", data)
    if len(data) > limit:
        raise BadRequest(
            f"image is {len(data) / MiB:.1f} MiB; the limit is {cfg.max_image_mb:g} MiB "
            "(describe.max_image_mb). Send a smaller screenshot (a PNG of one viewport is "
            "well under 1 MiB) or raise max_image_mb in inference-node.toml",
            reason=R.IMAGE_TOO_LARGE, field=FIELD, image_bytes=len(data),
            max_image_bytes=limit)
    fmt = sniff(data)
    if fmt is None:
        raise _image_error(
            f"image is not a PNG or JPEG: its first bytes are {data[:8].hex(' ')}; send the "
            "screenshot as PNG or JPEG bytes (the type is read from the bytes, not a name)", data)
    try:
        img: Any = Image.open(io.BytesIO(data))  # reads the header; decodes nothing yet
    except Image.DecompressionBombError as e:
        raise BadRequest(
            f"image is too large to decode: {e}; the limit is {cfg.max_decode_pixels:,} "
            "pixels (describe.max_decode_pixels). Send a viewport screenshot",
            reason=R.IMAGE_TOO_LARGE, field=FIELD, image_bytes=len(data),
            max_image_bytes=limit, max_pixels=cfg.max_decode_pixels) from None
    except Exception as e:  # noqa: BLE001 - PIL raises many types for bad files
        raise _image_error(
            f"image looks like a {fmt.upper()} ({len(data)} bytes) but is truncated or corrupt: "
            f"its header does not parse ({type(e).__name__}); capture the screenshot again",
            data, fmt) from None
    width, height = img.size
    if width * height > cfg.max_decode_pixels:
        raise BadRequest(
            f"image is {width}x{height} = {width * height:,} pixels; the limit is "
            f"{cfg.max_decode_pixels:,} (describe.max_decode_pixels), and it would be "
            f"downscaled to {cfg.max_pixels:,} anyway. Send a viewport screenshot, or raise "
            "max_decode_pixels in inference-node.toml", reason=R.IMAGE_TOO_LARGE, field=FIELD,
            image_bytes=len(data), max_image_bytes=limit, width=width, height=height,
            pixels=width * height, max_pixels=cfg.max_decode_pixels)
    if min(width, height) < 1 or max(width, height) > MAX_ASPECT * min(width, height):
        raise _image_error(
            f"image is {width}x{height}, more than {MAX_ASPECT}:1; send a viewport screenshot "
            "rather than a full-page strip", data, fmt)
    return fmt, width, height, decode_bytes(img, cfg.max_pixels)


def decode_bytes(img: Any, max_pixels: int) -> int:
    """What `decode` holds at its peak for this (not yet decoded) image, in PIL's own sizes:
    the decoded pixels, a rotated copy when the header says it is rotated, the conversions of
    `_rgb` and the first pass of the downscale to `max_pixels`. An over-count, as it should be:
    the peak measured was 0.87-0.94 of it (RGB, RGBA and grey 6000x6000 PNGs, a 1000x30000
    strip)."""
    width, height = img.size
    bpp = BYTES_PER_PIXEL.get(img.mode, 4)
    transparent = img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info)
    converted = 4 + 4 + 1 if transparent else 4  # RGBA copy, white RGB, alpha; or the RGB copy
    exif = img.info.get("exif")  # parsed from the header (JPEG APP1, PNG eXIf before IDAT)
    rotated = bpp if exif and img.getexif().get(0x0112, 1) != 1 else 0
    used_w, _ = fit(width, height, max_pixels)
    resize = 4 * used_w * height if used_w != width else 0  # LANCZOS resizes width first
    return width * height * (bpp + rotated + converted) + resize


def decode(checked: CheckedRequest, cfg: DescribeConfig) -> tuple[Any, pb.ImageInfo]:
    """Decode a checked image: an RGB PIL image no larger than `cfg.max_pixels`."""
    from PIL import Image, ImageOps

    data, fmt = checked.data, checked.fmt
    try:
        img: Any = Image.open(io.BytesIO(data))
        img.load()  # decode everything now: a truncated file fails here, not in the engine
    except Exception as e:  # noqa: BLE001 - PIL raises many types for bad files
        raise _image_error(
            f"image looks like a {fmt.upper()} ({len(data)} bytes) but is truncated or corrupt "
            f"({e}); capture the screenshot again", data, fmt) from None
    ImageOps.exif_transpose(img, in_place=True)  # a phone photo's orientation, as shown
    width, height = img.size
    img = _rgb(img)
    used_w, used_h = fit(width, height, cfg.max_pixels)
    if (used_w, used_h) != (width, height):
        img = img.resize((used_w, used_h), Image.Resampling.LANCZOS)  # keeps small text legible
    info = pb.ImageInfo(format=fmt, width=width, height=height, used_width=used_w,
                        used_height=used_h, downscaled=(used_w, used_h) != (width, height))
    return img, info


def fit(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """The largest size with the same aspect ratio and at most `max_pixels` pixels."""
    if width * height <= max_pixels:
        return width, height
    scale = math.sqrt(max_pixels / (width * height))
    return max(1, math.floor(width * scale)), max(1, math.floor(height * scale))


def _rgb(img: Any) -> Any:
    """RGB, with transparency flattened onto white (as a browser shows it)."""
    from PIL import Image

    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB")


def build_prompt(lm: LoadedModel, system: str, instruction: str) -> str:
    """The prompt text through mlx-vlm's chat template helpers, with one image slot.

    The describe-only prompt goes in as the system message; a template that refuses a system
    role gets it at the head of the user turn instead, so it is never dropped.
    """
    from mlx_vlm.prompt_utils import apply_chat_template

    user = USER_TEXT
    if instruction:
        user += " " + FOCUS_TEXT.format(instruction=instruction)
    config = lm.model.config
    try:
        return str(apply_chat_template(
            lm.processor, config,
            [{"role": "system", "content": system}, {"role": "user", "content": user}],
            num_images=1,
        ))
    except Exception:  # noqa: BLE001 - jinja raises on a system turn in some templates
        pass
    try:
        return str(apply_chat_template(lm.processor, config, f"{system}\n\n{user}",
                                       num_images=1))
    except Exception as e:  # noqa: BLE001
        raise BadRequest(f"{lm.name}'s chat template rejected the describe prompt: {e}; "
                         "check the model folder's chat_template") from None


def prompt_tokens(lm: LoadedModel, text: str, image: Any) -> list[int]:
    """The prompt's token ids with the image slot expanded to the image's tokens.

    Exact when the image processor can count its tokens (`num_image_tokens`, as mlx-vlm's
    Qwen-VL processors can); otherwise an upper estimate of one token per 14×14 patch, which
    only makes admission reserve a little more than needed.
    """
    from mlx_vlm.utils import should_add_special_tokens

    config = lm.model.config
    tok = lm.tokenizer
    ids = list(tok.encode(text, add_special_tokens=should_add_special_tokens(
        config.model_type, lm.processor)))
    image_id = getattr(config, "image_token_index", None) or getattr(
        config, "image_token_id", None)
    n_image = image_tokens(lm.processor, image.width, image.height)
    if image_id is None or image_id not in ids:
        return ids + [0] * n_image  # the processor inserts the image tokens itself
    at = ids.index(image_id)
    return ids[:at] + [image_id] * n_image + ids[at + 1:]


def image_tokens(processor: Any, width: int, height: int) -> int:
    improc = getattr(processor, "image_processor", None)
    count = getattr(improc, "num_image_tokens", None)
    if callable(count):
        try:
            return int(count(height, width))
        except ValueError as e:  # e.g. an aspect ratio the processor refuses
            raise BadRequest(f"the vision model cannot take a {width}x{height} image: {e}"
                             ) from None
    return math.ceil(width / 14) * math.ceil(height / 14)


def sampling_kwargs(s: pb.Sampling) -> dict[str, Any]:
    """mlx-vlm sampling arguments; unset means off (greedy), as for Chat."""
    out: dict[str, Any] = {
        "temperature": s.temperature if s.HasField("temperature") else 0.0,
        "top_p": s.top_p if s.HasField("top_p") else 1.0,
        "top_k": s.top_k if s.HasField("top_k") else 0,
        "min_p": s.min_p if s.HasField("min_p") else 0.0,
    }
    if s.HasField("repetition_penalty"):
        out["repetition_penalty"] = s.repetition_penalty
    if s.HasField("seed"):
        out["seed"] = s.seed
    return out


def _plain_router() -> chat.TextRouter:
    from inference_node.mlx_compat import plain_text_states

    return chat.TextRouter(text_sm=plain_text_states(), initial_state="normal",
                           tool_parser=None, tools=[])
