"""What travels between a worker's threads: the encoder they share, the batches they pass on,
the counts they keep (``loop.py`` has the threads themselves)."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from pgclip.db import queue
from pgclip.db.images import NewImage
from pgclip.workers.decode import Thumbnail


class ImageEncoder(Protocol):
    """What the loop needs of an encoder (``ClipEncoder`` is the real one)."""

    def load(self) -> None: ...

    def prepare(self, image: Any) -> Any:
        """Model input for one decoded RGB image (runs in the decode thread)."""

    def encode_prepared(self, prepared: Sequence[Any]) -> np.ndarray:
        """Unit vectors for a batch of prepared inputs (runs in the model threads)."""


@dataclasses.dataclass
class Decoded:
    """One claimed batch after decoding: what the model will see, and what already failed."""

    jobs: list[queue.ClaimedJob]
    inputs: dict[int, Any]  # job id -> the encoder's prepared input
    thumbs: dict[int, Thumbnail | None]  # None: the image has its thumbnail already
    rejected: dict[int, str]  # job id -> permanent failure reason
    errors: dict[int, str]  # job id -> transient failure while preparing (retried later)
    # job id -> what decoding told of an image added with SQL, for its row (queue.Finished.probed)
    probed: dict[int, NewImage] = dataclasses.field(default_factory=dict)

    @property
    def job_ids(self) -> list[int]:
        return [j.id for j in self.jobs]


@dataclasses.dataclass
class Encoded:
    """A batch after the model, on its way to the writer."""

    batch: Decoded
    vectors: dict[int, np.ndarray]
    errors: dict[int, str]  # job id -> transient failure (retried later)


@dataclasses.dataclass
class WorkerStats:
    done: int = 0
    failed: int = 0
    retried: int = 0
    lost: int = 0
    released: int = 0
    # Told every count as it is added (the worker's metrics, workers/metrics.py).
    listener: Callable[[dict[str, int]], None] | None = dataclasses.field(default=None, repr=False, compare=False)
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        """Count from any thread (the decode, main and write threads all do)."""
        with self._lock:
            for name, n in counts.items():
                setattr(self, name, getattr(self, name) + n)
        if self.listener:
            self.listener(counts)
