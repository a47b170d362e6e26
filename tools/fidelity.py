#!/usr/bin/env python
"""Exact match of engine folders on the same held-out shapes clips — e.g. fp32 vs int8 vs fp16
of the demo engine (issue: the int8/fp16 drop from fp32 must stay within 2 points).

    python tools/fidelity.py engines/shapes-git /tmp/shapes-int8 [--clips 500] [--json OUT]

The first engine is the reference; each line reports exact match and the drop from it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamcap.engine.base import load_engine  # noqa: E402
from tools.train_shapes import render_pool  # noqa: E402

HELD_OUT_SEED = 20261121  # the demo-model test's held-out seed; never used by training


def exact_match(engine_dir: str, pool: dict, batch: int = 50) -> tuple[float, list[str], float]:
    eng = load_engine(engine_dir, frame_cache_size=0)
    t0 = time.perf_counter()
    preds: list[str] = []
    for i in range(0, len(pool["captions"]), batch):
        preds += [r.text for r in eng.caption_batch([list(c) for c in pool["frames"][i:i + batch]])]
    dt = time.perf_counter() - t0
    hits = [p == t for p, t in zip(preds, pool["captions"])]
    return sum(hits) / len(hits), preds, dt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("engines", nargs="+", help="engine folders; the first is the reference")
    ap.add_argument("--clips", type=int, default=500)
    ap.add_argument("--json", metavar="OUT")
    args = ap.parse_args(argv)
    pool = render_pool(args.clips, HELD_OUT_SEED, [("mixed", 1.0)], workers=2)
    rows = []
    ref_em, ref_preds = None, None
    for path in args.engines:
        em, preds, dt = exact_match(path, pool)
        precision = json.loads((Path(path) / "engine.json").read_text()).get("precision", "fp32")
        if ref_em is None:
            ref_em, ref_preds = em, preds
        same = sum(a == b for a, b in zip(preds, ref_preds)) / len(preds)
        rows.append({"engine": path, "precision": precision, "exact_match": round(em, 4),
                     "drop_points": round(100 * (ref_em - em), 2), "same_caption_as_reference": round(same, 4),
                     "seconds": round(dt, 2)})
        print(f"{path:40s} {precision:5s} exact match {em:.3f}  drop {100 * (ref_em - em):+.1f} pts  "
              f"same caption as reference {same:.3f}  ({dt:.1f} s)", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"clips": args.clips, "results": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
