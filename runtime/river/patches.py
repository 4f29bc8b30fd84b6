"""Fixed-size patches and their edge scores: what SR training samples from and what keys a model.

Flat patches (walls in shadow, the sky) teach an SR model nothing and would dominate both training batches and
the lookup keys, so both use only patches whose edge score passes a threshold. The score is the mean Sobel
gradient magnitude of the patch's luma (0..255 scale), computed on the frames a given side has: the server
scores the 720p ground truth, the online lookup scores what the client also has (the low-res frames).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

EDGE_THRESHOLD = 12.0  # mean Sobel magnitude; ~half of the patches of typical Freedoom frames pass


def luma(frames: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 RGB -> float32 BT.601 luma in 0..255."""
    f = frames.astype(np.float32)
    return 0.299 * f[..., 0] + 0.587 * f[..., 1] + 0.114 * f[..., 2]


def gradient_magnitude(y: np.ndarray) -> np.ndarray:
    """Sobel magnitude of (T, H, W) luma, same size (replicate padding)."""
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 4.0
    t = F.pad(torch.from_numpy(np.ascontiguousarray(y)).unsqueeze(1), (1, 1, 1, 1), mode="replicate")
    gx = F.conv2d(t, kx.view(1, 1, 3, 3))
    gy = F.conv2d(t, kx.t().contiguous().view(1, 1, 3, 3))
    return torch.sqrt(gx * gx + gy * gy).squeeze(1).numpy()


def patch_grid(h: int, w: int, size: int) -> list[tuple[int, int]]:
    """Top-left corners of the non-overlapping size x size patches that fit in an h x w frame."""
    return [(r, c) for r in range(0, h - size + 1, size) for c in range(0, w - size + 1, size)]


def edge_scores(frames: np.ndarray, size: int) -> np.ndarray:
    """(T, n_patches) mean gradient magnitude per grid patch."""
    g = gradient_magnitude(luma(frames))
    t, h, w = g.shape
    rows, cols = h // size, w // size
    blocks = g[:, : rows * size, : cols * size].reshape(t, rows, size, cols, size)
    return blocks.mean(axis=(2, 4)).reshape(t, rows * cols)
