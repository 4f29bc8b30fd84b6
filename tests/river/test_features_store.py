"""Patch features, K-means keys and the FAISS-indexed model store."""

import numpy as np
import pytest
import torch

from runtime.river.features import DIM, kmeans_keys, patch_features
from runtime.river.sr import EDSR, SRConfig
from runtime.river.store import CorruptModelError, ModelStore


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
    return EDSR(SRConfig(blocks=1, channels=4)).state_dict()


def test_store_round_trip_reload_and_corruption(features, tmp_path):
    store = ModelStore(tmp_path)
    ids = {}
    for seed, (sid, f) in enumerate(features.items()):
        ids[sid] = store.add(_state(seed), SRConfig(blocks=1, channels=4), kmeans_keys(f, k=4),
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

    reopened = ModelStore(tmp_path)
    assert reopened.ids() == store.ids()
    assert np.array_equal(reopened.search(queries)[0], got_ids)
    assert all(torch.equal(reopened.weights(1)[k], _state(0)[k]) for k in _state(0))
    assert not list(tmp_path.rglob("*.tmp"))

    (tmp_path / "weights" / "2.safetensors").write_bytes(b"garbage")
    (tmp_path / "weights" / "3.safetensors").unlink()
    damaged = ModelStore(tmp_path)
    assert damaged.problems == {2: "checksum mismatch", 3: "weight file missing"}
    assert damaged.ids() == [1, 4] and set(damaged.search(queries)[0]) <= {1, 4}
    assert damaged.weights(4)  # the rest keeps serving

    reopened.remove(4)
    assert reopened.add(_state(9), SRConfig(blocks=1, channels=4), kmeans_keys(queries[:10], k=2),
                        source_segments=["x"], psnr_gain_db=0.1, train_s=0.1) == 5  # ids are never reused
    with pytest.raises(CorruptModelError, match="model 2"):
        reopened.weight_bytes(2)
    assert 2 not in reopened.ids()  # found corrupt while serving: taken out of the index
    with pytest.raises(ValueError, match="keys must be"):
        reopened.add(_state(0), SRConfig(), np.zeros((2, 5)), source_segments=[], psnr_gain_db=0, train_s=0)
    with pytest.raises(KeyError, match="no model 99"):
        reopened.info(99)
