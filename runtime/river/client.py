"""River's player: it decodes a session's H.264 segments, holds the SR models the service sends it, and
super-resolves every frame with the model each segment names.

A stream on disk is a directory: the segments' H.264 files and `manifest.json`, which names each segment's model
(what the service answered the game server) and, optionally, an `.npz` of ground-truth frames to score against.
Models come from a `ModelSource` (the service's `/river/v1/models` and `/river/v1/prefetch`, or a store
directory). A model is used only after its bytes match its checksum (the SHA-256 the service sends as ETag). A
segment whose model the player does not hold plays with the last good model and counts as a stall; the player
then fetches it for the segments that follow, and after every segment it fetches what the service predicts
next, revalidating what it already holds (If-None-Match).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import av
import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors

from runtime.river.enhance import Enhancer
from runtime.river.sr import SRConfig, psnr_y
from runtime.river.store import CorruptModelError, ModelStore, encode_weights

GENERIC = 0
MANIFEST = "manifest.json"


class ModelMissing(LookupError):
    """The source has no model with this id."""


@dataclass(frozen=True)
class Fetched:
    model_id: int
    sr: SRConfig
    data: bytes  # safetensors
    checksum: str  # SHA-256 of `data`, as the source states it


class ModelSource(Protocol):
    def fetch(self, model_id: int, etag: str | None = None) -> Fetched | None:
        """The model, or None when `etag` is still its checksum (nothing to send). Raises ModelMissing."""

    def predicted(self, session: str, k: int, game: str | None = None) -> list[int]:
        """The models `session` (playing `game`) is predicted to need next."""


class HttpModels:
    """The service's model and prefetch endpoints."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 30.0):
        import httpx

        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=url, headers=headers, timeout=timeout)

    def fetch(self, model_id: int, etag: str | None = None) -> Fetched | None:
        r = self._http.get(f"/river/v1/models/{model_id}", headers={"If-None-Match": f'"{etag}"'} if etag else {})
        if r.status_code == 304:
            return None
        if r.status_code == 404:
            raise ModelMissing(f"model {model_id}: the service has no such model")
        r.raise_for_status()
        return Fetched(model_id, SRConfig(**json.loads(r.headers["x-sr-config"])), r.content,
                       r.headers["etag"].strip('"'))

    def predicted(self, session: str, k: int, game: str | None = None) -> list[int]:
        params = {"session": session, "k": k} | ({"game": game} if game else {})
        r = self._http.get("/river/v1/prefetch", params=params)
        return r.json()["models"] if r.status_code == 200 else []

    def close(self) -> None:
        self._http.close()


class StoreModels:
    """A store directory (what the service serves, read directly): for offline playback and benchmarks."""

    def __init__(self, store: ModelStore, generic: tuple[dict[str, torch.Tensor], SRConfig]):
        self.store = store
        self._generic = *encode_weights(generic[0]), generic[1]

    def fetch(self, model_id: int, etag: str | None = None) -> Fetched | None:
        if model_id == GENERIC:
            data, checksum, sr = self._generic
        else:
            try:
                info = self.store.info(model_id)
            except KeyError:
                raise ModelMissing(f"model {model_id}: not in the store") from None
            data, sr, checksum = self.store.weight_bytes(model_id), info.sr, info.checksum
        return None if etag == checksum else Fetched(model_id, sr, data, checksum)

    def predicted(self, session: str, k: int, game: str | None = None) -> list[int]:
        return []


class ModelCache:
    """The models the player holds, each checked against its checksum before it is kept; the least recently used
    goes beyond `capacity`."""

    def __init__(self, capacity: int = 8):
        if capacity < 1:
            raise ValueError(f"capacity: must be >= 1, got {capacity}")
        self.capacity = capacity
        self._models: OrderedDict[int, tuple[str, SRConfig, dict[str, torch.Tensor]]] = OrderedDict()

    def add(self, f: Fetched) -> None:
        if hashlib.sha256(f.data).hexdigest() != f.checksum:
            raise CorruptModelError(f"model {f.model_id}: its bytes do not match its checksum {f.checksum[:12]}...")
        try:
            state = load_safetensors(f.data)
        except SafetensorError as e:
            raise CorruptModelError(f"model {f.model_id}: not a safetensors file ({e})") from None
        self._models[f.model_id] = (f.checksum, f.sr, state)
        self._models.move_to_end(f.model_id)
        while len(self._models) > self.capacity:
            self._models.popitem(last=False)

    def __contains__(self, model_id: int) -> bool:
        return model_id in self._models

    def get(self, model_id: int) -> tuple[dict[str, torch.Tensor], SRConfig]:
        _, sr, state = self._models[model_id]
        self._models.move_to_end(model_id)
        return state, sr

    def checksum(self, model_id: int) -> str:
        return self._models[model_id][0]


@dataclass
class StreamSegment:
    name: str
    video: bytes  # H.264 (any container PyAV reads)
    model_id: int = GENERIC
    ground_truth: np.ndarray | None = None  # (K, H, W, 3) uint8 SR-resolution frames
    gt_index: list[int] | None = None  # the frame numbers `ground_truth` holds


def write_stream(directory: str | Path, segments: Iterable[StreamSegment]) -> Path:
    """A stream directory the player reads (`read_stream`)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, s in enumerate(segments):
        entry = {"name": s.name, "file": f"{i:05d}.mp4", "model_id": s.model_id}
        (d / entry["file"]).write_bytes(s.video)
        if s.ground_truth is not None:
            entry["ground_truth"] = f"{i:05d}-gt.npz"
            np.savez(d / entry["ground_truth"], frames=s.ground_truth, index=np.asarray(s.gt_index))
        entries.append(entry)
    (d / MANIFEST).write_text(json.dumps({"segments": entries}, indent=1))
    return d


def read_stream(path: str | Path, model_id: int = GENERIC) -> list[StreamSegment]:
    """A stream directory, or one H.264 file (played with `model_id`)."""
    p = Path(path)
    if p.is_file():
        return [StreamSegment(p.stem, p.read_bytes(), model_id)]
    if not (p / MANIFEST).is_file():
        raise ValueError(f"stream: {p} is neither a video file nor a directory with {MANIFEST}")
    out = []
    for i, e in enumerate(json.loads((p / MANIFEST).read_text())["segments"]):
        if not isinstance(e.get("model_id"), int) or not isinstance(e.get("file"), str):
            raise ValueError(f"stream: {MANIFEST} segment {i} needs a 'file' and an integer 'model_id'")
        gt = index = None
        if e.get("ground_truth"):
            with np.load(p / e["ground_truth"]) as z:
                gt, index = z["frames"], z["index"].tolist()
        out.append(StreamSegment(e.get("name", e["file"]), (p / e["file"]).read_bytes(), e["model_id"], gt, index))
    return out


@dataclass
class SegmentReport:
    name: str
    model_id: int  # the model the segment names
    shown_id: int  # the model the player used (the last good one on a stall)
    stalled: bool
    frames: int
    psnr_db: float  # on the ground-truth frames, nan without them
    decode_ms: list[float] = field(repr=False)
    sr_ms: list[float] = field(repr=False)


@dataclass
class PlayReport:
    runtime: str
    segments: list[SegmentReport] = field(default_factory=list)
    fetched_bytes: int = 0  # models fetched because a segment needed them
    prefetch_bytes: int = 0
    revalidated: int = 0  # prefetch answers "not modified" for models already held
    refused: list[str] = field(default_factory=list)  # models that failed their checksum or were missing

    def summary(self) -> dict:
        decode = np.concatenate([s.decode_ms for s in self.segments]) if self.segments else np.zeros(0)
        sr = np.concatenate([s.sr_ms for s in self.segments]) if self.segments else np.zeros(0)
        total = decode + sr
        psnr = [s.psnr_db for s in self.segments if not math.isnan(s.psnr_db)]

        def pct(a, q):
            return float(np.percentile(a, q)) if len(a) else float("nan")

        return {"runtime": self.runtime, "segments": len(self.segments), "frames": int(len(total)),
                "fps": float(len(total) / (total.sum() / 1e3)) if len(total) else 0.0,
                "decode_ms_p50": pct(decode, 50), "sr_ms_p50": pct(sr, 50), "frame_ms_p50": pct(total, 50),
                "frame_ms_p99": pct(total, 99), "stalls": sum(s.stalled for s in self.segments),
                "psnr_db": float(np.mean(psnr)) if psnr else float("nan"), "fetched_bytes": self.fetched_bytes,
                "prefetch_bytes": self.prefetch_bytes, "revalidated": self.revalidated, "refused": self.refused}

    def to_dict(self) -> dict:
        return {"summary": self.summary(), "segments": [asdict(s) for s in self.segments]}

    def describe(self) -> str:
        """One line for a person: what `agentriver river-play` and `make run` print."""
        s = self.summary()
        psnr = "" if math.isnan(s["psnr_db"]) else f"; PSNR-Y {s['psnr_db']:.2f} dB"
        return (f"{s['frames']} frames in {s['segments']} segments, runtime {s['runtime']}: {s['fps']:.1f} frames/s; "
                f"per frame decode {s['decode_ms_p50']:.1f} ms + SR {s['sr_ms_p50']:.1f} ms (p50), total p99 "
                f"{s['frame_ms_p99']:.1f} ms; stalls {s['stalls']}{psnr}")


class Player:
    """Plays segments with SR. `fps` and latencies count decoding and SR of each frame (what bounds the frame
    rate); fetching models happens between segments and is counted in bytes."""

    def __init__(self, source: ModelSource, enhancer: Enhancer | None = None, cache: ModelCache | None = None,
                 session: str | None = None, game: str | None = None, prefetch_k: int = 3):
        self.source, self.session, self.game, self.prefetch_k = source, session, game, prefetch_k
        self.enhancer = enhancer or Enhancer()
        self.cache = cache or ModelCache()
        self.current: int | None = None

    def play(self, segments: Iterable[StreamSegment], writer: VideoWriter | None = None, on_segment=None) -> PlayReport:
        report = PlayReport(self.enhancer.runtime)
        if GENERIC not in self.cache:  # every client starts with the generic model, and what the game uses most
            report.fetched_bytes += self._fetch(GENERIC, report, required=True)
            self._prefetch(report)
        for seg in segments:
            stalled = seg.model_id not in self.cache
            shown = (self.current if self.current is not None else GENERIC) if stalled else seg.model_id
            self._use(shown)
            frames, decode_ms, sr_ms = self._frames(seg, writer)
            psnr = float("nan")
            if seg.ground_truth is not None:
                picked = np.stack([frames[i] for i in seg.gt_index])
                psnr = psnr_y(picked, seg.ground_truth, self.enhancer.sr.scale)
            report.segments.append(SegmentReport(seg.name, seg.model_id, shown, stalled, len(decode_ms), psnr,
                                                 decode_ms, sr_ms))
            if stalled:
                report.fetched_bytes += self._fetch(seg.model_id, report)
            self._prefetch(report)
            report.runtime = self.enhancer.runtime  # a failed compile falls back to bf16
            if on_segment is not None:
                on_segment(report.segments[-1])
        return report

    def _use(self, model_id: int) -> None:
        if model_id != self.current:
            self.enhancer.load(*self.cache.get(model_id))
            self.current = model_id

    def _frames(self, seg: StreamSegment, writer) -> tuple[dict[int, np.ndarray], list[float], list[float]]:
        """Decode and enhance every frame; keeps the frames the ground truth scores."""
        keep = set(seg.gt_index or [])
        kept, decode_ms, sr_ms = {}, [], []
        try:
            with av.open(io.BytesIO(seg.video)) as container:
                stream = container.streams.video[0]
                frames = container.decode(stream)
                while True:
                    t0 = time.perf_counter()
                    frame = next(frames, None)
                    if frame is None:
                        break
                    lr = frame.to_ndarray(format="rgb24")
                    t1 = time.perf_counter()
                    out = self.enhancer(lr)
                    t2 = time.perf_counter()
                    decode_ms.append((t1 - t0) * 1e3)
                    sr_ms.append((t2 - t1) * 1e3)
                    if len(decode_ms) - 1 in keep:
                        kept[len(decode_ms) - 1] = out
                    if writer is not None:
                        writer.write(out)
        except (av.error.FFmpegError, IndexError) as e:
            raise ValueError(f"segment {seg.name}: cannot decode video ({e})") from e
        return kept, decode_ms, sr_ms

    def _fetch(self, model_id: int, report: PlayReport, required: bool = False) -> int:
        """Fetch and keep a model; a missing or corrupt one is refused (and the last good model stays)."""
        try:
            f = self.source.fetch(model_id)
            self.cache.add(f)
            return len(f.data)
        except (ModelMissing, CorruptModelError) as e:
            if required:
                raise
            report.refused.append(str(e))
            return 0

    def _prefetch(self, report: PlayReport) -> None:
        if self.session is None:
            return
        for m in self.source.predicted(self.session, self.prefetch_k, self.game):
            held = self.cache.checksum(m) if m in self.cache else None
            try:
                f = self.source.fetch(m, held)
                if f is None:
                    report.revalidated += 1
                    continue
                self.cache.add(f)
                report.prefetch_bytes += len(f.data)
            except (ModelMissing, CorruptModelError) as e:
                report.refused.append(str(e))


class VideoWriter:
    """The enhanced frames as an H.264 file, for a person to look at (its size is set by the first frame)."""

    def __init__(self, path: str | Path, fps: float = 30.0):
        from fractions import Fraction

        self._container = av.open(str(path), mode="w")
        self._rate = Fraction(fps).limit_denominator(1000)
        self._stream = None

    def write(self, frame: np.ndarray) -> None:
        if self._stream is None:
            self._stream = self._container.add_stream("libx264", rate=self._rate)
            self._stream.height, self._stream.width = frame.shape[:2]
            self._stream.pix_fmt = "yuv420p"
            self._stream.options = {"crf": "20", "preset": "veryfast"}
        for packet in self._stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
            self._container.mux(packet)

    def close(self) -> None:
        if self._stream is not None:
            for packet in self._stream.encode():
                self._container.mux(packet)
        self._container.close()
