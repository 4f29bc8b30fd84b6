"""Gameplay datasets on disk: H.264 files plus Parquet indexes, built on demand and cached by content hash.

The ground truth is recorded once per gameplay recipe; each stream (scale factor, CRF) of it is made from that
recording, so a study over scales and CRFs plays the game once. Layout under `root/<hash>/`: `hr/<segment>.mp4`
(lossless ground truth) and `hr.parquet`; per stream `x<scale>-crf<crf>/<segment>.mp4` (the streamed low-res
bitstream) and `x<scale>-crf<crf>.parquet`, the index `load_pairs` reads. The hash covers everything that
changes the recording (the gameplay config, the ViZDoom version); every index is written last, with a rename, so
a half-built dataset is never taken for a finished one.
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

from runtime.river.degrade import check_scale, decode, degrade, encode
from runtime.river.gameplay import HEIGHT, WIDTH, GameplayConfig, play

RECORDING = pa.schema([
    ("segment_id", pa.string()), ("wad", pa.string()), ("map", pa.string()), ("index", pa.int32()),
    ("start_frame", pa.int32()), ("frame_count", pa.int32()), ("fps", pa.float64()), ("hr_path", pa.string()),
])
DEFAULT_CRF = 28  # the stream's H.264 quality (bench.river_headroom: CRF 23-35 change the content gain little)
SCHEMA = pa.schema([*RECORDING, ("scale", pa.int32()), ("crf", pa.int32()), ("lr_path", pa.string()),
                    ("lr_bytes", pa.int64())])


@dataclass(frozen=True)
class Pair:
    """One segment as an SR training/evaluation pair."""

    segment_id: str
    map: str
    hr: np.ndarray  # (T, 720, 1280, 3) uint8
    lr: np.ndarray  # (T, 720 / scale, 1280 / scale, 3) uint8, decoded from the streamed H.264
    lr_bytes: int

    @property
    def scale(self) -> int:
        return self.hr.shape[1] // self.lr.shape[1]


def recording_key(cfg: GameplayConfig) -> str:
    import vizdoom

    recipe = {"gameplay": asdict(cfg), "vizdoom": vizdoom.__version__, "layout": 2}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def build_dataset(cfg: GameplayConfig, *, scale: int, crf: int = DEFAULT_CRF,
                  root: str | os.PathLike = "build/river/datasets", progress: bool = True) -> Path:
    """Record `cfg`'s gameplay (or reuse the recording) and stream it at 1/`scale` of its size and `crf` (or reuse
    that stream); returns the stream's index path."""
    check_scale(WIDTH, HEIGHT, scale)
    if not 0 <= crf <= 51:
        raise ValueError(f"crf must be in 0..51, got {crf}")
    base = Path(root) / recording_key(cfg)
    index = base / f"x{scale}-crf{crf}.parquet"
    if index.exists():
        return index
    rows = _record(cfg, base, progress)
    stream = Path(index.stem)
    (base / stream).mkdir(exist_ok=True)
    out = []
    for row in tqdm(rows, desc=f"streaming x{scale} crf {crf}", unit="segment", disable=not progress,
                    file=sys.stderr):
        lr_data, _ = degrade(decode(base / row["hr_path"]), row["fps"], crf, scale)
        lr_path = stream / f"{row['segment_id']}.mp4"
        (base / lr_path).write_bytes(lr_data)
        out.append({**row, "scale": scale, "crf": crf, "lr_path": str(lr_path), "lr_bytes": len(lr_data)})
    _write_atomic(pa.Table.from_pylist(out, schema=SCHEMA), index)
    return index


def _record(cfg: GameplayConfig, base: Path, progress: bool) -> list[dict]:
    """The recording's rows, played and written (lossless) when there is none yet."""
    index = base / "hr.parquet"
    if index.exists():
        return pq.read_table(index).to_pylist()
    (base / "hr").mkdir(parents=True, exist_ok=True)
    rows = []
    total = len(cfg.maps) * cfg.segments_per_map
    for seg in tqdm(play(cfg), total=total, desc=f"recording {cfg.wad}", unit="segment", disable=not progress,
                    file=sys.stderr):
        sid = f"{cfg.wad}-{seg.map}-{seg.index:04d}"
        hr_path = Path("hr") / f"{sid}.mp4"
        (base / hr_path).write_bytes(encode(seg.frames, cfg.real_fps, crf=None))
        rows.append({"segment_id": sid, "wad": cfg.wad, "map": seg.map, "index": seg.index,
                     "start_frame": seg.start_frame, "frame_count": len(seg.frames), "fps": cfg.real_fps,
                     "hr_path": str(hr_path)})
    _write_atomic(pa.Table.from_pylist(rows, schema=RECORDING), index)
    return rows


def _write_atomic(table: pa.Table, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


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


def load_streams(index: str | os.PathLike) -> dict[str, bytes]:
    """Each segment's streamed H.264 bytes, as a client receives them (`Pair.lr` is their decoded frames)."""
    base = Path(index).parent
    return {r["segment_id"]: (base / r["lr_path"]).read_bytes() for r in read_index(index).to_pylist()}
