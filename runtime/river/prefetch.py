"""Model prefetching: which models a client will need next.

Three sources. Transitions: per game (WAD) and globally, count transitions between consecutive segments' models;
the prediction for a client that just used model m is the top-k of its game's row for m, filled up from the
global row, then from the most used models overall (a new game still gets useful guesses). New models: a model
that joins the store has never been used, so no transition predicts it, and the first session to need it would
stall; it is offered at once to every session whose latest segment looks like the content it was trained on
(mean best cosine similarity of that segment's patch features to the model's keys), ahead of the transitions.
Contenders: the models that got nearly as many of the latest segment's frame votes as the one chosen
(`Lookup.contenders`), after the new models and ahead of the transitions. Where a game's stored models are
near-equal the vote splits among a few of them, and the next segment of the same content is most likely to
choose one of those; the lookup in turn prefers a model the client holds among near-equal ones
(`Lookup.keeping`). A hit is the next segment's model being among those sent, or needing no fetch: the model
already in use, or the generic model every client ships with (which is never sent). A session that has not
played yet is sent its game's most used models.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from runtime.river.online import GENERIC


@dataclass
class TransitionModel:
    per_game: dict[str, dict[int, Counter]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(Counter)))
    overall: dict[int, Counter] = field(default_factory=lambda: defaultdict(Counter))
    popularity: Counter = field(default_factory=Counter)
    popular_in: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))

    def observe(self, game: str, prev: int | None, nxt: int) -> None:
        self.popularity[nxt] += 1
        self.popular_in[game][nxt] += 1
        if prev is not None:
            self.per_game[game][prev][nxt] += 1
            self.overall[prev][nxt] += 1

    def predict(self, game: str, current: int, k: int) -> list[int]:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        out: list[int] = []
        for counts in (self.per_game.get(game, {}).get(current), self.overall.get(current), self.popularity):
            for model, _ in sorted((counts or {}).items(), key=lambda kv: (-kv[1], kv[0])):
                if model not in (current, GENERIC) and model not in out:
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
    _content: dict[str, np.ndarray] = field(default_factory=dict)  # session -> its latest segment's features
    _offered: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    _contenders: dict[str, list[int]] = field(default_factory=dict)

    def use(self, session: str, game: str, model_id: int, features: np.ndarray | None = None,
            contenders: Sequence[int] = ()) -> bool | None:
        """Record that `session` now uses `model_id` (`features`: its segment's unit patch features, which new
        models are matched against; `contenders`: the segment's near-equal alternatives, most votes first);
        returns whether it was prefetched (None for a session's first segment, which nothing could have
        predicted)."""
        prev = self._last.get(session)
        hit = None
        if prev is not None:
            hit = model_id in (prev, GENERIC) or model_id in self.next_models(session)
            self.lookups += 1
            self.hits += hit
        self.model.observe(game, prev, model_id)
        self._last[session] = model_id
        self._predicted[session] = self.model.predict(game, model_id, self.k)
        self._contenders[session] = [m for m in contenders if m != GENERIC]
        if model_id in self._offered.get(session, ()):
            self._offered[session].remove(model_id)
        if features is not None and len(features):
            self._content[session] = features
        return hit

    def offer(self, model_id: int, keys: np.ndarray, similarity: float) -> list[str]:
        """A new model: offer it to the sessions whose latest content it matches; returns them."""
        out = []
        for session, features in self._content.items():
            if float((features @ keys.T).max(axis=1).mean()) >= similarity:
                self._offered[session].insert(0, model_id)
                del self._offered[session][self.k:]
                out.append(session)
        return out

    def knows(self, session: str) -> bool:
        return session in self._last

    def popular(self, game: str) -> list[int]:
        """The game's most used models, for a session that has not played yet (its first segment's model)."""
        counts = self.model.popular_in.get(game, Counter())
        return [m for m, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if m != GENERIC][:self.k]

    def next_models(self, session: str) -> list[int]:
        """New models offered to the session (newest first), then its latest segment's contenders, then the
        transitions' prediction; at most k."""
        out: list[int] = []
        for source in (self._offered.get(session, []), self._contenders.get(session, []),
                       self._predicted.get(session, [])):
            out += [m for m in source if m != self._last.get(session) and m not in out]
        return out[:self.k]

    def held(self, session: str, game: str) -> list[int]:
        """The models the session's client holds, the one it plays first, then those sent ahead of need (before
        its first segment: the generic model, then its game's most used models)."""
        if session not in self._last:
            return [GENERIC, *self.popular(game)]
        return [self._last[session], *self.next_models(session)]

    @property
    def hit_rate(self) -> float:
        return self.hits / self.lookups if self.lookups else 0.0
