"""`ModelStoreActor`: River's model store as one named actor, the store's single writer.

It runs the online path (`runtime.river.online.OnlineRiver`: lookup, quality gate, fine-tune on a miss) with the
gate's checks and the fine-tunes as Ray tasks (`RayGate`, `RayTrainer`, at most `max_finetunes` fine-tunes at a
time), so a segment's call does only the lookup; a fine-tune for content already being
trained is not started twice (the online path's same-content check). Actor calls run one at a time, so every
reader sees a consistent store. The store is files (Parquet metadata + safetensors weights, each written whole)
at `store_uri`, a local path or shared storage such as S3: a restarted actor (Ray `max_restarts`) reloads every
model, on any node that reaches that storage. Fine-tunes still running when the actor
died are lost; their content is simply missed again and retrained.
"""

from __future__ import annotations

import numpy as np
import ray

from actors.river_tasks import RayGate, RayTrainer
from runtime.river.online import GENERIC, GateConfig, OnlineRiver
from runtime.river.sessions import RiverSessions
from runtime.river.store import ModelStore, encode_weights
from runtime.river.train import TrainConfig, load_generic

STORE_NAME = "agentriver-model-store"


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class ModelStoreActor:
    def __init__(self, store_uri: str, generic_path: str, max_finetunes: int = 2, gate: dict | None = None,
                 finetune: dict | None = None, finetune_cpus: float = 1.0, gate_cpus: float = 0.0):
        self.store = ModelStore(store_uri)
        self.trainer = RayTrainer(max_finetunes, num_cpus=finetune_cpus)
        self.river = OnlineRiver(self.store, load_generic(generic_path), self.trainer, gate=GateConfig(**(gate or {})),
                                 finetune=TrainConfig(**(finetune or {})), checks=RayGate(gate_cpus))
        self.sessions = RiverSessions(self.river)
        self.prefetch = self.sessions.prefetch
        self._generic: tuple[bytes, str] | None = None  # the generic model's weight bytes and checksum
        self.lookups = {"hit": 0, "miss": 0}

    def process(self, session: str, game: str, segment_id: str, lr: np.ndarray, hr: np.ndarray,
                hr_index: list[int] | None = None) -> dict:
        """Choose the model for one segment of `session` (playing `game`); finished fine-tunes join the store
        first, so a segment sees every model trained so far."""
        self.collect()
        decision = self.sessions.process(session, game, segment_id, lr, hr, hr_index)
        self.lookups["hit" if decision.model_id == decision.voted_id and decision.voted_id > 0 else "miss"] += 1
        return decision.answer()

    def collect(self, wait: bool = False) -> list[int]:
        """Finished checks and fine-tunes join the store; each new model is offered to the sessions playing
        content like its own (prefetch)."""
        return self.sessions.collect(wait)

    def ids(self) -> list[int]:
        self.collect()
        return self.store.ids()

    def weights(self, model_id: int) -> tuple[bytes, str]:
        """The model's safetensors bytes and their checksum (an HTTP ETag); id 0 is the generic model."""
        if model_id == GENERIC:
            if self._generic is None:
                self._generic = encode_weights(self.river.generic.state)
            return self._generic
        return self.store.weight_bytes(model_id), self.store.info(model_id).checksum

    def sr_config(self, model_id: int) -> dict:
        sr = self.river.generic.sr if model_id == GENERIC else self.store.info(model_id).sr
        return sr.to_dict()

    def knows(self, session: str) -> bool:
        return self.prefetch.knows(session)

    def next_models(self, session: str) -> list[int]:
        return self.prefetch.next_models(session)

    def popular(self, game: str) -> list[int]:
        return self.prefetch.popular(game)

    def stats(self) -> dict:
        """Finished checks and fine-tunes are applied first (they are otherwise applied when a segment arrives)."""
        self.collect()
        return {"models": len(self.store), "problems": dict(self.store.problems), "lookups": dict(self.lookups),
                "finetunes": {**self.trainer.counts(), "pending_in_store": len(self.river.pending)},
                "gate": {**self.river.counts, "in_flight": len(self.river.checking)},
                "prefetch_hit_rate": self.prefetch.hit_rate, "node": ray.get_runtime_context().get_node_id()}
