"""River as the service runs it for its players: the online path (`OnlineRiver`) and the prefetcher
(`PrefetchTracker`) kept in step, session by session.

Each segment is decided with the session's models known (the one it plays and those it was sent ahead), so the
client keeps or takes one of them while its frames still vote for it nearly as much as for the winner
(`GateConfig.keep_held_votes` says why). Each decision is then recorded for prefetching with the segment's
content and its near-equal alternatives, and each model that joins the store is offered to the sessions playing
content like its own.
The Ray actor (`actors.model_store`) and the offline benchmark (`bench.river`) both call this, so they cannot
drift apart.
"""

from __future__ import annotations

import numpy as np

from runtime.river.online import Decision, OnlineRiver
from runtime.river.prefetch import PrefetchTracker


class RiverSessions:
    def __init__(self, river: OnlineRiver, prefetch: PrefetchTracker | None = None):
        self.river = river
        self.prefetch = prefetch or PrefetchTracker()

    def process(self, session: str, game: str, segment_id: str, lr: np.ndarray, hr: np.ndarray,
                hr_index: list[int] | None = None) -> Decision:
        """The model for one segment of `session` (playing `game`), recorded for prefetching."""
        decision = self.river.process(segment_id, lr, hr, hr_index, game, held=self.prefetch.held(session, game))
        self.prefetch.use(session, game, decision.model_id, decision.features, decision.contenders)
        return decision

    def collect(self, wait: bool = False) -> list[int]:
        """Finished checks and fine-tunes join the store (`OnlineRiver.collect`); each new model is offered to the
        sessions whose latest content it matches. Returns the new ids."""
        new = self.river.collect(wait)
        for model_id in new:
            self.prefetch.offer(model_id, self.river.store.info(model_id).keys, self.river.gate.same_content)
        return new
