import pytest

from runtime.river.dataset import build_dataset, load_pairs
from runtime.river.gameplay import GameplayConfig

# Two maps, two 1-second segments each at 8.75 fps (9 frames): real ViZDoom frames, real x264, small enough for CI.
SMALL = GameplayConfig(wad="freedoom2", maps=("MAP01", "MAP02"), segments_per_map=2, segment_s=1.0, fps=8.75, seed=1)


@pytest.fixture(scope="session")
def dataset(tmp_path_factory):
    return build_dataset(SMALL, scale=2, crf=28, root=tmp_path_factory.mktemp("river"), progress=False)


@pytest.fixture(scope="session")
def pairs(dataset):
    return load_pairs(dataset)


@pytest.fixture(scope="session")
def dataset_x4(dataset):
    """The same recording streamed at x4 (recorded once)."""
    return build_dataset(SMALL, scale=4, crf=28, root=dataset.parents[1], progress=False)


@pytest.fixture(scope="session")
def pairs_x4(dataset_x4):
    return load_pairs(dataset_x4)
