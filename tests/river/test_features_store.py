"""Patch features, K-means keys and the FAISS-indexed model store."""

import numpy as np
import pyarrow.fs as pafs
import pytest
import torch

from runtime.river.degrade import degrade, encode
from runtime.river.features import DIM, PATCH, OverlayMask, frame_patch_features, kmeans_keys, patch_features
from runtime.river.online import lookup
from runtime.river.sr import EDSR, SRConfig
from runtime.river.store import CorruptModelError, ModelStore, open_uri


@pytest.fixture(scope="module")
def features(pairs):
    return {p.segment_id: patch_features(p.lr) for p in pairs}


def test_features_are_unit_vectors_of_edge_rich_patches(features):
    for f in features.values():
        assert f.shape[1] == DIM and len(f) > 20
        assert np.allclose(np.linalg.norm(f, axis=1), 1.0, atol=1e-5)
    assert patch_features(np.full((2, 64, 64, 3), 90, np.uint8)).shape == (0, DIM)  # flat: nothing to key


def test_kmeans_keys(features):
    f = next(iter(features.values()))
    keys = kmeans_keys(f, k=8)
    assert keys.shape == (8, DIM) and np.allclose(np.linalg.norm(keys, axis=1), 1.0, atol=1e-5)
    assert kmeans_keys(f[:3], k=8).shape == (3, DIM)
    with pytest.raises(ValueError, match="flat"):
        kmeans_keys(np.zeros((0, DIM), np.float32))


def _state(seed):
    torch.manual_seed(seed)
    return EDSR(SRConfig(blocks=1, channels=4, scale=2)).state_dict()


@pytest.fixture(params=["local", "s3"])
def store_uri(request, tmp_path):
    """A store in a local directory, and one in a bucket of a real S3-compatible server."""
    if request.param == "local":
        return str(tmp_path)
    return request.getfixturevalue("s3_store_uri")


def test_store_round_trip_reload_and_corruption(features, store_uri):
    store = ModelStore(store_uri)
    ids = {}
    for seed, (sid, f) in enumerate(features.items()):
        ids[sid] = store.add(_state(seed), SRConfig(blocks=1, channels=4, scale=2), kmeans_keys(f, k=4),
                             source_segments=[sid], psnr_gain_db=0.5 + seed, train_s=1.0)
    assert sorted(ids.values()) == [1, 2, 3, 4]
    queries = np.concatenate(list(features.values()))
    got_ids, sims = store.search(queries)
    assert set(got_ids) <= set(ids.values()) and np.all(sims > 0.5)
    # patches find models of their own map more often than chance (1/2 here); how much more is the features'
    # measured quality (bench.river), not a unit-test threshold
    shares = []
    for sid, f in features.items():
        found = store.search(f)[0]
        shares.append(np.mean(np.isin(found, [ids[o] for o in ids if o.split("-")[1] == sid.split("-")[1]])))
    assert np.mean(shares) > 0.55, shares

    reopened = ModelStore(store_uri)
    assert reopened.ids() == store.ids()
    assert np.array_equal(reopened.search(queries)[0], got_ids)
    assert all(torch.equal(reopened.weights(1)[k], _state(0)[k].half()) for k in _state(0))  # stored as float16
    fs, base = open_uri(store_uri)
    names = sorted(i.path[len(base) + 1:] for i in fs.get_file_info(pafs.FileSelector(base, recursive=True))
                   if i.type == pafs.FileType.File)
    assert names == ["metadata.parquet"] + [f"weights/{i}.safetensors" for i in range(1, 5)]  # nothing left aside

    with fs.open_output_stream(f"{base}/weights/2.safetensors") as f:
        f.write(b"garbage")
    fs.delete_file(f"{base}/weights/3.safetensors")
    damaged = ModelStore(store_uri)
    assert damaged.problems == {2: "checksum mismatch", 3: "weight file missing"}
    assert damaged.ids() == [1, 4] and set(damaged.search(queries)[0]) <= {1, 4}
    assert damaged.weights(4)  # the rest keeps serving

    reopened.remove(4)
    assert reopened.add(_state(9), SRConfig(blocks=1, channels=4, scale=2), kmeans_keys(queries[:10], k=2),
                        source_segments=["x"], psnr_gain_db=0.1, train_s=0.1) == 5  # ids are never reused
    with pytest.raises(CorruptModelError, match="model 2"):
        reopened.weight_bytes(2)
    assert 2 not in reopened.ids()  # found corrupt while serving: taken out of the index
    with pytest.raises(ValueError, match="keys must be"):
        reopened.add(_state(0), SRConfig(), np.zeros((2, 5)), source_segments=[], psnr_gain_db=0, train_s=0)
    with pytest.raises(KeyError, match="no model 99"):
        reopened.info(99)


def test_overlay_mask_learns_the_status_bar(pairs):
    mask = OverlayMask(min_pairs=16)
    mask.update(pairs[0].lr[:5])
    assert mask.positions() is None  # too little seen to tell overlay from a player standing still
    for p in pairs:
        mask.update(p.lr)
    cols = pairs[0].lr.shape[2] // PATCH
    overlay = mask.positions().reshape(-1, cols)
    assert overlay[-1].all()  # the bottom patch row is ViZDoom's status bar
    assert not overlay[:-2].any()  # the 3D view above it changes as the player moves
    f_all, _ = frame_patch_features(pairs[0].lr)
    f_view, frame_of = frame_patch_features(pairs[0].lr, mask.positions())
    assert 0 < len(f_view) < len(f_all) and frame_of.max() == len(pairs[0].lr) - 1
    top = frame_patch_features(pairs[0].lr, mask.positions(), per_frame=5)[1]
    assert np.bincount(top).max() <= 5


def test_lookup_finds_the_model_of_near_duplicate_content(pairs, tmp_path):
    """Every segment has a model, keyed as the online path keys a fine-tune (its lookup features, overlay masked);
    the same gameplay streamed again at other qualities (real re-encodes at other CRFs) finds its own segment's
    model - among models of the same map's neighbouring segment too."""
    mask = OverlayMask(min_pairs=16)
    for p in pairs:
        mask.update(p.lr)
    overlay = mask.positions()
    store = ModelStore(tmp_path)
    ids = {p.segment_id: store.add(_state(0), SRConfig(blocks=1, channels=4, scale=2),
                                   kmeans_keys(lookup(store, p.lr, overlay).features),
                                   source_segments=[p.segment_id], psnr_gain_db=0.0, train_s=0.0) for p in pairs}
    for crf in (23, 36):
        for p in pairs:
            _, again = degrade(p.hr, fps=8.75, crf=crf, scale=2)
            assert not np.array_equal(again, p.lr)
            found = lookup(store, again, overlay)
            assert found.model_id == ids[p.segment_id], (crf, p.segment_id, found.model_id)
            assert found.vote_share > 0.5 and found.ms > 0


def test_bad_frames_get_clear_errors(tmp_path):
    store = ModelStore(tmp_path)
    good = np.zeros((2, 64, 64, 3), np.uint8)
    for frames, msg in ((np.zeros((64, 64, 3), np.uint8), r"\(T, H, W, 3\) RGB array, got shape \(64, 64, 3\)"),
                        (np.zeros((2, 64, 64, 4), np.uint8), "RGB array"),
                        (good.astype(np.float32), "must be uint8, got float32"),
                        (good[:0], "empty"),
                        ([[1, 2, 3]], "got shape list"),
                        (np.zeros((1, 16, 16, 3), np.uint8), "smaller than one 32x32 patch")):
        with pytest.raises(ValueError, match=msg):
            patch_features(frames)
    with pytest.raises(ValueError, match="lr must be uint8"):
        lookup(store, good.astype(np.float64))
    with pytest.raises(ValueError, match="exclude mask has"):
        patch_features(good, exclude=np.zeros(3, bool))
    with pytest.raises(ValueError, match="odd"):
        encode(np.zeros((1, 15, 16, 3), np.uint8), 10, crf=23)


def test_x4_models_round_trip_and_one_store_serves_one_scale(features, tmp_path):
    from runtime.river.online import LocalTrainer, OnlineRiver
    from runtime.river.train import TrainResult, model_from_state

    x4 = SRConfig(blocks=1, channels=4, scale=4)
    torch.manual_seed(0)
    state = EDSR(x4).state_dict()
    store = ModelStore(tmp_path)
    keys = kmeans_keys(next(iter(features.values())), k=4)
    model_id = store.add(state, x4, keys, source_segments=["a"], psnr_gain_db=0.2, train_s=1.0)
    reopened = ModelStore(tmp_path)
    assert reopened.info(model_id).sr == x4
    model = model_from_state(reopened.weights(model_id), reopened.info(model_id).sr)
    assert model(torch.zeros(1, 3, 180, 320)).shape == (1, 3, 720, 1280)
    x2 = SRConfig(blocks=1, channels=4, scale=2)
    with pytest.raises(ValueError, match="holds x4 models and the generic model is x2"):
        OnlineRiver(reopened, TrainResult(EDSR(x2).state_dict(), x2, 0, 0.0, 0.0, 0), LocalTrainer())


def test_weights_that_do_not_fit_float16_are_refused_by_name(tmp_path):
    store = ModelStore(tmp_path)
    state = _state(0)
    name = next(iter(state))
    state[name] = state[name] * 1e6
    with pytest.raises(ValueError, match=name):
        store.add(state, SRConfig(blocks=1, channels=4, scale=2), np.ones((2, DIM), np.float32),
                  source_segments=["x"], psnr_gain_db=0.1, train_s=0.1)
    assert store.ids() == [] and not list((tmp_path / "weights").glob("*"))


def test_a_store_uri_that_cannot_be_opened_is_refused_without_its_credentials():
    with pytest.raises(ValueError, match=r"store: cannot open 'nosuch://\*\*\*@bucket/x'") as e:
        ModelStore("nosuch://key:secret@bucket/x")
    assert "secret" not in str(e.value)
