"""What River's HTTP endpoints accept and send: decoded and checked before anything reaches the store.

A game server posts a segment as H.264 bytes (the stream a client receives) plus a few ground-truth frames as PNG
with their frame numbers; thin clients post low-res PNG frames to be enhanced. Every check names the field.
"""

from __future__ import annotations

import io

import numpy as np

from deployments.openai_api import SESSION_ID

ID = SESSION_ID  # River's session, game and segment ids follow the agent API's session ids
VIDEO_TYPES = ("video/h264", "video/mp4", "application/octet-stream")


def check_id(field: str, value: str) -> str:
    if not ID.fullmatch(value):
        raise ValueError(f"{field}: must be 1-128 characters of letters, digits and ._:- starting with a letter or "
                         f"digit")
    return value


def decode_video(data: bytes, content_type: str | None, width: int, height: int, max_frames: int) -> np.ndarray:
    """The uploaded segment's frames; size and frame count are checked from the headers before decoding."""
    from runtime.river.degrade import decode

    if content_type not in VIDEO_TYPES:
        raise ValueError(f"video: content type must be one of {', '.join(VIDEO_TYPES)}, got {content_type!r}")
    try:
        return decode(data, max_frames=max_frames, size=(width, height))
    except ValueError as e:
        raise ValueError(f"video: {e}") from None


def decode_png(data: bytes, content_type: str | None, field: str, width: int, height: int) -> np.ndarray:
    """One PNG frame of exactly width x height, checked from its header before its pixels are decoded (a few KB
    of PNG can declare a gigapixel image)."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    if content_type != "image/png":
        raise ValueError(f"{field}: content type must be image/png, got {content_type!r}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size check below decides
            img = Image.open(io.BytesIO(data), formats=["PNG"])
        with img:
            if img.size != (width, height):
                raise ValueError(f"{field}: image is {img.size[0]}x{img.size[1]}, expected {width}x{height}")
            return np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, Image.DecompressionBombError) as e:
        raise ValueError(f"{field}: not a PNG image of a sane size ({e})") from None
    except (OSError, SyntaxError) as e:  # truncated or corrupt data
        raise ValueError(f"{field}: cannot decode PNG ({e})") from None


def encode_png(frame: np.ndarray) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(frame).save(out, format="PNG")
    return out.getvalue()


def frame_numbers(text: str, count: int) -> list[int]:
    """`gt_frames`: comma-separated frame numbers, one per ground-truth image."""
    try:
        numbers = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"gt_frames: must be comma-separated frame numbers, got {text!r}") from None
    if len(numbers) != count:
        raise ValueError(f"gt_frames: {len(numbers)} frame numbers for {count} ground_truth images")
    return numbers


def hr_size(width: int, height: int, scale: int) -> tuple[int, int]:
    return width * scale, height * scale


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """`If-None-Match` as RFC 9110 defines it: `*`, or a comma-separated list of entity tags compared weakly."""
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    return any(tag.strip().removeprefix("W/") == etag for tag in if_none_match.split(","))
