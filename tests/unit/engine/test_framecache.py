"""The per-frame feature cache: bounded LRU, counted."""

import numpy as np
import pytest

from streamcap.engine.framecache import FrameFeatureCache, content_key


def test_least_recently_used_entry_is_evicted_and_counted():
    c = FrameFeatureCache(2)
    c.put("a", np.zeros(1))
    c.put("b", np.ones(1))
    assert c.get("a") is not None  # a is now the most recent
    c.put("c", np.full(1, 2.0))
    assert c.get("b") is None
    assert c.get("a") is not None and c.get("c") is not None
    assert (c.hits, c.misses, c.evictions, len(c)) == (3, 1, 1, 2)


def test_capacity_zero_keeps_nothing():
    c = FrameFeatureCache(0)
    c.put("a", np.zeros(1))
    assert c.get("a") is None and len(c) == 0


def test_negative_capacity_is_refused():
    with pytest.raises(ValueError):
        FrameFeatureCache(-1)


def test_content_key_tells_frames_apart_by_bytes_and_shape():
    a = np.zeros((4, 4, 3), np.uint8)
    b = a.copy()
    b[0, 0, 0] = 1
    assert content_key(a) == content_key(a.copy())
    assert content_key(a) != content_key(b)
    assert content_key(a) != content_key(np.zeros((2, 8, 3), np.uint8))
