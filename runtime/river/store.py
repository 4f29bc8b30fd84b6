"""The model lookup table: FAISS over model keys, Parquet metadata, safetensors weights with checksums.

Directory layout: `metadata.parquet` (one row per model: id, keys, source segments, PSNR gain, training seconds,
created, SR config, checksum) and `weights/<id>.safetensors`. The FAISS index (`IndexIDMap2(IndexFlatIP)` over
L2-normalised keys; each key's id is its model id) is rebuilt from the metadata on open: flat search over the same
vectors and ids gives the same answers, and there is no second file to keep consistent. Every write goes to a
temporary file and is renamed into place (weights first, then metadata), so a crash leaves the previous store.
A weight file that is missing or whose checksum does not match is reported in `problems`, its model is taken out
of the index, and the rest of the store keeps serving.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.torch import load, save

from runtime.river.features import DIM
from runtime.river.sr import SRConfig

SCHEMA = pa.schema([
    ("model_id", pa.int64()), ("keys", pa.list_(pa.list_(pa.float32(), DIM))),
    ("source_segments", pa.list_(pa.string())), ("psnr_gain_db", pa.float64()), ("train_s", pa.float64()),
    ("created", pa.float64()), ("sr_config", pa.string()), ("checksum", pa.string()), ("weight_bytes", pa.int64()),
])


class CorruptModelError(RuntimeError):
    """A model's weight file is missing or does not match its checksum."""


@dataclass(frozen=True)
class ModelInfo:
    model_id: int
    keys: np.ndarray
    source_segments: tuple[str, ...]
    psnr_gain_db: float
    train_s: float
    created: float
    sr: SRConfig
    checksum: str
    weight_bytes: int


def encode_weights(state: dict[str, torch.Tensor]) -> tuple[bytes, str]:
    """A model's weights as they are stored and travel (safetensors, floating-point tensors in float16) and their
    checksum (SHA-256, the HTTP ETag). float16 halves what prefetch sends (a 4 x 16 model: 94 -> 48 KB) and moved
    PSNR-Y by under 0.001 dB (the game's generic model on six Freedoom segments); models train and run in float32
    or bf16, converted as they load."""
    wire = {}
    for name, tensor in state.items():
        if tensor.is_floating_point():
            tensor = tensor.to(torch.float16)
            if not torch.isfinite(tensor).all():
                raise ValueError(f"weights: {name!r} does not fit float16 (non-finite after conversion)")
        wire[name] = tensor.contiguous()
    data = save(wire)
    return data, hashlib.sha256(data).hexdigest()


def as_stored(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` at the precision the store keeps and serves it (what `encode_weights` writes)."""
    return load(encode_weights(state)[0])


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class ModelStore:
    """Single-writer store (the ModelStore actor is that writer); reads are safe from any thread."""

    def __init__(self, root: str | os.PathLike):
        import faiss

        self.root = Path(root)
        (self.root / "weights").mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._index = faiss.IndexIDMap2(faiss.IndexFlatIP(DIM))
        self._models: dict[int, ModelInfo] = {}
        self.problems: dict[int, str] = {}  # model id -> why it is not served
        self._next_id = 1  # ids are never reused, even after a removal: clients cache weights by id
        meta = self.root / "metadata.parquet"
        if meta.exists():
            table = pq.read_table(meta)
            self._next_id = int((table.schema.metadata or {}).get(b"next_id", b"1"))
            for row in table.to_pylist():
                info = ModelInfo(row["model_id"], np.asarray(row["keys"], np.float32), tuple(row["source_segments"]),
                                 row["psnr_gain_db"], row["train_s"], row["created"],
                                 SRConfig(**json.loads(row["sr_config"])), row["checksum"], row["weight_bytes"])
                self._models[info.model_id] = info
                problem = self._check(info)
                if problem:
                    self.problems[info.model_id] = problem
                else:
                    self._index_add(info)

    # ------------------------------------------------------------------------------------------ reads
    def __len__(self) -> int:
        return len(self._models) - len(self.problems)

    def ids(self) -> list[int]:
        with self._lock:
            return sorted(i for i in self._models if i not in self.problems)

    def info(self, model_id: int) -> ModelInfo:
        with self._lock:
            if model_id not in self._models:
                raise KeyError(f"no model {model_id} in the store")
            return self._models[model_id]

    def search(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Nearest model per feature row: (ids, cosine similarities); id -1 when the store is empty."""
        with self._lock:
            if self._index.ntotal == 0 or len(features) == 0:
                return np.full(len(features), -1, np.int64), np.zeros(len(features), np.float32)
            sims, ids = self._index.search(np.ascontiguousarray(features, dtype=np.float32), 1)
        return ids[:, 0], sims[:, 0]

    def weight_bytes(self, model_id: int) -> bytes:
        """The safetensors bytes of a model, verified against its checksum."""
        info = self.info(model_id)
        path = self.root / "weights" / f"{model_id}.safetensors"
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            self._quarantine(model_id, "weight file missing")
            raise CorruptModelError(f"model {model_id}: weight file missing") from None
        if hashlib.sha256(data).hexdigest() != info.checksum:
            self._quarantine(model_id, "checksum mismatch")
            raise CorruptModelError(f"model {model_id}: weight file does not match its checksum")
        return data

    def weights(self, model_id: int) -> dict[str, torch.Tensor]:
        return load(self.weight_bytes(model_id))

    # ------------------------------------------------------------------------------------------ writes
    def add(self, state: dict[str, torch.Tensor], sr: SRConfig, keys: np.ndarray, *, source_segments: list[str],
            psnr_gain_db: float, train_s: float) -> int:
        keys = np.asarray(keys, np.float32)
        if keys.ndim != 2 or keys.shape[1] != DIM or len(keys) == 0:
            raise ValueError(f"keys must be a non-empty (k, {DIM}) array, got {keys.shape}")
        data, checksum = encode_weights(state)
        with self._lock:
            model_id = self._next_id
            self._next_id += 1
            _atomic_write(self.root / "weights" / f"{model_id}.safetensors", data)
            info = ModelInfo(model_id, keys / np.linalg.norm(keys, axis=1, keepdims=True), tuple(source_segments),
                             float(psnr_gain_db), float(train_s), time.time(), sr, checksum, len(data))
            self._models[model_id] = info
            self._write_metadata()
            self._index_add(info)
        return model_id

    def remove(self, model_id: int) -> None:
        with self._lock:
            self.info(model_id)
            del self._models[model_id]
            self.problems.pop(model_id, None)
            self._index.remove_ids(np.array([model_id], np.int64))
            self._write_metadata()
            (self.root / "weights" / f"{model_id}.safetensors").unlink(missing_ok=True)

    # ------------------------------------------------------------------------------------------ internals
    def _index_add(self, info: ModelInfo) -> None:
        self._index.add_with_ids(info.keys, np.full(len(info.keys), info.model_id, np.int64))

    def _check(self, info: ModelInfo) -> str:
        path = self.root / "weights" / f"{info.model_id}.safetensors"
        if not path.exists():
            return "weight file missing"
        if hashlib.sha256(path.read_bytes()).hexdigest() != info.checksum:
            return "checksum mismatch"
        return ""

    def _quarantine(self, model_id: int, why: str) -> None:
        with self._lock:
            if model_id not in self.problems:
                self.problems[model_id] = why
                self._index.remove_ids(np.array([model_id], np.int64))

    def _write_metadata(self) -> None:
        rows = [{"model_id": m.model_id, "keys": m.keys.tolist(), "source_segments": list(m.source_segments),
                 "psnr_gain_db": m.psnr_gain_db, "train_s": m.train_s, "created": m.created,
                 "sr_config": json.dumps(m.sr.to_dict()), "checksum": m.checksum, "weight_bytes": m.weight_bytes}
                for m in sorted(self._models.values(), key=lambda m: m.model_id)]
        sink = pa.BufferOutputStream()
        table = pa.Table.from_pylist(rows, schema=SCHEMA).replace_schema_metadata({"next_id": str(self._next_id)})
        pq.write_table(table, sink)
        _atomic_write(self.root / "metadata.parquet", sink.getvalue().to_pybytes())
