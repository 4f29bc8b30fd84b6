"""River's content-aware encoder: patch feature vectors and the K-means keys that index a model.

A patch's feature is three hand-made parts (no pretrained CNN can be downloaded here), each L2-normalised and
weighted, then the whole vector L2-normalised so that inner product = cosine similarity (FAISS IndexFlatIP):
- gradient orientation histogram (8 bins over 0..180 degrees, magnitude-weighted): texture structure;
- colour histogram (8 bins per RGB channel): palette of the map's textures and lighting;
- DCT band energies of the luma (6 radial bands, log): how much fine detail - what SR has to restore.
Features are computed on the low-res frames (what is streamed), on the same grid as the edge scores; flat
patches are left out on both sides (keys and lookups).
"""

from __future__ import annotations

import numpy as np

from runtime.river.patches import EDGE_THRESHOLD, edge_scores, luma, patch_grid

PATCH = 32  # low-res patch side
WEIGHTS = {"orientation": 1.0, "colour": 0.7, "dct": 0.7}
DIM = 8 + 24 + 6


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    m = np.cos(np.pi * (2 * np.arange(n)[None, :] + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    m[0] /= np.sqrt(2.0)
    return m.astype(np.float32)


_DCT = _dct_matrix(PATCH)
# DCT coefficient (u, v) -> band by u + v: DC, then octaves of spatial frequency
_BAND_OF = np.digitize(np.add.outer(np.arange(PATCH), np.arange(PATCH)), [1, 4, 8, 16, 32]).ravel()


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-8)


def patch_features(frames: np.ndarray, threshold: float = EDGE_THRESHOLD / 2) -> np.ndarray:
    """(n, DIM) float32 unit vectors for the edge-rich PATCH-sized grid patches of low-res `frames` (T, H, W, 3).
    The threshold is half the ground-truth one: downscaling halves gradient magnitudes per pixel."""
    t, h, w, _ = frames.shape
    scores = edge_scores(frames, PATCH)  # (T, n)
    grid = patch_grid(h, w, PATCH)
    y = luma(frames)
    gy, gx = np.gradient(y, axis=(1, 2))
    mag = np.hypot(gx, gy)
    ang = (np.degrees(np.arctan2(gy, gx)) % 180.0 / 22.5).astype(np.int32).clip(0, 7)
    out = []
    for f, p in zip(*np.nonzero(scores >= threshold), strict=True):
        r, c = grid[p]
        sl = (f, slice(r, r + PATCH), slice(c, c + PATCH))
        orient = np.bincount(ang[sl].ravel(), weights=mag[sl].ravel(), minlength=8)
        pix = frames[sl].reshape(-1, 3) // 32
        colour = np.concatenate([np.bincount(pix[:, ch], minlength=8) for ch in range(3)]).astype(np.float32)
        coef = _DCT @ (y[sl] - y[sl].mean()) @ _DCT.T
        dct = np.log1p(np.bincount(_BAND_OF, weights=(coef * coef).ravel(), minlength=6))
        out.append(np.concatenate([_unit(orient) * WEIGHTS["orientation"], _unit(colour) * WEIGHTS["colour"],
                                   _unit(dct) * WEIGHTS["dct"]]))
    if not out:
        return np.zeros((0, DIM), np.float32)
    return _unit(np.asarray(out, np.float32))


def kmeans_keys(features: np.ndarray, k: int = 16, seed: int = 0) -> np.ndarray:
    """(k', DIM) unit centroids (spherical K-means, k' = min(k, n)): the keys a model is stored under."""
    import faiss

    if len(features) == 0:
        raise ValueError("no edge-rich patches to build keys from (the segment is flat)")
    k = min(k, len(features))
    km = faiss.Kmeans(features.shape[1], k, niter=20, spherical=True, seed=seed, verbose=False,
                      min_points_per_centroid=1)
    km.train(np.ascontiguousarray(features, dtype=np.float32))
    return _unit(km.centroids.astype(np.float32))
