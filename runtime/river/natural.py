"""Natural photographs as SR training data: the "generic pretrained SR" of neural-enhanced streaming papers.

Those papers start from a model trained on natural images (DIV2K and the like). Nothing can be downloaded here,
so the photographs scikit-image ships (offline, no pooch fetch) stand in: people, animals, food, a rocket, a
telescope field, microscopy, textures. Each becomes a one-frame pair degraded exactly like the game stream (area
downscale by the scale factor, then H.264 at the stream's CRF), so the model differs from the game-trained one
only in what it saw.
"""

from __future__ import annotations

import numpy as np

from runtime.river.degrade import degrade

# skimage.data images bundled with the package (the others are fetched on first use, which fails offline)
IMAGES = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "camera", "moon",
          "coins", "brick", "grass", "gravel", "clock", "retina")


def natural_images() -> list[np.ndarray]:
    """The photographs as (H, W, 3) uint8 RGB (grey ones replicated to three channels)."""
    from skimage import data

    out = []
    for name in IMAGES:
        img = getattr(data, name)()
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        out.append(np.ascontiguousarray(img[..., :3]).astype(np.uint8))
    return out


def natural_pairs(scale: int, crf: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(low-res, ground truth) one-frame pairs of every photograph, each cropped to a multiple of 2 x `scale`."""
    pairs = []
    for img in natural_images():
        m = 2 * scale
        hr = img[None, : img.shape[0] // m * m, : img.shape[1] // m * m]
        _, lr = degrade(hr, 1.0, crf, scale)
        pairs.append((lr, hr))
    return pairs
