"""A short smoke run of the deterministic training script lowers the loss."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_training_smoke_run_lowers_the_loss(tmp_path):
    pytest.importorskip("torch", reason="training needs the export extra (torch, transformers)")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "train_shapes.py"), "--smoke", "--steps", "20",
         "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    summary = json.loads((tmp_path / "curve.json").read_text())["summary"]
    assert summary["steps"] == 20
    assert summary["final_lm_loss_ema"] < summary["first_lm_loss"]
