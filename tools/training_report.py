#!/usr/bin/env python
"""Turn a training run's ``curve.json`` into the learning-curve plot (PNG, drawn with OpenCV)
and a markdown table, for docs/training.md.

Usage: python tools/training_report.py runs/shapes-git/curve.json [RESUMED/curve.json ...] --png OUT.png

Several curves (a run, then runs resumed from its checkpoint) are joined end to end: each one's
steps and minutes continue from the previous one's last.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import cv2
import numpy as np


def plot(curve: list[dict], out: Path, width: int = 900, height: int = 420) -> None:
    img = np.full((height, width, 3), 255, np.uint8)
    left, right, top, bottom = 70, 20, 30, 50
    steps = [r["step"] for r in curve]
    series = [("lm_loss_ema", (200, 80, 30), "caption LM loss (EMA)"),
              ("aux_loss", (40, 140, 40), "auxiliary heads loss")]
    y_max = max(max(r[k] for r in curve) for k, _, _ in series)
    y_min = max(1e-3, min(min(r[k] for r in curve) for k, _, _ in series))
    ly0, ly1 = math.log10(y_min), math.log10(y_max)

    def xy(step: float, y: float) -> tuple[int, int]:
        x = left + (step - steps[0]) / max(1, steps[-1] - steps[0]) * (width - left - right)
        fy = (math.log10(max(y, y_min)) - ly0) / max(1e-9, ly1 - ly0)
        return int(x), int(height - bottom - fy * (height - top - bottom))

    cv2.rectangle(img, (left, top), (width - right, height - bottom), (180, 180, 180), 1)
    for dec in range(math.floor(ly0), math.ceil(ly1) + 1):
        for m in (1, 2, 5):
            v = m * 10 ** dec
            if y_min <= v <= y_max:
                _, yy = xy(steps[0], v)
                cv2.line(img, (left, yy), (width - right, yy), (230, 230, 230), 1)
                cv2.putText(img, f"{v:g}", (8, yy + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (90, 90, 90), 1, cv2.LINE_AA)
    for s in np.linspace(steps[0], steps[-1], 6):
        xx, _ = xy(s, y_min)
        cv2.putText(img, f"{int(s)}", (xx - 12, height - bottom + 18), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    (90, 90, 90), 1, cv2.LINE_AA)
    cv2.putText(img, "training step", (width // 2 - 40, height - 12), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                (60, 60, 60), 1, cv2.LINE_AA)
    for i, (key, colour, label) in enumerate(series):
        pts = np.array([xy(r["step"], r[key]) for r in curve], np.int32)
        cv2.polylines(img, [pts], False, colour, 2, cv2.LINE_AA)
        cv2.putText(img, label, (width - 260, top + 20 + 18 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, 1,
                    cv2.LINE_AA)
    cv2.putText(img, "demo model training (log scale)", (left, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                (30, 30, 30), 1, cv2.LINE_AA)
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), img)


def table(curve: list[dict], every: int = 250) -> str:
    rows = ["| step | minutes | LM loss (EMA) | aux loss | lr |", "|---:|---:|---:|---:|---:|"]
    for r in curve:
        if r["step"] == 1 or r["step"] % every == 0 or r is curve[-1]:
            rows.append(f"| {r['step']} | {r['minutes']} | {r['lm_loss_ema']:.4f} | {r['aux_loss']:.4f} | {r['lr']:g} |")
    return "\n".join(rows)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("curve", type=Path, nargs="+")
    ap.add_argument("--png", type=Path, default=Path("docs/img/learning_curve.png"))
    ap.add_argument("--every", type=int, default=250)
    a = ap.parse_args()
    joined: list[dict] = []
    for path in a.curve:
        step0 = joined[-1]["step"] if joined else 0
        min0 = joined[-1]["minutes"] if joined else 0.0
        for r in json.loads(path.read_text())["curve"]:
            joined.append({**r, "step": r["step"] + step0, "minutes": round(r["minutes"] + min0, 2)})
    plot(joined, a.png)
    print(table(joined, a.every))
