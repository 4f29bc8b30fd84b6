"""Model prefetching: which models a client will need next, from model-to-model transitions learned online.

Per game (WAD) and globally, count transitions between consecutive segments' models. The prediction for a
client that just used model m is the top-k of its game's row for m, filled up from the global row, then from
the most used models overall (a new game still gets useful guesses). A hit is the next segment's model being
among the k predicted (or being the model already in use: no fetch needed).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field


@dataclass
class TransitionModel:
    per_game: dict[str, dict[int, Counter]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(Counter)))
    overall: dict[int, Counter] = field(default_factory=lambda: defaultdict(Counter))
    popularity: Counter = field(default_factory=Counter)

    def observe(self, game: str, prev: int | None, nxt: int) -> None:
        self.popularity[nxt] += 1
        if prev is not None:
            self.per_game[game][prev][nxt] += 1
            self.overall[prev][nxt] += 1

    def predict(self, game: str, current: int, k: int) -> list[int]:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        out: list[int] = []
        for counts in (self.per_game.get(game, {}).get(current), self.overall.get(current), self.popularity):
            for model, _ in sorted((counts or {}).items(), key=lambda kv: (-kv[1], kv[0])):
                if model != current and model not in out:
                    out.append(model)
                    if len(out) == k:
                        return out
        return out


@dataclass
class PrefetchTracker:
    """Hit rate of top-k prefetching over a stream of (session, game, model) uses, learning as it goes."""

    k: int = 3
    model: TransitionModel = field(default_factory=TransitionModel)
    hits: int = 0
    lookups: int = 0
    _last: dict[str, int] = field(default_factory=dict)
    _predicted: dict[str, list[int]] = field(default_factory=dict)

    def use(self, session: str, game: str, model_id: int) -> bool | None:
        """Record that `session` now uses `model_id`; returns whether it was prefetched (None for a session's
        first segment, which nothing could have predicted)."""
        prev = self._last.get(session)
        hit = None
        if prev is not None:
            hit = model_id == prev or model_id in self._predicted.get(session, [])
            self.lookups += 1
            self.hits += hit
        self.model.observe(game, prev, model_id)
        self._last[session] = model_id
        self._predicted[session] = self.model.predict(game, model_id, self.k)
        return hit

    def knows(self, session: str) -> bool:
        return session in self._last

    def next_models(self, session: str) -> list[int]:
        return list(self._predicted.get(session, []))

    @property
    def hit_rate(self) -> float:
        return self.hits / self.lookups if self.lookups else 0.0
