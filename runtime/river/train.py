"""SR training: L1 + Adam on random edge-rich patches; the generic model (trained once, cached) and fine-tunes.

A fine-tune starts from the generic weights and runs a budget of steps on one segment's (or several segments')
pairs. Nothing here imports Ray: `actors/river_tasks.py` wraps `finetune` as a Ray task for the cluster.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from runtime.river.patches import EDGE_THRESHOLD, edge_scores
from runtime.river.sr import EDSR, SRConfig, to_tensor

SCHEDULES = ("constant", "cosine")
Pairs = list[tuple[np.ndarray, np.ndarray]]  # (low-res frames, ground-truth frames) per segment


@dataclass(frozen=True)
class TrainConfig:
    # Defaults from bench.river_headroom (x2, 4 x 16, CRF 28): a segment's own fine-tune gains +0.20 dB over the
    # game's generic model at 300 steps and +0.30 at 600, about linearly in seconds (~11 s for 600 here). River
    # trains only where the gate asks, so each fine-tune can afford the larger budget.
    steps: int = 600
    batch: int = 16
    patch: int = 32  # low-res patch side; the ground-truth patch is `scale` times larger
    lr: float = 2e-3  # short fine-tune budgets: 300 steps at 2e-3 gave +0.86 dB on a segment, at 5e-4 +0.15
    # "constant": cosine decay to 0 gained less at every budget measured (+0.23 vs +0.30 dB at 600 steps)
    schedule: str = "constant"
    edge_threshold: float = EDGE_THRESHOLD  # 0 = uniform patches, which gained less (+0.20 vs +0.30 dB at 600)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch < 1 or self.patch < 8 or self.lr <= 0:
            raise ValueError(f"TrainConfig: steps >= 0, batch >= 1, patch >= 8 and lr > 0 required, got {self}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"TrainConfig: schedule must be one of {SCHEDULES}, got {self.schedule!r}")


@dataclass(frozen=True)
class TrainResult:
    state: dict[str, torch.Tensor]
    sr: SRConfig
    steps: int
    seconds: float
    final_loss: float
    patches: int  # edge-rich patch positions sampled from


def edge_rich(hr: np.ndarray, patch: int, threshold: float, scale: int) -> np.ndarray:
    """(k, 3) array of (frame, row, col) low-res corners of grid patches whose ground-truth edge score passes
    `threshold`; when fewer than a tenth pass, the top tenth by score (a dark segment still trains)."""
    size = patch * scale
    scores = edge_scores(hr, size)  # (T, n)
    cols = hr.shape[2] // size
    t_idx, p_idx = np.nonzero(scores >= threshold)
    if len(t_idx) < max(1, scores.size // 10):
        order = np.argsort(scores, axis=None)[::-1][: max(1, scores.size // 10)]
        t_idx, p_idx = np.unravel_index(order, scores.shape)
    return np.stack([t_idx, (p_idx // cols) * patch, (p_idx % cols) * patch], axis=1)


def train(model: EDSR, pairs: Pairs, cfg: TrainConfig, progress: bool = False, desc: str = "training",
          checkpoints: Callable[[int, EDSR], None] | None = None, every: int = 0) -> TrainResult:
    """Train `model` in place on random edge-rich patches of `pairs`; returns its weights and what it cost.
    `checkpoints(step, model)` is called every `every` steps (and after the last), outside the timed seconds:
    one run then gives the gain of every shorter budget (with a constant learning rate)."""
    if not pairs:
        raise ValueError("train needs at least one (low-res, ground-truth) pair")
    scale = model.cfg.scale
    for lr, hr in pairs:
        if hr.shape[1] != lr.shape[1] * scale or hr.shape[2] != lr.shape[2] * scale or len(lr) != len(hr):
            raise ValueError(f"pair shapes do not match a x{scale} SR pair: {lr.shape} vs {hr.shape}")
        if min(lr.shape[1:3]) < cfg.patch:
            raise ValueError(f"low-res frames {lr.shape[2]}x{lr.shape[1]} are smaller than one {cfg.patch}-pixel "
                             f"training patch")
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    spots = [(i, s) for i, (_, hr) in enumerate(pairs) for s in edge_rich(hr, cfg.patch, cfg.edge_threshold, scale)]
    device = next(model.parameters()).device
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, cfg.steps)) if cfg.schedule == "cosine" else None
    model.train()
    spent = 0.0
    loss_v = float("nan")
    p, P = cfg.patch, cfg.patch * scale
    for step in tqdm(range(cfg.steps), desc=desc, unit="step", disable=not progress, file=sys.stderr):
        t0 = time.perf_counter()
        picks = rng.integers(0, len(spots), cfg.batch)
        lo = np.stack([pairs[spots[k][0]][0][spots[k][1][0], spots[k][1][1]:spots[k][1][1] + p,
                                             spots[k][1][2]:spots[k][1][2] + p] for k in picks])
        hi = np.stack([pairs[spots[k][0]][1][spots[k][1][0], spots[k][1][1] * scale:spots[k][1][1] * scale + P,
                                             spots[k][1][2] * scale:spots[k][1][2] * scale + P] for k in picks])
        x, y = to_tensor(lo).to(device), to_tensor(hi).to(device)
        if rng.random() < 0.5:  # horizontal flip: the player turns both ways
            x, y = x.flip(-1), y.flip(-1)
        loss = F.l1_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        loss_v = float(loss.detach())
        spent += time.perf_counter() - t0
        if checkpoints is not None and every and ((step + 1) % every == 0 or step + 1 == cfg.steps):
            model.eval()
            checkpoints(step + 1, model)
            model.train()
    model.eval()
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return TrainResult(state, model.cfg, cfg.steps, spent, loss_v, len(spots))


def model_from_state(state: dict[str, torch.Tensor], sr: SRConfig) -> EDSR:
    model = EDSR(sr)
    model.load_state_dict(state)
    model.eval()
    return model


def finetune(base: dict[str, torch.Tensor], sr: SRConfig, pairs: Pairs, cfg: TrainConfig,
             device: str = "cpu") -> TrainResult:
    """A content-specific model: the generic weights fine-tuned for `cfg.steps` steps on `pairs`."""
    return train(model_from_state(base, sr).to(device), pairs, cfg)


def generic_model(pairs_fn, key: dict, sr: SRConfig, cfg: TrainConfig, cache: str | os.PathLike,
                  progress: bool = True) -> TrainResult:
    """The generic model, trained once from scratch on `pairs_fn()` and cached under `cache` by `key` (describe
    the training data there: the cache must not outlive a change of it)."""
    path, recipe = generic_path(key, sr, cfg, cache), _recipe(key, sr, cfg)
    if path.exists():
        return load_generic(path)
    result = train(EDSR(sr), pairs_fn(), cfg, progress=progress, desc="generic SR model")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(result.state, tmp)
    path.with_suffix(".json").write_text(json.dumps({"recipe": recipe, "seconds": result.seconds,
                                                     "final_loss": result.final_loss, "patches": result.patches}))
    os.replace(tmp, path)
    return result


def _recipe(key: dict, sr: SRConfig, cfg: TrainConfig) -> dict:
    return {"data": key, "sr": sr.to_dict(), "train": asdict(cfg), "version": 1}


def generic_path(key: dict, sr: SRConfig, cfg: TrainConfig, cache: str | os.PathLike) -> Path:
    """Where `generic_model` caches the model of this recipe (its file name is the recipe's digest)."""
    digest = hashlib.sha256(json.dumps(_recipe(key, sr, cfg), sort_keys=True).encode()).hexdigest()[:16]
    return Path(cache) / f"generic-{digest}.safetensors"


def generic_config(path: str | os.PathLike) -> SRConfig:
    """The configuration (shape, scale factor) of a cached generic model, from its JSON alone."""
    meta = Path(path).with_suffix(".json")
    if not meta.exists():
        raise FileNotFoundError(f"no cached generic model at {path} (and its .json); `generic_model` writes one")
    return SRConfig(**json.loads(meta.read_text())["recipe"]["sr"])


def load_generic(path: str | os.PathLike) -> TrainResult:
    """A generic model that `generic_model` cached (weights beside the JSON of its recipe and training)."""
    path = Path(path)
    if not path.exists() or not path.with_suffix(".json").exists():
        raise FileNotFoundError(f"no cached generic model at {path} (and its .json); `generic_model` writes one")
    meta = json.loads(path.with_suffix(".json").read_text())
    sr = SRConfig(**meta["recipe"]["sr"])
    return TrainResult(load_file(path), sr, meta["recipe"]["train"]["steps"], meta["seconds"], meta["final_loss"],
                       meta["patches"])
