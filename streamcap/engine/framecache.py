"""Per-frame vision-feature cache.

GIT-style models encode each frame on its own and add the temporal embedding afterwards, so with
overlapping windows (stride < window) the same frame appears in several windows. The cache keeps
the encoder output per frame so each frame passes the vision encoder once. Bounded: at most
``capacity`` frames; when full, the least recently used entry is evicted (counted).

Pure: no I/O, no clock, not thread-safe (the engine is used by one thread at a time).
Keys are any hashable: the pipeline passes ``(stream_id, frame_seq)``; library callers that pass
none get a content hash (``content_key``).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Hashable

import numpy as np


def content_key(frame: np.ndarray) -> tuple:
    """A key from the frame's bytes and shape (blake2b, 16 bytes)."""
    h = hashlib.blake2b(np.ascontiguousarray(frame).data, digest_size=16)
    return ("sha", frame.shape, h.digest())


class FrameFeatureCache:
    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError("capacity must be >= 0 (0 turns the cache off)")
        self.capacity = capacity
        self._items: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Hashable) -> np.ndarray | None:
        item = self._items.get(key)
        if item is None:
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return item

    def put(self, key: Hashable, features: np.ndarray) -> None:
        if self.capacity == 0:
            return
        self._items[key] = features
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)
            self.evictions += 1

    def clear(self) -> None:
        self._items.clear()
