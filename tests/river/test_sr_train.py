"""The SR model, its metrics (checked against scikit-image) and training on real game frames."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from runtime.river.sr import EDSR, SRConfig, bicubic, psnr_y, ssim_y, to_tensor, upscale
from runtime.river.train import TrainConfig, edge_rich, finetune, generic_model, model_from_state, train


def _y(frames):
    f = frames.astype(np.float64)
    return 16.0 + (65.481 * f[..., 0] + 128.553 * f[..., 1] + 24.966 * f[..., 2]) / 255.0


def test_metrics_match_scikit_image(pairs):
    hr = pairs[0].hr[:2]
    sr = upscale(None, pairs[0].lr[:2], 2)
    ref = peak_signal_noise_ratio(_y(hr)[:, 2:-2, 2:-2], _y(sr)[:, 2:-2, 2:-2], data_range=255)
    assert psnr_y(sr, hr, 2) == pytest.approx(ref, abs=1e-6)
    ref_ssim = np.mean([structural_similarity(_y(a)[2:-2, 2:-2], _y(b)[2:-2, 2:-2], data_range=255,
                                              gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
                        for a, b in zip(sr, hr, strict=True)])
    assert ssim_y(sr, hr, 2) == pytest.approx(ref_ssim, abs=1e-4)
    assert psnr_y(hr, hr, 2) == float("inf")


@pytest.mark.parametrize(("scale", "channels"), [(2, 3), (3, 3), (4, 3), (8, 3), (2, 1), (2, 5)])
def test_bicubic_as_phase_convolutions_equals_torch_interpolate(scale, channels):
    x = torch.rand(2, channels, 17, 29, dtype=torch.float64)
    ref = F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)
    assert torch.allclose(bicubic(x, scale), ref, atol=1e-12)  # borders included
    assert torch.allclose(bicubic(x.float(), scale), ref.float(), atol=1e-5)


@pytest.mark.parametrize("scale", [2, 4])
def test_fresh_model_is_exactly_bicubic(pairs, pairs_x4, scale):
    pair = {2: pairs, 4: pairs_x4}[scale][0]
    model = EDSR(SRConfig(blocks=2, channels=8, scale=scale))
    lr = pair.lr[:1]
    assert pair.scale == scale and lr.shape[1:3] == (720 // scale, 1280 // scale)
    assert model(to_tensor(lr)).shape == (1, 3, 720, 1280)
    assert np.array_equal(upscale(model, lr), upscale(None, lr, scale))
    with pytest.raises(ValueError, match="the model is x"):
        upscale(model, lr, 6 - scale)


def test_bad_model_configurations_are_refused():
    for kwargs, msg in (({"blocks": 0}, "blocks must be >= 1"),
                        ({"channels": 2}, "channels >= 4, got blocks=4, channels=2"),
                        ({"scale": 1}, "scale must be an integer in 2..8"), ({"scale": 2.5}, "scale must be")):
        with pytest.raises(ValueError, match=msg):
            SRConfig(**kwargs)


def test_edge_rich_patches_skip_flat_regions():
    hr = np.zeros((1, 128, 128, 3), np.uint8)
    hr[0, :64, :64] = (np.indices((64, 64)).sum(0) % 2 * 255)[..., None]  # a checkerboard in one corner
    spots = edge_rich(hr, patch=32, threshold=12.0, scale=2)
    assert spots.tolist() == [[0, 0, 0]]  # only the textured 64x64 ground-truth patch (low-res corner 0, 0)


@pytest.mark.parametrize("scale", [2, 4])
def test_training_on_a_segment_beats_bicubic_on_it(pairs, pairs_x4, scale):
    lr, hr = {2: pairs, 4: pairs_x4}[scale][1].lr, {2: pairs, 4: pairs_x4}[scale][1].hr
    sr = SRConfig(scale=scale)
    seen = []
    res = train(EDSR(sr), [(lr, hr)], TrainConfig(steps=300, batch=16, seed=0),
                checkpoints=lambda step, m: seen.append(step), every=100)
    assert seen == [100, 200, 300]
    model = model_from_state(res.state, sr)
    gain = psnr_y(upscale(model, lr[:3]), hr[:3], scale) - psnr_y(upscale(None, lr[:3], scale), hr[:3], scale)
    assert gain > 0.4, gain
    assert res.patches > 10 and res.seconds > 0 and np.isfinite(res.final_loss)
    tuned = finetune(res.state, sr, [(lr, hr)], TrainConfig(steps=2, batch=2, schedule="cosine"))
    assert set(tuned.state) == set(res.state) and tuned.steps == 2
    with pytest.raises(ValueError, match="x2 SR pair" if scale == 4 else "x4 SR pair"):
        train(EDSR(SRConfig(scale=6 - scale)), [(lr, hr)], TrainConfig(steps=1))
    with pytest.raises(ValueError, match="schedule must be one of"):
        TrainConfig(schedule="step")


def test_generic_model_is_trained_once_and_cached(pairs, tmp_path):
    calls = []

    def data():
        calls.append(1)
        return [(p.lr, p.hr) for p in pairs[:1]]

    cfg, sr = TrainConfig(steps=3, batch=2), SRConfig(blocks=1, channels=4, scale=2)
    first = generic_model(data, {"segments": ["a"]}, sr, cfg, tmp_path, progress=False)
    again = generic_model(data, {"segments": ["a"]}, sr, cfg, tmp_path, progress=False)
    assert calls == [1]
    assert all(torch.equal(first.state[k], again.state[k]) for k in first.state)
    generic_model(data, {"segments": ["b"]}, sr, cfg, tmp_path, progress=False)
    assert calls == [1, 1]  # other training data, another cache entry
