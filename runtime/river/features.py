"""River's content-aware encoder: patch feature vectors and the K-means keys that index a model.

A patch's feature is three hand-made parts (no pretrained CNN can be downloaded here), each L2-normalised and
weighted, then the whole vector L2-normalised so that inner product = cosine similarity (FAISS IndexFlatIP):
- gradient orientation histogram (8 bins over 0..180 degrees, Sobel-magnitude-weighted): texture structure;
- colour histogram (8 bins per RGB channel): palette of the map's textures and lighting;
- DCT band energies of the luma (6 radial bands, log): how much fine detail - what SR has to restore.
Features are computed on the low-res frames (what is streamed), on the same grid as the edge scores; flat
patches are left out on both sides (keys and lookups), and so are the positions of the game's overlay (HUD,
status bar): they look the same in every map, so they would match every model's keys and vote at random
(bench.river_lookup measures the effect). All patches of all frames are computed in whole-array operations.
"""

from __future__ import annotations

import numpy as np

from runtime.river.patches import EDGE_THRESHOLD, check_frames, grid_blocks, luma, sobel

PATCH = 32  # low-res patch side
WEIGHTS = {"orientation": 1.0, "colour": 0.7, "dct": 0.7}
DIM = 8 + 24 + 6


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    m = np.cos(np.pi * (2 * np.arange(n)[None, :] + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    m[0] /= np.sqrt(2.0)
    return m.astype(np.float32)


_DCT = _dct_matrix(PATCH)
# DCT coefficient (u, v) -> one-hot band by u + v: DC, then octaves of spatial frequency
_BAND_OF = np.digitize(np.add.outer(np.arange(PATCH), np.arange(PATCH)), [1, 4, 8, 16, 32]).ravel()
_BANDS = np.eye(6, dtype=np.float32)[_BAND_OF]
# orientation bin edges at 22.5 deg steps, as unit vectors: a gradient folded into 0..180 deg is past edge k when
# its cross product with the edge is >= 0 (no arctan over every pixel)
_EDGE_COS = np.cos(np.radians(np.arange(1, 8) * 22.5)).astype(np.float32)
_EDGE_SIN = np.sin(np.radians(np.arange(1, 8) * 22.5)).astype(np.float32)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-8)


class OverlayMask:
    """Grid positions where a game draws its overlay, learned from the stream itself: a position whose patch is
    still (mean absolute luma change below `still` between consecutive frames, which tolerates codec noise) in at
    least `share` of all frame pairs seen so far. The 3D view changes whenever the player moves, so over many
    segments only the overlay stays still; a single still segment (the player waiting) does not flip the mask.
    Until `min_pairs` frame pairs are seen nothing is masked."""

    def __init__(self, still: float = 2.0, share: float = 0.6, min_pairs: int = 32):
        self.still, self.share, self.min_pairs = still, share, min_pairs
        self._still_counts: np.ndarray | None = None
        self.pairs = 0

    def update(self, frames: np.ndarray) -> None:
        check_frames(frames)
        if len(frames) < 2:
            return
        change = grid_blocks(np.abs(np.diff(luma(frames), axis=0)), PATCH).mean(axis=(2, 3))  # (T-1, n)
        counts = (change < self.still).sum(axis=0)
        if self._still_counts is None or self._still_counts.shape != counts.shape:
            self._still_counts, self.pairs = np.zeros_like(counts), 0
        self._still_counts += counts
        self.pairs += len(change)

    def positions(self) -> np.ndarray | None:
        """Boolean per grid position (True = overlay), or None while too little has been seen."""
        if self._still_counts is None or self.pairs < self.min_pairs:
            return None
        return self._still_counts >= self.share * self.pairs


def frame_patch_features(frames: np.ndarray, exclude: np.ndarray | None = None,
                         threshold: float = EDGE_THRESHOLD / 2,
                         per_frame: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Features of the edge-rich grid patches of low-res `frames` (T, H, W, 3) uint8: ((n, DIM) float32 unit
    vectors, (n,) frame index of each). `exclude`: grid positions to leave out (an OverlayMask's positions).
    The threshold is half the ground-truth one: downscaling halves gradient magnitudes per pixel."""
    check_frames(frames)
    y = luma(frames)
    gx, gy = sobel(y)
    mag = grid_blocks(np.sqrt(gx * gx + gy * gy), PATCH)  # (T, n, P, P)
    if mag.shape[1] == 0:
        raise ValueError(f"frames of {frames.shape[2]}x{frames.shape[1]} are smaller than one {PATCH}x{PATCH} patch")
    scores = mag.mean(axis=(2, 3))
    keep = scores >= threshold
    if exclude is not None:
        if exclude.shape != keep.shape[1:]:
            raise ValueError(f"exclude mask has {exclude.shape} positions, the frames have {keep.shape[1]}")
        keep &= ~exclude
    if per_frame is not None and per_frame < keep.shape[1]:
        rank = np.argsort(np.argsort(-np.where(keep, scores, -np.inf), axis=1), axis=1)
        keep &= rank < per_frame
    n = int(keep.sum())
    frame_of = np.nonzero(keep)[0]
    if n == 0:
        return np.zeros((0, DIM), np.float32), frame_of
    m = mag[keep].reshape(n, -1)
    x = grid_blocks(gx, PATCH)[keep].reshape(n, -1)
    z = grid_blocks(gy, PATCH)[keep].reshape(n, -1)
    flip = (z < 0) | ((z == 0) & (x < 0))  # fold into 0..180 degrees
    x, z = np.where(flip, -x, x), np.where(flip, -z, z)
    ang = sum(((c * z - s * x) >= 0).astype(np.int64) for c, s in zip(_EDGE_COS, _EDGE_SIN, strict=True))
    row = np.arange(n)[:, None]
    orient = np.bincount((row * 8 + ang).ravel(), weights=m.ravel(), minlength=n * 8).reshape(n, 8)
    pix = grid_blocks(frames, PATCH)[keep][:, ::2, ::2].reshape(n, -1, 3) >> 5  # 8 levels, every 4th pixel
    colour = np.bincount((row[:, :, None] * 24 + np.arange(3) * 8 + pix).ravel(), minlength=n * 24)
    yp = grid_blocks(y, PATCH)[keep]
    coef = _DCT @ (yp - yp.mean(axis=(1, 2), keepdims=True)) @ _DCT.T
    dct = np.log1p((coef * coef).reshape(n, -1) @ _BANDS)
    out = np.concatenate([_unit(orient) * WEIGHTS["orientation"],
                          _unit(colour.reshape(n, 24).astype(np.float32)) * WEIGHTS["colour"],
                          _unit(dct) * WEIGHTS["dct"]], axis=1)
    return _unit(out.astype(np.float32)), frame_of


def patch_features(frames: np.ndarray, exclude: np.ndarray | None = None,
                   threshold: float = EDGE_THRESHOLD / 2) -> np.ndarray:
    return frame_patch_features(frames, exclude, threshold)[0]


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
