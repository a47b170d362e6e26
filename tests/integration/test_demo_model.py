"""The committed demo engine really captions: exact match on freshly generated held-out clips,
run through the ONNX Runtime engine exactly as the server runs it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from streamcap.runtime.config import DEFAULT_ENGINE
from streamcap.engine.base import load_engine
from tools.train_shapes import render_pool

HELD_OUT_SEED = 20261121  # never used by training (tools/train_shapes.py uses seeds 1234 to 1244, 999999)
#: Issue #2: >= 0.95 (the committed model: 0.962 on these clips; docs/training.md). A broken
#: export, preprocessing or decoder shows up here.
EXACT_MATCH_TARGET = 0.95
EXACT_MATCH_FLOOR = EXACT_MATCH_TARGET


@pytest.fixture(scope="module")
def engine():
    return load_engine(DEFAULT_ENGINE)


def test_demo_engine_manifest_describes_its_model(engine):
    assert engine.frames_per_window == 6
    assert engine.preprocessing.image_size == 64
    size = sum(p.stat().st_size for p in Path(DEFAULT_ENGINE).iterdir())
    assert size < 20 * 1024 * 1024


def test_demo_model_exact_match_on_500_held_out_clips(engine):
    pool = render_pool(500, HELD_OUT_SEED, [("mixed", 1.0)], workers=2)
    preds: list[str] = []
    for i in range(0, 500, 50):
        preds += [r.text for r in engine.caption_batch([list(c) for c in pool["frames"][i:i + 50]])]
    truth = pool["captions"]
    hits = np.array([p == t for p, t in zip(preds, truth)])
    two = np.array([" and " in t for t in truth])
    misses = [(t, p) for p, t, h in zip(preds, truth, hits) if not h][:10]
    print(f"exact match {hits.mean():.3f} (one object {hits[~two].mean():.3f}, two {hits[two].mean():.3f}; "
          f"issue target {EXACT_MATCH_TARGET})")
    assert hits.mean() >= EXACT_MATCH_FLOOR, f"exact match {hits.mean():.3f} < {EXACT_MATCH_FLOOR}; e.g. {misses}"


def test_int8_demo_engine_stays_within_two_points_of_fp32(engine, tmp_path):
    """Issue: int8 dynamic quantisation may cost at most 2 points of exact match (500 clips)."""
    import shutil

    from streamcap.export.quantize import convert_precision

    int8_dir = tmp_path / "shapes-git-int8"
    shutil.copytree(DEFAULT_ENGINE, int8_dir)
    convert_precision(int8_dir, "int8")
    int8 = load_engine(int8_dir)
    assert int8.manifest.precision == "int8"
    pool = render_pool(500, HELD_OUT_SEED, [("mixed", 1.0)], workers=2)
    truth = pool["captions"]
    em = {}
    for name, eng in (("fp32", engine), ("int8", int8)):
        preds: list[str] = []
        for i in range(0, 500, 50):
            preds += [r.text for r in eng.caption_batch([list(c) for c in pool["frames"][i:i + 50]])]
        em[name] = float(np.mean([p == t for p, t in zip(preds, truth)]))
    drop = 100 * (em["fp32"] - em["int8"])
    print(f"exact match fp32 {em['fp32']:.3f} int8 {em['int8']:.3f}: drop {drop:+.1f} points (limit 2)")
    assert drop <= 2.0
