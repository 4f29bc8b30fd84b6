import itertools

import pytest

from runtime.agents.kv import (
    CpuBlockPool,
    GpuBlockPool,
    KVAction,
    MemoryView,
    Waste,
    WatermarkKVManager,
    astraea_waste,
    blocks_for,
    infercept_waste,
)


def test_blocks_round_up():
    assert [blocks_for(t, 16) for t in (0, 1, 16, 17, 32)] == [0, 1, 1, 2, 2]


def test_pool_allocates_and_frees():
    pool = GpuBlockPool(10, 16)
    assert pool.allocate("a", 6) and pool.free == 4
    assert not pool.allocate("b", 5)
    assert pool.free_job("a") == 6 and pool.free == 10


def test_prefix_cache_keeps_full_blocks_and_counts_as_free():
    pool = GpuBlockPool(10, 16)
    pool.allocate("a", 4)
    pool.release_to_cache("a", 50)  # 3 full blocks of 16 survive, the partial one is freed
    assert pool.free == 10 and pool.cached_blocks == 3
    assert pool.take_cached("a") == 3 and pool.owned["a"] == 3 and pool.free == 7


def test_prefix_cache_evicts_least_recently_freed_first():
    pool = GpuBlockPool(10, 16)
    pool.allocate("old", 4)
    pool.allocate("new", 4)
    pool.release_to_cache("old", 64)
    pool.release_to_cache("new", 64)
    assert pool.allocate("x", 5)  # needs 3 of the 8 cached blocks: taken from "old" first
    assert pool.take_cached("old") == 1 and pool.take_cached("new") == 4 and pool.cached_blocks == 0


def test_cpu_pool_capacity():
    cpu = CpuBlockPool(4)
    assert cpu.allocate("a", 3) and not cpu.allocate("b", 2)
    cpu.free_job("a")
    assert cpu.free == 4


def test_waste_formulas():
    w = astraea_waste(t_api=2.0, c_self=100, c_batch=1000, t_recompute=0.1, t_swap=0.05, bytes_per_token=2)
    assert w == Waste(preserve=400.0, discard=200.0, swap=200.0)
    w = infercept_waste(t_int=2.0, c_self=100, c_other=1000, t_fwd=0.1, t_swap=0.05, bytes_per_token=2)
    assert w.discard == pytest.approx(0.1 * 100 * 2 + 0.1 * 1000 * 2)
    assert w.preserve == 400.0 and w.swap == pytest.approx(200.0)


def test_ties_prefer_least_disruptive_option():
    assert Waste(1.0, 1.0, 1.0).best() is KVAction.PRESERVE
    assert Waste(2.0, 1.0, 1.0).best() is KVAction.SWAP
    assert Waste(2.0, 1.0, 1.0).best(swap_ok=False) is KVAction.DISCARD
    assert Waste(2.0, 1.0, 1.0 + 1e-9).best() is KVAction.DISCARD


@pytest.mark.parametrize("swap_ok", [True, False])
def test_the_best_option_is_the_least_waste_with_ties_to_the_least_disruptive(swap_ok):
    rank = {KVAction.PRESERVE: 0, KVAction.SWAP: 1, KVAction.DISCARD: 2}
    for preserve, discard, swap in itertools.product((0.0, 1.0, 2.0), repeat=3):
        w = Waste(preserve, discard, swap)
        allowed = [a for a in rank if swap_ok or a is not KVAction.SWAP]
        cost = {KVAction.PRESERVE: preserve, KVAction.SWAP: swap, KVAction.DISCARD: discard}
        assert w.best(swap_ok) is min(allowed, key=lambda a: (cost[a], rank[a])), (w, swap_ok)


def _view(used: int, batch_tokens: int = 1000, cpu_free: int = 100) -> MemoryView:
    return MemoryView(gpu_blocks=100, gpu_used_blocks=used, cpu_free_blocks=cpu_free, block_size=16,
                      batch_tokens=batch_tokens, link_backlog_s=0.0)


def test_watermark_boundary():
    m = WatermarkKVManager(high_watermark=0.8)
    args = dict(t_api=10.0, c_self=160, t_recompute=0.01, t_swap=0.001, bytes_per_token=1)
    assert m.decide(_view(79), **args) is KVAction.PRESERVE  # just below the watermark: always preserve
    assert m.decide(_view(80), **args) is KVAction.SWAP  # at it: least waste (swap 2, discard 10, keep 1600)
    assert m.decide(_view(80, cpu_free=9), **args) is KVAction.DISCARD  # swap needs 10 free CPU blocks
    short = dict(args, t_api=0.001)
    assert m.decide(_view(95), **short) is KVAction.PRESERVE  # a call about to end is worth keeping
    with pytest.raises(ValueError, match="high_watermark"):
        WatermarkKVManager(0.0)
