"""Game video from ViZDoom, its degraded stream and the cached on-disk dataset."""

import numpy as np
import pytest

from runtime.river.dataset import SCHEMA, build_dataset, read_index
from runtime.river.degrade import area_downscale, decode, encode
from runtime.river.gameplay import GameplayConfig, play
from runtime.river.sr import psnr_y
from tests.conftest import SMALL


def test_config_errors_name_the_field():
    for kwargs, msg in (({"wad": "doom2"}, "wad must be one of"), ({"maps": ("E1M1",)}, "not a freedoom2 map"),
                        ({"wad": "freedoom1", "maps": ("MAP01",)}, "not a freedoom1 map"),
                        ({"fps": 50}, "fps must be in"), ({"maps": ()}, "at least one map")):
        with pytest.raises(ValueError, match=msg):
            GameplayConfig(**kwargs)
    assert GameplayConfig(fps=15).real_fps == 17.5  # 35 tics/s, a frame every 2 tics


def test_index_and_pairs(dataset, pairs):
    table = read_index(dataset)
    assert table.schema.equals(SCHEMA)
    assert table.column("segment_id").to_pylist() == [f"freedoom2-{m}-{i:04d}" for m in ("MAP01", "MAP02")
                                                      for i in range(2)]
    assert table.column("start_frame").to_pylist() == [0, 9, 0, 9]
    for p in pairs:
        assert p.hr.shape == (9, 720, 1280, 3) and p.lr.shape == (9, 360, 640, 3)
        assert p.hr.std() > 10  # a rendered scene, not a blank screen
        assert np.abs(p.hr[-1].astype(int) - p.hr[0]).mean() > 2  # the player moved
        # lossy but close: the streamed low-res frames against the exact area downscale of the ground truth
        assert 25 < psnr_y(p.lr, area_downscale(p.hr, 2), crop=0) < 60


def test_ground_truth_is_lossless_and_recording_reproducible(pairs):
    first = next(iter(play(SMALL)))
    assert np.array_equal(first.frames, pairs[0].hr)


def test_dataset_is_cached_by_content(dataset, dataset_x4, pairs, pairs_x4):
    before = dataset.stat().st_mtime_ns
    assert build_dataset(SMALL, scale=2, crf=28, root=dataset.parents[1], progress=False) == dataset
    assert dataset.stat().st_mtime_ns == before
    other = build_dataset(SMALL, scale=2, crf=35, root=dataset.parents[1], progress=False)  # another stream
    assert other != dataset and other.parent == dataset.parent  # of the same recording
    assert dataset_x4 != dataset and dataset_x4.parent == dataset.parent
    assert read_index(dataset_x4).column("scale").to_pylist() == [4] * 4
    for a, b in zip(pairs, pairs_x4, strict=True):
        assert np.array_equal(a.hr, b.hr) and b.lr.shape[1:3] == (180, 320)
        assert 25 < psnr_y(b.lr, area_downscale(b.hr, 4), crop=0) < 60
        assert b.lr_bytes < a.lr_bytes  # a quarter of the pixels


def test_scales_that_do_not_fit_the_frame_are_refused(dataset):
    for scale, msg in ((3, "x3 does not divide the frame size 1280x720"), (16, "4:2:0 video needs even sides"),
                       (0, "scale must be a positive integer")):
        with pytest.raises(ValueError, match=msg):
            build_dataset(SMALL, scale=scale, root=dataset.parents[1], progress=False)


def test_codec_errors():
    with pytest.raises(ValueError, match="cannot decode video"):
        decode(b"definitely not an mp4")
    with pytest.raises(ValueError, match="crf must be in"):
        encode(np.zeros((1, 16, 16, 3), np.uint8), 10, crf=60)
    with pytest.raises(ValueError, match="x2 does not divide the frame size 16x15"):
        area_downscale(np.zeros((1, 15, 16, 3), np.uint8), 2)
