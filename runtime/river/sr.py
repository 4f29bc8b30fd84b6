"""A small EDSR-style super-resolution CNN, and the quality metrics River's gate and benchmark use.

EDSR's body (residual blocks without batch norm, residual scaling, pixel-shuffle upsampling) at mobile size, with
one change: the network predicts a residual over bicubic upsampling. A fresh or barely fine-tuned model then starts
at bicubic quality instead of below it, which is what a quality gate that compares against bicubic needs.
Weights travel as safetensors (the store, the model endpoint); `SRConfig` is stored beside them.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class SRConfig:
    """The model's shape and its scale factor (the stream's low-res frames are the ground truth's / `scale`).

    Defaults from bench.river_headroom (bench/results/river_headroom.md): x2, because at the same CRF x4 loses
    ~5.7 dB (29.6 vs 35.4 dB with the segment's own fine-tune) and content gains no more there (+0.15 vs +0.30 dB
    over the game's generic model); 4 blocks x 16 channels, because 8 x 32 adds only +0.48 dB to the generic model
    and +0.16 dB to the fine-tune's gain for ~8x the client's work per frame (774 vs 98 ms per 720p frame in
    torch on this CPU), far past what a client can run in real time."""

    blocks: int = 4
    channels: int = 16
    res_scale: float = 0.1
    scale: int = 2

    def __post_init__(self) -> None:
        if self.blocks < 1 or self.channels < 4:
            raise ValueError(f"SRConfig: blocks must be >= 1 and channels >= 4, got blocks={self.blocks}, "
                             f"channels={self.channels} (a smaller model cannot learn anything)")
        if not isinstance(self.scale, int) or not 2 <= self.scale <= 8:
            raise ValueError(f"SRConfig: scale must be an integer in 2..8, got {self.scale!r}")

    def to_dict(self) -> dict:
        return asdict(self)


class _Block(nn.Module):
    def __init__(self, c: int, res_scale: float):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(c, c, 3, padding=1))
        self.res_scale = res_scale

    def forward(self, x):
        return torch.add(x, self.body(x), alpha=self.res_scale)  # one pass over x (a separate mul was ~7% of SR)


class EDSR(nn.Module):
    """Input and output are float RGB in [0, 1], (N, 3, H, W) -> (N, 3, scale H, scale W)."""

    def __init__(self, cfg: SRConfig = SRConfig()):
        super().__init__()
        self.cfg = cfg
        c = cfg.channels
        self.head = nn.Conv2d(3, c, 3, padding=1)
        self.body = nn.Sequential(*[_Block(c, cfg.res_scale) for _ in range(cfg.blocks)], nn.Conv2d(c, c, 3, padding=1))
        self.tail = nn.Sequential(nn.Conv2d(c, 3 * cfg.scale**2, 3, padding=1), nn.PixelShuffle(cfg.scale))
        nn.init.zeros_(self.tail[0].weight)  # start exactly at bicubic
        nn.init.zeros_(self.tail[0].bias)

    def forward(self, x):
        """The residual and the bicubic base are added as pixel-shuffle phases (low resolution), then shuffled once:
        the same sum as adding at high resolution, in a quarter of the passes at x2."""
        h = self.head(x)
        conv, shuffle = self.tail
        return shuffle(conv(h + self.body(h)) + bicubic_phases(x, self.cfg.scale))


def to_tensor(frames: np.ndarray) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (T, 3, H, W) float in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float().div_(255.0)


def to_frames(x: torch.Tensor) -> np.ndarray:
    return x.clamp(0, 1).mul(255.0).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def bicubic(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Bicubic upsampling, equal to `F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)`
    to float rounding (tests check it)."""
    return F.pixel_shuffle(bicubic_phases(x, scale), scale)


def bicubic_phases(x: torch.Tensor, scale: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, C scale^2, H, W): bicubic upsampling by an integer factor as a fixed 5 x 5 convolution
    per output phase, in pixel-shuffle channel order. On this CPU `F.interpolate` took 15-18 ms for one 360p
    frame (~a third of the model's SR time), this 4-7 ms. Border pixels are replicated as `F.interpolate` clamps
    its taps."""
    w = _phase_weights(scale, x.dtype, x.device).repeat(x.shape[1], 1, 1, 1)
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="replicate"), w, groups=x.shape[1])


@functools.cache
def _phase_weights(scale: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The bicubic filter of each phase, read off `F.interpolate`'s response to an impulse (so both agree by
    construction): output pixel scale*i + a takes input pixels i-2..i+2 with weights f[a]."""
    centre = 4
    impulse = torch.zeros(1, 1, 1, 2 * centre + 1, dtype=torch.float64)
    impulse[..., centre] = 1.0
    y = F.interpolate(impulse, scale_factor=(1, scale), mode="bicubic", align_corners=False)[0, 0, 0]
    f = torch.stack([torch.stack([y[scale * (centre - k) + a] for k in range(-2, 3)]) for a in range(scale)])
    w = torch.einsum("ak,bl->abkl", f, f).reshape(scale * scale, 1, 5, 5)
    return w.to(dtype=dtype, device=device)


@torch.inference_mode()
def upscale(model: EDSR | None, lr: np.ndarray, scale: int | None = None, batch: int = 4) -> np.ndarray:
    """SR frames (uint8) for low-res frames; model None = bicubic by `scale` (a model knows its own)."""
    if model is None and scale is None:
        raise ValueError("upscale: bicubic needs the scale factor")
    if model is not None and scale not in (None, model.cfg.scale):
        raise ValueError(f"upscale: the model is x{model.cfg.scale}, asked for x{scale}")
    out = []
    for i in range(0, len(lr), batch):
        x = to_tensor(lr[i:i + batch])
        out.append(to_frames(bicubic(x, scale) if model is None else model(x)))
    return np.concatenate(out)


def _luma(frames: np.ndarray) -> np.ndarray:
    """BT.601 Y in [16, 235] as BasicSR computes it (rgb2ycbcr, y_only)."""
    f = frames.astype(np.float64)
    return 16.0 + (65.481 * f[..., 0] + 128.553 * f[..., 1] + 24.966 * f[..., 2]) / 255.0


def psnr_y(sr: np.ndarray, hr: np.ndarray, crop: int) -> float:
    """PSNR on the Y channel with `crop` border pixels removed, over all frames' pixels (BasicSR's convention,
    which crops the scale factor)."""
    if sr.shape != hr.shape:
        raise ValueError(f"shape mismatch: {sr.shape} vs {hr.shape}")
    a, b = _luma(sr), _luma(hr)
    if crop:
        a, b = a[..., crop:-crop, crop:-crop], b[..., crop:-crop, crop:-crop]
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


def ssim_y(sr: np.ndarray, hr: np.ndarray, crop: int) -> float:
    """Mean SSIM on the Y channel (Gaussian window 11, sigma 1.5, as in Wang et al.), averaged over frames."""
    if sr.shape != hr.shape:
        raise ValueError(f"shape mismatch: {sr.shape} vs {hr.shape}")
    a, b = (torch.from_numpy(_luma(x)).unsqueeze(1) for x in (sr, hr))
    if crop:
        a, b = a[..., crop:-crop, crop:-crop], b[..., crop:-crop, crop:-crop]
    g = torch.exp(-((torch.arange(11, dtype=torch.float64) - 5) ** 2) / (2 * 1.5**2))
    g = g / g.sum()

    def blur(x):  # separable Gaussian, 'valid' region only (as skimage with gaussian_weights=True crops)
        return F.conv2d(F.conv2d(x, g.view(1, 1, 1, 11)), g.view(1, 1, 11, 1))

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu1, mu2 = blur(a), blur(b)
    s11, s22, s12 = blur(a * a) - mu1**2, blur(b * b) - mu2**2, blur(a * b) - mu1 * mu2
    m = ((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1**2 + mu2**2 + c1) * (s11 + s22 + c2))
    return float(m.mean(dim=(1, 2, 3)).mean())
