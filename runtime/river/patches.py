"""Fixed-size patches and their edge scores: what SR training samples from and what keys a model.

Flat patches (walls in shadow, the sky) teach an SR model nothing and would dominate both training batches and
the lookup keys, so both use only patches whose edge score passes a threshold. The score is the mean Sobel
gradient magnitude of the patch's luma (0..255 scale), computed on the frames a given side has: the server
scores the 720p ground truth, the online lookup scores what the client also has (the low-res frames).
Everything here is whole-array numpy: the lookup runs per streamed frame and has a few milliseconds.
"""

from __future__ import annotations

import numpy as np

EDGE_THRESHOLD = 12.0  # mean Sobel magnitude; ~half of the patches of typical Freedoom frames pass


def check_frames(frames: np.ndarray, name: str = "frames") -> None:
    """Frames cross module boundaries as (T, H, W, 3) uint8 RGB; anything else is refused by name."""
    if not isinstance(frames, np.ndarray) or frames.ndim != 4 or frames.shape[3] != 3:
        shape = getattr(frames, "shape", type(frames).__name__)
        raise ValueError(f"{name} must be a (T, H, W, 3) RGB array, got shape {shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8, got {frames.dtype}")
    if frames.shape[0] == 0:
        raise ValueError(f"{name} is empty (0 frames)")


_BT601 = np.array([0.299, 0.587, 0.114], np.float32)


def luma(frames: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 RGB -> float32 BT.601 luma in 0..255."""
    return frames.astype(np.float32) @ _BT601


def sobel(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(gx, gy) Sobel gradients of (T, H, W) luma, normalised by 4, same size (replicate padding)."""
    p = np.pad(y, ((0, 0), (1, 1), (1, 1)), mode="edge")
    dx = p[:, :, 2:] - p[:, :, :-2]
    dy = p[:, 2:, :] - p[:, :-2, :]
    gx = (dx[:, :-2] + 2 * dx[:, 1:-1] + dx[:, 2:]) * 0.25
    gy = (dy[:, :, :-2] + 2 * dy[:, :, 1:-1] + dy[:, :, 2:]) * 0.25
    return gx, gy


def gradient_magnitude(y: np.ndarray) -> np.ndarray:
    gx, gy = sobel(y)
    return np.sqrt(gx * gx + gy * gy)


def grid_blocks(x: np.ndarray, size: int) -> np.ndarray:
    """(T, H, W, ...) -> (T, n, size, size, ...): the non-overlapping grid patches that fit, row-major (a view
    where numpy can make one). Patch p sits at row (p // (W // size)) * size, column (p % (W // size)) * size."""
    t, h, w = x.shape[:3]
    rows, cols = h // size, w // size
    b = x[:, : rows * size, : cols * size].reshape(t, rows, size, cols, size, *x.shape[3:])
    return np.swapaxes(b, 2, 3).reshape(t, rows * cols, size, size, *x.shape[3:])


def edge_scores(frames: np.ndarray, size: int) -> np.ndarray:
    """(T, n_patches) mean gradient magnitude per grid patch."""
    return grid_blocks(gradient_magnitude(luma(frames)), size).mean(axis=(2, 3))
