"""What a cloud-gaming server really streams: the 720p frame area-downscaled by the SR scale factor and H.264-encoded
at a CRF.

The low-res input of every SR pair is made from the ground truth itself (natively rendered 360p frames are not
pixel-aligned with 720p). Ground truth is stored losslessly (libx264rgb, CRF 0: decoded frames equal the rendered
ones bit for bit); the low-res stream with libx264 yuv420p, `preset=veryfast, tune=zerolatency`, as a live
encoder would.
"""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np

from runtime.river.patches import check_frames


def check_scale(width: int, height: int, scale: int) -> None:
    """A scale factor must divide the frame, and the low-res frame must have even sides (4:2:0 video)."""
    if not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    if width % scale or height % scale:
        raise ValueError(f"scale: x{scale} does not divide the frame size {width}x{height}")
    if (width // scale) % 2 or (height // scale) % 2:
        raise ValueError(f"scale: x{scale} of {width}x{height} gives {width // scale}x{height // scale}, but 4:2:0 "
                         f"video needs even sides")


def area_downscale(frames: np.ndarray, scale: int) -> np.ndarray:
    """Mean over scale x scale blocks (cv2.INTER_AREA for an integer factor), rounded back to uint8."""
    check_frames(frames)
    t, h, w, c = frames.shape
    if h % scale or w % scale:
        raise ValueError(f"scale: x{scale} does not divide the frame size {w}x{h}")
    blocks = frames.reshape(t, h // scale, scale, w // scale, scale, c).astype(np.float32)
    return np.round(blocks.mean(axis=(2, 4))).astype(np.uint8)


def encode(frames: np.ndarray, fps: float, *, crf: int | None) -> bytes:
    """H.264 in MP4. crf=None: lossless RGB (ground truth); else yuv420p at that CRF (the streamed video)."""
    check_frames(frames)
    if crf is not None and not 0 <= crf <= 51:
        raise ValueError(f"crf must be in 0..51, got {crf}")
    if crf is not None and (frames.shape[1] % 2 or frames.shape[2] % 2):
        raise ValueError(f"frame size {frames.shape[2]}x{frames.shape[1]} is odd: 4:2:0 video needs even sizes")
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        if crf is None:
            stream = container.add_stream("libx264rgb", rate=_rate(fps))
            stream.pix_fmt = "rgb24"
            stream.options = {"crf": "0", "preset": "ultrafast"}
        else:
            stream = container.add_stream("libx264", rate=_rate(fps))
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": str(crf), "preset": "veryfast", "tune": "zerolatency"}
        stream.height, stream.width = frames.shape[1:3]
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def decode(data: bytes | str | Path, *, max_frames: int | None = None,
           size: tuple[int, int] | None = None) -> np.ndarray:
    """All frames of an H.264 file or buffer as (T, H, W, 3) uint8 RGB. Undecodable input raises ValueError, and so
    does a video whose frames are not `size` (width, height) or that has more than `max_frames` frames: both are
    checked from the container's header and each frame's, before that frame is converted (a small file can declare
    a huge picture or thousands of frames)."""
    src = io.BytesIO(data) if isinstance(data, bytes) else str(data)
    frames = []
    try:
        with av.open(src) as container:
            stream = container.streams.video[0]
            declared = (stream.codec_context.width, stream.codec_context.height)
            if size is not None and all(declared) and declared != size:
                raise ValueError(f"frames are {declared[0]}x{declared[1]}, expected {size[0]}x{size[1]}")
            if max_frames is not None and stream.frames > max_frames:
                raise ValueError(f"{stream.frames} frames declared, at most {max_frames} are taken")
            for f in container.decode(stream):
                if size is not None and (f.width, f.height) != size:
                    raise ValueError(f"frames are {f.width}x{f.height}, expected {size[0]}x{size[1]}")
                if max_frames is not None and len(frames) >= max_frames:
                    raise ValueError(f"more than {max_frames} frames, at most {max_frames} are taken")
                frames.append(f.to_ndarray(format="rgb24"))
    except (av.error.FFmpegError, IndexError) as e:
        raise ValueError(f"cannot decode video: {e}") from e
    if not frames:
        raise ValueError("cannot decode video: no frames")
    return np.stack(frames)


def degrade(frames: np.ndarray, fps: float, crf: int, scale: int) -> tuple[bytes, np.ndarray]:
    """The streamed bitstream and the low-res frames a client decodes from it."""
    check_scale(frames.shape[2], frames.shape[1], scale)
    data = encode(area_downscale(frames, scale), fps, crf=crf)
    return data, decode(data)


def _rate(fps: float):
    from fractions import Fraction

    return Fraction(fps).limit_denominator(1000)
