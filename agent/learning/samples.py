"""Labelled samples for federated training: recent request inputs joined with app feedback.

Inputs of requests that carry a request id are remembered briefly in memory; a Feedback call
joins them with labels and stores the sample in SQLite in the data dir, bounded by size and age.
"""

from __future__ import annotations

import io
import sqlite3
import threading
import time
import uuid
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgefleet.common.npy import read_npy

__all__ = ["RecentRequests", "SampleStore", "label_rows", "pack_arrays", "unpack_arrays"]


def pack_arrays(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


def unpack_arrays(data: bytes) -> dict[str, np.ndarray]:
    """The arrays pack_arrays stored, by name."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {info.filename.removesuffix(".npy"): read_npy(archive.read(info)) for info in archive.infolist()}


@dataclass
class _Recent:
    inputs: dict[str, np.ndarray]
    bundle_digest: str
    at: float
    size: int


class RecentRequests:
    """Inputs of the last requests by request id, bounded by count, bytes and age."""

    def __init__(self, *, max_entries: int = 1000, max_bytes: int = 64 << 20, max_age_s: float = 600.0) -> None:
        self.max_entries, self.max_bytes, self.max_age_s = max_entries, max_bytes, max_age_s
        self._items: OrderedDict[str, _Recent] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def remember(self, request_id: str, inputs: dict[str, np.ndarray], bundle_digest: str) -> None:
        size = sum(a.nbytes for a in inputs.values())
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(request_id, None)
            if old is not None:
                self._bytes -= old.size
            self._items[request_id] = _Recent(inputs, bundle_digest, time.monotonic(), size)
            self._bytes += size
            self._trim()

    def take(self, request_id: str) -> _Recent | None:
        with self._lock:
            self._trim()
            item = self._items.pop(request_id, None)
            if item is not None:
                self._bytes -= item.size
            return item

    def _trim(self) -> None:
        horizon = time.monotonic() - self.max_age_s
        while self._items and (
            len(self._items) > self.max_entries
            or self._bytes > self.max_bytes
            or next(iter(self._items.values())).at < horizon
        ):
            _, item = self._items.popitem(last=False)
            self._bytes -= item.size


def label_rows(labels: dict[str, np.ndarray]) -> int:
    """How many training rows one Feedback's labels are, as a campaign's client reads them
    (federated/client/data.py): a scalar or 1-D label is that many rows, a 2-D one its first axis."""
    counts = [int(a.size) if a.ndim <= 1 else int(a.shape[0]) for a in map(np.asarray, labels.values())]
    return max(counts, default=0)


class SampleStore:
    def __init__(self, path: Path, *, max_bytes: int = 256 << 20, max_age_s: float = 30 * 86400) -> None:
        self.max_bytes, self.max_age_s = max_bytes, max_age_s
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("pragma journal_mode=wal")
        self._db.execute(
            "create table if not exists samples (id text primary key, request_id text, bundle_digest text,"
            " created_at real, inputs blob, labels blob, size integer)"
        )
        self._db.execute("create index if not exists samples_created on samples(created_at)")
        columns = {row[1] for row in self._db.execute("pragma table_info(samples)")}
        if "rows" not in columns:  # a store from before samples were counted in rows: count them once
            with self._lock:
                self._db.execute("alter table samples add column rows integer")
                for sample_id, labels in self._db.execute("select id, labels from samples").fetchall():
                    self._db.execute(
                        "update samples set rows = ? where id = ?", (label_rows(unpack_arrays(labels)), sample_id)
                    )

    def add(
        self, request_id: str, bundle_digest: str, inputs: dict[str, np.ndarray], labels: dict[str, np.ndarray]
    ) -> str:
        sample_id = uuid.uuid4().hex
        packed_inputs, packed_labels = pack_arrays(inputs), pack_arrays(labels)
        with self._lock:
            self._db.execute(
                "insert into samples (id, request_id, bundle_digest, created_at, inputs, labels, size, rows)"
                " values (?, ?, ?, ?, ?, ?, ?, ?)",
                (sample_id, request_id, bundle_digest, time.time(), packed_inputs, packed_labels,
                 len(packed_inputs) + len(packed_labels), label_rows(labels)),
            )  # fmt: skip
            self._prune()
        return sample_id

    def _prune(self) -> None:
        self._db.execute("delete from samples where created_at < ?", (time.time() - self.max_age_s,))
        (total,) = self._db.execute("select coalesce(sum(size), 0) from samples").fetchone()
        while total > self.max_bytes:
            row = self._db.execute("select id, size from samples order by created_at limit 1").fetchone()
            if row is None:
                break
            self._db.execute("delete from samples where id = ?", (row[0],))
            total -= row[1]

    def count(self) -> int:
        """Labelled rows stored (a Feedback on a batch of 8 is 8): the unit of a campaign's min_samples."""
        with self._lock:
            return int(self._db.execute("select coalesce(sum(rows), 0) from samples").fetchone()[0])

    def samples(self, limit: int = 1000) -> list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
        with self._lock:
            rows = self._db.execute(
                "select inputs, labels from samples order by created_at limit ?", (limit,)
            ).fetchall()
        return [(unpack_arrays(i), unpack_arrays(lab)) for i, lab in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()
