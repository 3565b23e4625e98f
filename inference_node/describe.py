"""Describe: one screenshot in, a description out, never a verdict.

`describe_job` turns a `DescribeRequest` into an engine `Job` for a vision model: it checks the
image (size, magic bytes, decodes fully), downscales it past `describe.max_pixels`, builds the
prompt with mlx-vlm's own chat template helpers and counts the prompt's tokens, image tokens
included, so admission reserves the right KV before anything runs. The describe-only prompt
comes from configuration (`[describe] prompt`); the caller's instruction is appended to the
user turn as extra focus and can never replace it.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any

from inference_node import chat
from inference_node.api import pb
from inference_node.config import DescribeConfig
from inference_node.engine import Job, LoadedModel
from inference_node.errors import BadRequest
from inference_node.models import CatalogModel

MAGIC = {b"\x89PNG\r\n\x1a\n": "png", b"\xff\xd8\xff": "jpeg"}
MAX_INSTRUCTION_CHARS = 4000
MAX_ASPECT = 200  # Qwen-VL's processors refuse anything longer and thinner
# Framing of the user turn; what the model must and must not do is `[describe] prompt`.
USER_TEXT = "Describe this screenshot."
FOCUS_TEXT = "Pay particular attention to: {instruction}"


@dataclass
class CheckedRequest:
    """A Describe request whose image and options passed every check; nothing loaded yet."""

    image: Any
    info: pb.ImageInfo
    note: str
    instruction: str


def check_request(request: pb.DescribeRequest, cfg: DescribeConfig) -> CheckedRequest:
    """Everything that can refuse a request before a model is loaded (or evicted) for it."""
    image, info = load_image(request.image.data, cfg)
    note = ""
    if info.downscaled:
        note = (f"image downscaled from {info.width}x{info.height} to {info.used_width}x"
                f"{info.used_height} (max_pixels {cfg.max_pixels})")
    instruction = request.instruction.strip()
    if len(instruction) > MAX_INSTRUCTION_CHARS:
        raise BadRequest(
            f"instruction is {len(instruction)} characters; the limit is "
            f"{MAX_INSTRUCTION_CHARS}. Say what to look at in a sentence or two"
        )
    if request.sampling.stop:
        raise BadRequest("Describe takes no stop sequences: a description ends on its own or "
                         "at max_tokens; drop sampling.stop")
    return CheckedRequest(image, info, note, instruction)


def describe_job(request: pb.DescribeRequest, checked: CheckedRequest, entry: CatalogModel,
                 lm: LoadedModel, cfg: DescribeConfig) -> tuple[Job, list[pb.ImageInfo], str]:
    """A vision job for a checked request, the image rows for `Admitted`, and a note."""
    text = build_prompt(lm, cfg.prompt, checked.instruction)
    prompt = prompt_tokens(lm, text, checked.image)
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
        vision_inputs={"prompt": text, "images": [checked.image],
                       "sampling": sampling_kwargs(request.sampling)},
    )
    return job, [checked.info], checked.note


def sniff(data: bytes) -> str | None:
    """The image type from its magic bytes: "png", "jpeg", or None."""
    for magic, fmt in MAGIC.items():
        if data.startswith(magic):
            return fmt
    return None


def load_image(data: bytes, cfg: DescribeConfig) -> tuple[Any, pb.ImageInfo]:
    """Check and decode `data`; an RGB PIL image no larger than `cfg.max_pixels`."""
    from PIL import Image, ImageOps

    limit = int(cfg.max_image_mb * 1024 * 1024)
    if not data:
        raise BadRequest("image is empty (0 bytes): put the PNG or JPEG bytes of the screenshot "
                         "in image.data")
    if len(data) > limit:
        raise BadRequest(
            f"image is {len(data) / 2**20:.1f} MB; the limit is {cfg.max_image_mb:g} MB "
            "(describe.max_image_mb). Send a smaller screenshot (a PNG of one viewport is "
            "well under 1 MB) or raise max_image_mb in inference-node.toml"
        )
    fmt = sniff(data)
    if fmt is None:
        raise BadRequest(
            f"image is not a PNG or JPEG: its first bytes are {data[:8].hex(' ')}; send the "
            "screenshot as PNG or JPEG bytes (the type is read from the bytes, not a name)"
        )
    try:
        img: Any = Image.open(io.BytesIO(data))
        img.load()  # decode everything now: a truncated file fails here, not in the engine
    except Image.DecompressionBombError as e:
        raise BadRequest(f"image is too large to decode safely: {e}; send a smaller "
                         "screenshot") from None
    except Exception as e:  # noqa: BLE001 - PIL raises many types for bad files
        raise BadRequest(
            f"image looks like a {fmt.upper()} ({len(data)} bytes) but is truncated or corrupt "
            f"({e}); capture the screenshot again"
        ) from None
    img = ImageOps.exif_transpose(img)  # a phone photo's orientation, as a viewer shows it
    width, height = img.size
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise BadRequest(
            f"image is {width}x{height}, more than {MAX_ASPECT}:1; send a viewport screenshot "
            "rather than a full-page strip"
        )
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
    from mlx_lm.generate import TextStateMachine

    return chat.TextRouter(text_sm=TextStateMachine(), initial_state="normal",
                           tool_parser=None, tools=[])
