"""Score the scene describer against hand labels: people counted and the directions they walk.

``python -m tools.describer_eval [--clip vtest.avi] [--labels docs/eval/vtest-labels.json] [--json OUT]``

Runs the real CLI (``streamcap caption CLIP --format jsonl --all-windows --video-engine describer``)
and, for every labelled window (by its start time), compares:

- **count**: the persons the describer counted in that window with the labelled numbers: within ±1
  of the people in the window's middle frame (``people``, strict), and within the range from that
  minus 1 to the people seen at any time in the window plus 1 (``people_seen``: some enter or
  leave during the two seconds, and the describer counts whoever it saw for two frames);
- **directions**: each labelled person whose direction is clear (``"left"``, or ``"right|towards"``
  for a diagonal walk: either is right) is matched to one of the describer's persons with an
  accepted motion (a maximum bipartite matching, so one described person is used once); the
  share of labelled people matched is the direction score.

Prints a Markdown table (the one in docs/scene-describer.md) and the totals.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_LABELS = ROOT / "docs" / "eval" / "vtest-labels.json"


def person_motions(objects: list[dict]) -> list[str]:
    """One motion per person the describer counted."""
    return [o["motion"] for o in objects if o["label"] == "person" for _ in range(int(o["count"]))]


def match_directions(labelled: list[str], described: list[str]) -> int:
    """How many labelled people (each ``"a|b"``: accepted motions) can be given a distinct
    described person with an accepted motion (maximum bipartite matching)."""
    accepts = [set(d.split("|")) for d in labelled]
    owner: dict[int, int] = {}  # described index → labelled index

    def augment(i: int, seen: set[int]) -> bool:
        for j, motion in enumerate(described):
            if motion in accepts[i] and j not in seen:
                seen.add(j)
                if j not in owner or augment(owner[j], seen):
                    owner[j] = i
                    return True
        return False

    return sum(augment(i, set()) for i in range(len(accepts)))


def score(labels: dict, windows: list[dict]) -> dict:
    """Per labelled window: labelled and described counts, count within ±1, directions matched."""
    by_start = {round(w["start"], 3): w for w in windows if w.get("track", "video") == "video"}
    rows = []
    for lab in labels["windows"]:
        w = by_start.get(round(lab["start"], 3))
        if w is None:
            raise SystemExit(f"no captioned window starts at {lab['start']} s (windows must start on the stride)")
        motions = person_motions(w["objects"])
        matched = match_directions(lab["directions"], motions)
        seen = lab.get("people_seen", lab["people"])
        rows.append({"start": lab["start"], "people": lab["people"], "people_seen": seen, "counted": len(motions),
                     "count_ok": abs(len(motions) - lab["people"]) <= 1,
                     "count_in_range": lab["people"] - 1 <= len(motions) <= seen + 1, "directions": len(lab["directions"]),
                     "matched": matched, "text": w["text"]})
    n = len(rows)
    total_dirs = sum(r["directions"] for r in rows)
    return {"windows": rows, "count_within_1": sum(r["count_ok"] for r in rows) / n if n else 0.0,
            "count_in_range": sum(r["count_in_range"] for r in rows) / n if n else 0.0,
            "directions_right": sum(r["matched"] for r in rows) / total_dirs if total_dirs else 0.0,
            "labelled_windows": n, "labelled_directions": total_dirs}


def caption_windows(clip: Path, extra: list[str]) -> list[dict]:
    """Every window of ``clip`` as the CLI writes it with --all-windows."""
    with tempfile.TemporaryDirectory(prefix="streamcap-describer-eval-") as tmp:
        out = Path(tmp) / "windows.jsonl"
        cmd = [sys.executable, "-m", "streamcap.cli", "caption", str(clip), "--format", "jsonl", "--all-windows",
               "--video-engine", "describer", "--no-progress", "-o", str(out), *extra]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"streamcap caption failed ({proc.returncode}): {proc.stderr[-2000:]}")
        return [json.loads(line) for line in out.read_text().splitlines() if line.strip()]


def markdown(result: dict) -> str:
    lines = ["| window | people (middle frame / seen) | counted | within ±1 of middle | in range | directions right "
             "| describer says |", "|---|---|---|---|---|---|---|"]
    for r in result["windows"]:
        lines.append(f"| {r['start']:g}–{r['start'] + 2:g} s | {r['people']} / {r['people_seen']} | {r['counted']} | "
                     f"{'yes' if r['count_ok'] else 'no'} | {'yes' if r['count_in_range'] else 'no'} | "
                     f"{r['matched']}/{r['directions']} | {r['text']} |")
    lines.append(f"| **all** | | | **{result['count_within_1']:.0%}** | **{result['count_in_range']:.0%}** | "
                 f"**{result['directions_right']:.0%}** ({sum(r['matched'] for r in result['windows'])}/"
                 f"{result['labelled_directions']}) | |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clip", type=Path, help="the labelled clip (default: vtest.avi from Debian's opencv-doc)")
    ap.add_argument("--labels", type=Path, default=DEFAULT_LABELS)
    ap.add_argument("--json", type=Path, help="write the result here too")
    ap.add_argument("streamcap_args", nargs="*", help="after --: more `streamcap caption` options "
                                                      "(e.g. --config FILE)")
    args = ap.parse_args()
    clip = args.clip
    if clip is None:
        from tools import media

        clip = media.fetch_vtest(Path.home() / ".cache" / "streamcap-test-media")
    labels = json.loads(args.labels.read_text())
    windows = caption_windows(clip, args.streamcap_args)
    results = {}
    for name in ("windows", "held_out"):  # held_out: labelled after the last change of the describer
        if labels.get(name):
            results[name] = result = score({"windows": labels[name]}, windows)
            print(f"\n## {name}\n\n{markdown(result)}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
