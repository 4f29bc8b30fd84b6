"""River's online path: pick a stored model for each segment, check it on the server, fine-tune on a miss.

Per frame, every edge-rich patch outside the game's overlay (HUD; learned by `OverlayMask` from the stream) finds
its nearest key (one FAISS search for the whole segment); the frame votes for the model most of its patches
found, and the segment uses the model most frames voted for (clients should not switch models within a segment),
or a model the session's client already holds if its frames gave it nearly as many votes (`Lookup.keeping`).
The game server has the 720p frames, so the quality gate measures the chosen model's PSNR gain over the generic
model (which every client has) on a few sampled frames. The gate is off the segment's path: it runs on a
`GateRunner` (a Ray worker in the service, a bounded number of checks at once; a check that finds them all busy
is skipped), and the segment is answered from the lookup with the model's latest measured gain (the gain
recorded when it was trained, until a check measures it again). A runner that checks at once (`InlineGate`, the
offline benchmark's) makes the answer use this segment's own verdict. A segment that found no model is a miss
without a check. Below the target, a fine-tune of the segment is submitted - unless one for the same content is
already running, the content was already tried (`GateConfig`), or the fine-tune queue is full - so a segment
never waits for the gate or for training. It continues from the model the segment found when that one beats the
generic model there, so a stored model of recurring content keeps learning it. Finished fine-tunes are scored on
the gate's runner and added to the store by `collect()`, keyed by the K-means centroids of their segment's patch
features. The overlay mask is learned per game: each game draws its own HUD, and streams of one game share it.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, fields, replace
from typing import Protocol

import numpy as np
import torch

from runtime.river.features import OverlayMask, frame_patch_features, kmeans_keys
from runtime.river.patches import check_frames
from runtime.river.sr import EDSR, SRConfig, psnr_y, upscale
from runtime.river.store import ModelStore, as_stored, redacted
from runtime.river.train import Pairs, TrainConfig, TrainResult, finetune, model_from_state

GENERIC = 0  # model id of the generic model (never in the store)
# Patches per frame the lookup uses (the most edge-rich ones outside the overlay; a 640x360 frame has ~70 that
# pass the edge threshold). bench.river_lookup, 24 Freedoom segments: segment votes land on the same map as often
# with 32 as with all of them (0.958), frame votes 0.84 vs 0.87, and the FAISS search over 16,000 keys costs
# half as much.
LOOKUP_PATCHES = 32


class Trainer(Protocol):
    """Runs fine-tunes somewhere (a thread pool here, Ray tasks on a cluster)."""

    def submit(self, base: dict[str, torch.Tensor], sr: SRConfig, pairs: Pairs, cfg: TrainConfig) -> Future: ...


@dataclass(frozen=True)
class Lookup:
    model_id: int  # -1: nothing found (empty store, or no edge-rich patch outside the overlay)
    vote_share: float  # share of frames that voted for it
    ms: float  # features + search + vote
    features: np.ndarray  # the segment's patch features (they key a fine-tune of it)
    frame_votes: dict[int, int] = field(default_factory=dict)  # model id -> frames that voted for it

    def keeping(self, held: Sequence[int], share: float) -> Lookup:
        """This lookup with a model the client already holds as its choice when at least `share` times as many
        frames voted for it as for the winner: frame votes between near-equal models are noise, and a switch to a
        model the client does not hold costs it a download. `held`: the client's models in order of preference,
        the one it plays first (kept over every other), then those sent ahead of need (the one with the most
        votes among them)."""
        if not held or not self.frame_votes:
            return self
        best = self.frame_votes[self.model_id]
        near = [m for m in held if self.frame_votes.get(m, 0) >= max(share * best, 1)]
        if held[0] in near:
            choice = held[0]  # the model it plays: no switch at all
        elif not near or self.model_id in held:
            return self
        else:
            choice = max(near, key=lambda m: self.frame_votes[m])
        if choice == self.model_id:
            return self
        return replace(self, model_id=choice, vote_share=self.vote_share * self.frame_votes[choice] / best)

    def contenders(self, share: float) -> list[int]:
        """Models other than the choice that got at least `share` times the winner's frame votes, most votes
        first: the segment's near-equal alternatives, which the next segment of the same content may well choose."""
        if not self.frame_votes:
            return []
        floor = share * max(self.frame_votes.values())
        return [m for m, v in sorted(self.frame_votes.items(), key=lambda kv: (-kv[1], kv[0]))
                if m != self.model_id and v >= floor]


def lookup(store: ModelStore, lr: np.ndarray, overlay: np.ndarray | None = None,
           per_frame: int | None = LOOKUP_PATCHES) -> Lookup:
    """Vote for a stored model for low-res frames `lr` (T, H, W, 3); `overlay`: grid positions to ignore.
    Features are taken frame by frame (whole-segment arrays fall out of the CPU cache and are slower), then
    searched at once."""
    check_frames(lr, "lr")
    t0 = time.perf_counter()
    chunks = [frame_patch_features(frame[None], overlay, per_frame=per_frame)[0] for frame in lr]
    features = np.concatenate(chunks)
    frame_of = np.repeat(np.arange(len(lr)), [len(f) for f in chunks])
    ids, _ = store.search(features)
    found = ids >= 0
    votes = [np.bincount(ids[found & (frame_of == i)]).argmax() for i in range(len(lr))
             if np.any(found & (frame_of == i))]
    if not votes:
        return Lookup(-1, 0.0, (time.perf_counter() - t0) * 1e3, features)
    values, counts = np.unique(votes, return_counts=True)
    best = int(np.argmax(counts))
    return Lookup(int(values[best]), float(counts[best] / len(lr)), (time.perf_counter() - t0) * 1e3, features,
                  dict(zip(values.tolist(), counts.tolist(), strict=True)))


class GateRunner(Protocol):
    """Runs the gate's quality checks somewhere (`concurrent.futures.Executor.submit` has this shape)."""

    def submit(self, fn, /, *args) -> Future: ...


class InlineGate:
    """Checks at once, inside the call: the verdict is known before the segment is answered. For an offline run,
    where no player waits; a live service runs checks on workers instead."""

    def submit(self, fn, /, *args) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except Exception as e:  # noqa: BLE001 - the future carries it, as an executor's would
            future.set_exception(e)
        return future


def gate_check(generic: TrainResult, model: TrainResult | None, lr: np.ndarray, hr: np.ndarray) -> tuple[float, float]:
    """PSNR-Y of the generic model and of `model` (nan when None) on sampled frames: the gate's measurement, a
    pure function so that it can run on any worker."""
    scale = generic.sr.scale
    generic_db = psnr_y(upscale(model_from_state(generic.state, generic.sr), lr), hr, scale)
    if model is None:
        return generic_db, float("nan")
    return generic_db, psnr_y(upscale(model_from_state(model.state, model.sr), lr), hr, scale)


class LocalTrainer:
    """Fine-tunes on this machine, `workers` at a time (the cluster's trainer runs them as Ray tasks)."""

    def __init__(self, workers: int = 1):
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="river-finetune")

    def submit(self, base, sr, pairs, cfg) -> Future:
        return self._pool.submit(finetune, base, sr, pairs, cfg)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


@dataclass(frozen=True)
class GateConfig:
    """When a segment gets a new model. Gains are PSNR-Y over the generic model, the one every client already has,
    measured on the segment's sampled ground-truth frames."""

    # A fine-tune is worth its seconds only where it can pay: below this gain the segment is fine-tuned; a stored
    # model that reaches it is reused as it is. From bench.river_headroom: a segment's own fine-tune at the
    # default budget (TrainConfig) gains +0.30 dB over the generic model on average; asking for half of that
    # reuses any model at least half as good as training anew would be.
    target_gain_db: float = 0.15
    # Content already tried: a stored model that does as well here as on the segment it was trained on (within
    # this margin) is this content's model; when even it misses the target, the target is out of reach for this
    # content and training it again would only repeat it.
    tried_margin_db: float = 0.1
    sample_frames: int = 3
    keys_per_model: int = 16
    same_content: float = 0.9  # mean best similarity to a running fine-tune's keys that counts as "same content"
    # Bounds on work off the segment's path: checks in flight (a segment arriving when all are busy is not
    # checked) and fine-tunes queued or running (a miss beyond it is not trained now; the content misses again
    # later and is trained then).
    max_checks: int = 4
    max_finetunes: int = 4
    # A session keeps the model it plays, or takes one it was sent ahead of need, while its segment's frames
    # vote for it at least this share of the winner's votes (1.0: only on a tie). Stored models of one game are
    # near-equal on most of its content (on bench.river's sessions a player switched among 5-7 models almost
    # every segment, each within ~0.2 dB of the others), so the winner of a split vote is not measurably better
    # and a model the client lacks costs a download; the gate still checks the model chosen.
    keep_held_votes: float = 0.5

    def __post_init__(self) -> None:
        if not 0 < self.keep_held_votes <= 1:
            raise ValueError(f"GateConfig: keep_held_votes must be in (0, 1], got {self.keep_held_votes}")
        if self.sample_frames < 1 or self.keys_per_model < 1 or not 0 < self.same_content <= 1:
            raise ValueError("GateConfig: sample_frames >= 1, keys_per_model >= 1, same_content in (0, 1]")
        if self.max_checks < 1 or self.max_finetunes < 1:
            raise ValueError(f"GateConfig: max_checks and max_finetunes must be >= 1, got {self.max_checks}, "
                             f"{self.max_finetunes}")
        if self.tried_margin_db < 0:
            raise ValueError(f"GateConfig: tried_margin_db must be >= 0, got {self.tried_margin_db}")


@dataclass(frozen=True)
class Decision:
    segment_id: str
    model_id: int  # what the client uses for this segment (GENERIC = the generic model)
    voted_id: int  # what the lookup chose, the session's kept model included (-1: empty store); the gate checks it
    vote_share: float  # share of frames that voted for it
    gain_db: float  # the model in use's latest measured PSNR gain over the generic model
    # this segment's check: "done" (verdict applied before answering), "queued", "skipped" (all busy) or
    # "no_model" (nothing voted: a miss without measuring)
    gate: str
    finetune_scheduled: bool  # a fine-tune of this segment was submitted before answering
    lookup_ms: float  # features + search + vote
    gate_ms: float  # time the answer spent on the gate (a queued check: only submitting it)
    # The segment's lookup features: what prefetching matches later models against. Not part of the answer a
    # client gets (`answer()`).
    features: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32), repr=False, compare=False)
    # The segment's near-equal alternatives (`Lookup.contenders`): what prefetching sends ahead. Not part of the
    # answer either.
    contenders: tuple[int, ...] = field(default=(), compare=False)

    def answer(self) -> dict:
        """The decision as the HTTP API returns it: every field but the features and the contenders."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("features", "contenders")}


@dataclass
class _Check:
    future: Future | None  # None: decided without a measurement (nothing was voted)
    segment_id: str
    voted_id: int
    features: np.ndarray
    pairs: Pairs  # what a fine-tune of the segment trains on
    sample_lr: np.ndarray
    sample_hr: np.ndarray


@dataclass
class _Pending:
    """A fine-tune of a missed segment: trained, then scored on the gate's sampled frames, then stored."""

    future: Future
    keys: np.ndarray
    source_segments: tuple[str, ...]  # what the model will have learned from: its base model's, then the segment's
    sample_lr: np.ndarray  # the gate's sampled frames: the new model's recorded gain is measured on them
    sample_hr: np.ndarray
    trained: TrainResult | None = None  # its weights as the store keeps them, once trained
    score: Future | None = None  # its gain check, of those weights


class OnlineRiver:
    def __init__(self, store: ModelStore, generic: TrainResult, trainer: Trainer, *, gate: GateConfig | None = None,
                 finetune: TrainConfig | None = None, cache_models: int = 8, checks: GateRunner | None = None):
        self.store, self.generic, self.trainer = store, generic, trainer
        self.checks = checks or InlineGate()
        self.gate, self.finetune_cfg = gate or GateConfig(), finetune or TrainConfig()
        self._generic_model = model_from_state(generic.state, generic.sr)
        self.scale = generic.sr.scale
        other = {store.info(i).sr.scale for i in store.ids()} - {self.scale}
        if other:
            raise ValueError(f"the store at {redacted(store.uri)} holds x{sorted(other)[0]} models and the generic "
                             f"model is x{self.scale}: one store serves one scale factor (use another store_uri)")
        self._models: OrderedDict[int, EDSR] = OrderedDict()
        self._cache_models = cache_models
        self.pending: list[_Pending] = []
        self.checking: list[_Check] = []
        self.measured: dict[int, float] = {}  # model id -> its latest measured gain over the generic model
        self.counts = {"checks": 0, "checks_skipped": 0, "checks_failed": 0, "finetunes_deferred": 0,
                       "finetunes_failed": 0}
        self.overlays: dict[str, OverlayMask] = {}

    # ------------------------------------------------------------------------------------------ lookup
    def model(self, model_id: int) -> EDSR:
        if model_id == GENERIC:
            return self._generic_model
        if model_id not in self._models:
            self._models[model_id] = model_from_state(self.store.weights(model_id), self.store.info(model_id).sr)
            if len(self._models) > self._cache_models:
                self._models.popitem(last=False)
        self._models.move_to_end(model_id)
        return self._models[model_id]

    # ------------------------------------------------------------------------------------------ segments
    def process(self, segment_id: str, lr: np.ndarray, hr: np.ndarray, hr_index: list[int] | None = None,
                game: str = "game", held: Sequence[int] = ()) -> Decision:
        """Choose the model for one segment of `game`. `hr`: the server's ground truth, of every frame of `lr`, or
        of the frames `hr_index` names (a game server sends a few sampled frames). `held`: the models the
        session's client holds, the one it plays first, preferred while enough frames vote for them
        (`GateConfig.keep_held_votes`)."""
        check_frames(lr, "lr")
        check_frames(hr, "hr")
        scale = self.scale
        if hr.shape[1:3] != (lr.shape[1] * scale, lr.shape[2] * scale):
            raise ValueError(f"hr must be the x{scale} ground truth of lr: lr frames {lr.shape[1:3]}, hr frames "
                             f"{hr.shape[1:3]}")
        if hr_index is None:
            if len(hr) != len(lr):
                raise ValueError(f"hr must be the x{scale} ground truth of lr frame by frame: {len(lr)} lr frames, "
                                 f"{len(hr)} hr frames")
            paired = lr
        else:
            if len(hr_index) != len(hr) or len(set(hr_index)) != len(hr_index) \
                    or not all(0 <= i < len(lr) for i in hr_index):
                raise ValueError(f"hr_index must name {len(hr)} distinct frames of the {len(lr)} in lr, got "
                                 f"{list(hr_index)}")
            paired = lr[list(hr_index)]
        overlay = self.overlays.setdefault(game, OverlayMask())
        overlay.update(lr)
        found = lookup(self.store, lr, overlay.positions()).keeping(held, self.gate.keep_held_votes)
        t0 = time.perf_counter()
        gate, scheduled = self._check(segment_id, found, paired, hr)
        scheduled = segment_id in self._apply_checks() or scheduled
        use, gain = self._choice(found.model_id)
        return Decision(segment_id, use, found.model_id, found.vote_share, gain, gate, scheduled, found.ms,
                        (time.perf_counter() - t0) * 1e3, found.features,
                        tuple(found.contenders(self.gate.keep_held_votes)))

    def _check(self, segment_id: str, found: Lookup, paired: np.ndarray, hr: np.ndarray) -> tuple[str, bool]:
        """Submit the segment's quality check unless `max_checks` are in flight. With no model voted there is
        nothing to measure: the segment is a miss at once ("no_model"). Returns the check's state and whether a
        fine-tune was submitted already."""
        picks = np.linspace(0, len(paired) - 1, min(self.gate.sample_frames, len(paired))).round().astype(int)
        check = _Check(None, segment_id, found.model_id, found.features, [(paired, hr)], paired[picks], hr[picks])
        if found.model_id <= 0:
            return "no_model", self._verdict(check, 0.0)
        if len(self.checking) >= self.gate.max_checks:
            self.counts["checks_skipped"] += 1
            return "skipped", False
        model = TrainResult(self.model(found.model_id).state_dict(), self.store.info(found.model_id).sr, 0, 0.0, 0.0, 0)
        check.future = self.checks.submit(gate_check, self.generic, model, check.sample_lr, check.sample_hr)
        self.checking.append(check)
        self.counts["checks"] += 1
        return "done" if check.future.done() else "queued", False

    def _choice(self, voted: int) -> tuple[int, float]:
        """The voted model while its latest measured gain is positive, else the generic model."""
        if voted <= 0:
            return GENERIC, 0.0
        gain = self.measured.get(voted, self.store.info(voted).psnr_gain_db)
        return (voted, gain) if gain > 0 else (GENERIC, 0.0)

    def _apply_checks(self, wait: bool = False) -> list[str]:
        """Apply finished checks' verdicts; returns the segments a fine-tune was submitted for."""
        scheduled = []
        for c in list(self.checking):
            if not (wait or c.future.done()):
                continue
            self.checking.remove(c)
            try:
                generic_db, model_db = c.future.result()
            except Exception:  # noqa: BLE001 - a lost check (worker died) only loses this verdict
                self.counts["checks_failed"] += 1
                continue
            self.measured[c.voted_id] = model_db - generic_db
            if self._verdict(c, model_db - generic_db):
                scheduled.append(c.segment_id)
        return scheduled

    def _verdict(self, c: _Check, gain: float) -> bool:
        """Fine-tune the segment if the model it found gains too little (`_worth_training`), its content is not
        already training and the fine-tune queue has room; returns whether it was submitted. The fine-tune starts
        from the model the segment found when that one beats the generic model here: it has learned related
        content, and continuing from it makes stored models accumulate what their content taught them instead of
        each knowing one segment (bench.river: per_video, one model trained on a whole session, is +0.4 dB over
        per_segment; see docs/ARCHITECTURE.md for what this change measured)."""
        if not self._worth_training(c.voted_id, gain) or not len(c.features) \
                or self._same_content_running(c.features):
            return False
        if len(self.pending) >= self.gate.max_finetunes:
            self.counts["finetunes_deferred"] += 1
            return False
        base, learned = self.generic.state, (c.segment_id,)
        if c.voted_id > 0 and gain > 0:
            base = self.model(c.voted_id).state_dict()
            learned = tuple(dict.fromkeys((*self.store.info(c.voted_id).source_segments, c.segment_id)))
        future = self.trainer.submit(base, self.generic.sr, c.pairs, self.finetune_cfg)
        keys = kmeans_keys(c.features, self.gate.keys_per_model)
        self.pending.append(_Pending(future, keys, learned, c.sample_lr, c.sample_hr))
        return True

    def _worth_training(self, voted: int, gain: float) -> bool:
        """Below the target, unless the voted model is this content's own and the target out of its reach."""
        if gain >= self.gate.target_gain_db:
            return False
        return voted <= 0 or gain < self.store.info(voted).psnr_gain_db - self.gate.tried_margin_db

    def _same_content_running(self, features: np.ndarray) -> bool:
        return any(float((features @ p.keys.T).max(axis=1).mean()) >= self.gate.same_content for p in self.pending)

    def collect(self, wait: bool = False) -> list[int]:
        """Apply finished checks, then move finished fine-tunes on: a trained model is scored (its gain over the
        generic model on the gate's sampled frames of its segment, a check on the gate's runner), a scored one
        joins the store. `wait`: block until all of that is done. Returns the new ids."""
        self._apply_checks(wait)
        new = []
        for p in list(self.pending):
            if p.score is None and (wait or p.future.done()):
                try:
                    result: TrainResult = p.future.result()
                except Exception:  # noqa: BLE001 - a lost fine-tune: its content misses again and is retrained
                    self.pending.remove(p)
                    self.counts["finetunes_failed"] += 1
                    continue
                p.trained = replace(result, state=as_stored(result.state))  # the gain of what clients will play
                p.score = self.checks.submit(gate_check, self.generic, p.trained, p.sample_lr, p.sample_hr)
            if p.score is None or not (wait or p.score.done()):
                continue
            self.pending.remove(p)
            try:
                generic_db, model_db = p.score.result()
            except Exception:  # noqa: BLE001 - as above
                self.counts["checks_failed"] += 1
                continue
            new.append(self.store.add(p.trained.state, p.trained.sr, p.keys, source_segments=list(p.source_segments),
                                      psnr_gain_db=model_db - generic_db, train_s=p.trained.seconds))
        return new
