"""Prefetch prediction from learned model transitions."""

import pytest

from runtime.river.prefetch import PrefetchTracker, TransitionModel


def test_predictions_prefer_the_game_then_global_then_popular():
    t = TransitionModel()
    for a, b in ((1, 2), (1, 2), (1, 3)):
        t.observe("freedoom2", a, b)
    t.observe("freedoom1", 1, 4)
    t.observe("freedoom1", 1, 4)
    t.observe("freedoom1", 1, 4)
    t.observe("freedoom1", None, 7)
    assert t.predict("freedoom2", 1, 2) == [2, 3]
    assert t.predict("freedoom2", 1, 3) == [2, 3, 4]  # filled from the global row
    assert t.predict("unseen", 9, 2) == [4, 2]  # nothing known about 9: the most used models
    with pytest.raises(ValueError, match="k must be"):
        t.predict("freedoom2", 1, 0)


def test_hit_rate_on_a_repeating_stream():
    tracker = PrefetchTracker(k=1)
    stream = [1, 2, 3] * 5
    results = [tracker.use("s", "g", m) for m in stream]
    assert results[0] is None
    assert results[1:3] == [False, False]  # nothing learned yet
    assert all(results[3:])  # 3 -> 1 guessed from popularity, then every transition is learned
    assert tracker.hit_rate == pytest.approx(12 / 14)
    assert tracker.next_models("s") == [1]


def test_a_new_model_is_offered_to_the_sessions_playing_its_content():
    import numpy as np

    rng = np.random.default_rng(0)

    def unit(x):
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    corridor, cave = unit(rng.normal(size=(20, 38))), unit(rng.normal(size=(20, 38)))
    tracker = PrefetchTracker(k=2)
    tracker.use("a", "g", 0, corridor)
    tracker.use("b", "g", 0, cave)
    assert tracker.offer(5, corridor, similarity=0.9) == ["a"]  # keyed by a's content only
    assert tracker.next_models("a")[0] == 5 and 5 not in tracker.next_models("b")
    assert tracker.use("a", "g", 5, corridor) is True  # never used before, yet prefetched: a hit
    assert 5 not in tracker.next_models("a")  # in use now: nothing to send
    assert tracker.popular("g") == [5] and tracker.popular("unseen") == []  # for a session not seen yet
    assert tracker.held("a", "g") == [5, *tracker.next_models("a")] and tracker.held("new", "g") == [0, 5]


def test_contenders_are_sent_ahead_and_the_generic_model_is_never_sent():
    """A segment whose vote split between models 4 and 6 (4 chosen) sends 6 ahead of the learned transitions; the
    generic model (0) ships with every client: never predicted, and using it needs no fetch."""
    tracker = PrefetchTracker(k=2)
    for m in (1, 0, 1, 2):
        tracker.use("s", "g", m)
    assert 0 not in tracker.model.predict("g", 1, 3)
    tracker.use("s", "g", 4, contenders=[6, 0])
    assert tracker.next_models("s")[0] == 6 and 0 not in tracker.next_models("s")
    hits = tracker.hits
    assert tracker.use("s", "g", 6) is True and tracker.use("s", "g", 0) is True
    assert tracker.hits == hits + 2
