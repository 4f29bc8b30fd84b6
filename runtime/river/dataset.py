"""Gameplay datasets on disk: H.264 files plus a Parquet index, built on demand and cached by content hash.

Layout under `root/<hash>/`: `hr/<segment>.mp4` (lossless ground truth), `lr/<segment>.mp4` (the streamed
low-res bitstream), `index.parquet`. The hash covers everything that changes the bytes (the gameplay config,
CRF, scale, ViZDoom version), so a changed recipe never reads a stale cache; the index is written last, with a
rename, so a half-built dataset is never taken for a finished one.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from runtime.river.degrade import SCALE, decode, degrade, encode
from runtime.river.gameplay import GameplayConfig, play

SCHEMA = pa.schema([
    ("segment_id", pa.string()), ("wad", pa.string()), ("map", pa.string()), ("index", pa.int32()),
    ("start_frame", pa.int32()), ("frame_count", pa.int32()), ("fps", pa.float64()), ("crf", pa.int32()),
    ("hr_path", pa.string()), ("lr_path", pa.string()), ("lr_bytes", pa.int64()),
])


@dataclass(frozen=True)
class Pair:
    """One segment as an SR training/evaluation pair."""

    segment_id: str
    map: str
    hr: np.ndarray  # (T, 720, 1280, 3) uint8
    lr: np.ndarray  # (T, 360, 640, 3) uint8, decoded from the streamed H.264
    lr_bytes: int


def dataset_key(cfg: GameplayConfig, crf: int) -> str:
    import vizdoom

    recipe = {"gameplay": asdict(cfg), "crf": crf, "scale": SCALE, "vizdoom": vizdoom.__version__, "layout": 1}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def build_dataset(cfg: GameplayConfig, crf: int = 28, root: str | os.PathLike = "build/river/datasets",
                  progress: bool = True) -> Path:
    """Record, encode and index `cfg`'s gameplay (or reuse the cached copy); returns the index path."""
    out = Path(root) / dataset_key(cfg, crf)
    index = out / "index.parquet"
    if index.exists():
        return index
    (out / "hr").mkdir(parents=True, exist_ok=True)
    (out / "lr").mkdir(exist_ok=True)
    rows = []
    total = len(cfg.maps) * cfg.segments_per_map
    for seg in tqdm(play(cfg), total=total, desc=f"recording {cfg.wad}", unit="segment", disable=not progress,
                    file=sys.stderr):
        sid = f"{cfg.wad}-{seg.map}-{seg.index:04d}"
        lr_data, _ = degrade(seg.frames, cfg.real_fps, crf)
        hr_path, lr_path = Path("hr") / f"{sid}.mp4", Path("lr") / f"{sid}.mp4"
        (out / hr_path).write_bytes(encode(seg.frames, cfg.real_fps, crf=None))
        (out / lr_path).write_bytes(lr_data)
        rows.append({"segment_id": sid, "wad": cfg.wad, "map": seg.map, "index": seg.index,
                     "start_frame": seg.start_frame, "frame_count": len(seg.frames), "fps": cfg.real_fps,
                     "crf": crf, "hr_path": str(hr_path), "lr_path": str(lr_path), "lr_bytes": len(lr_data)})
    tmp = out / "index.parquet.tmp"
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), tmp)
    os.replace(tmp, index)
    return index


def read_index(index: str | os.PathLike) -> pa.Table:
    table = pq.read_table(index)
    missing = [f.name for f in SCHEMA if f.name not in table.column_names]
    if missing:
        raise ValueError(f"{index}: not a River dataset index, missing columns {missing}")
    return table


def load_pairs(index: str | os.PathLike, segment_ids: list[str] | None = None) -> list[Pair]:
    """Decode the segments (all, or those named, in that order) of a dataset."""
    base = Path(index).parent
    rows = {r["segment_id"]: r for r in read_index(index).to_pylist()}
    wanted = segment_ids if segment_ids is not None else list(rows)
    unknown = [s for s in wanted if s not in rows]
    if unknown:
        raise KeyError(f"segments not in {index}: {unknown[:5]}")
    return [Pair(s, rows[s]["map"], decode(base / rows[s]["hr_path"]), decode(base / rows[s]["lr_path"]),
                 rows[s]["lr_bytes"]) for s in wanted]
