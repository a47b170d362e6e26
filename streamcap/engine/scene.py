"""The scene describer's reasoning: per-frame detections of one window → tracks → motions → words.

Pure: no I/O, no clock, no model. :func:`describe_window` takes the detections of a window's
sampled frames (oldest first, evenly spaced ``dt_s`` apart), the camera's movement between them
and where the picture cut, and returns the caption text and the structured
:class:`~streamcap.core.types.SceneObject` groups.

1. **Cut.** Only the frames after the window's last cut describe the scene now; with one frame
   left motions are ``unknown``.
2. **Tracking.** Detections are linked frame to frame by a greedy match on IoU and on the
   distance between box centres measured in box heights, against where each track is expected
   (moving on at the speed of its last two sightings, so two people crossing keep their tracks) (objects of one family — vehicles,
   two-wheelers — may swap labels between frames and still link). A track may miss up to
   ``max_gap`` frames; pieces of one object's track (hidden for a frame, or a link taken by a
   neighbour) are stitched where one ends and the next begins on its path. A track counts when
   it was seen in ``min_frames`` frames (a one-frame blip is not an object) with a mean score of
   ``min_track_score``; its label is the one with the highest summed score.
3. **Motion.** The camera's own movement is taken out of the box positions. Over the track, the
   least-squares slopes of the box's bottom centre (the feet or wheels) and of its log-height
   give a sideways displacement and a depth score (feet going down the picture and the box
   growing: coming closer), both in box heights over the window. Below ``still_frac``: still; a
   dominant axis at ``move_frac`` or more: left/right/towards/away; in between: moving.
4. **Words.** Groups by (label, motion), people first, then vehicles, then animals; counts as
   words. Cautious verbs: a person *walks* only when the box looks like a whole body (its bottom
   is inside the picture), else *moves*; *runs* only when the sideways speed is at least
   ``run_speed`` heights per second and the track was seen in every frame, moving the same way
   at each step. Vehicles and animals *move*; still ones *stay still* or,
   for vehicles, *are stationary* (still vehicles share one clause, and are left out of the words
   when anything else is in view: the objects keep them); coming closer is *approaches*.
   Nothing counted: "no people, vehicles or animals detected".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from streamcap.core.types import SceneObject

PEOPLE = ("person",)
VEHICLES = ("car", "truck", "bus", "motorcycle", "bicycle", "train", "boat", "airplane")
ANIMALS = ("dog", "cat", "horse", "sheep", "cow", "bird", "elephant", "bear", "zebra", "giraffe")
DESCRIBED = PEOPLE + VEHICLES + ANIMALS
EMPTY_TEXT = "no people, vehicles or animals detected"

# labels a detector may swap for one object between frames
_FAMILIES = {"car": "vehicle", "truck": "vehicle", "bus": "vehicle", "motorcycle": "two-wheeler",
             "bicycle": "two-wheeler"}
_PLURALS = {"person": "people", "bus": "buses", "sheep": "sheep", "motorcycle": "motorcycles",
            "bicycle": "bicycles", "giraffe": "giraffes", "airplane": "airplanes"}
_NUMBERS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


class DetectionLike(Protocol):
    label: str
    score: float
    box: tuple[float, float, float, float]  # normalised x0, y0, x1, y1


@dataclass(frozen=True)
class SceneSettings:
    """How cautious the describer is. Sizes are in box heights, times in seconds."""

    describe: tuple[str, ...] = DESCRIBED  # classes the captions speak of
    min_frames: int = 2  # a track counts once seen in this many frames
    # ... and when its detections average this score: NanoDet reports from 0.35, and the objects it
    # keeps seeing at 0.35-0.45 in a still picture are mostly things shaped like people (posts, signs)
    min_track_score: float = 0.45
    max_gap: int = 2  # frames a track may miss and still link
    min_iou: float = 0.1  # or centres within max_jump heights
    max_jump: float = 1.2  # centre distance per frame step, in box heights, for a link
    still_frac: float = 0.2  # displacement over the window below this: still
    move_frac: float = 0.4  # a direction needs at least this much along its axis
    scale_weight: float = 2.0  # log-height change counts this much towards the depth score
    run_speed: float = 1.8  # sideways heights per second for "run"
    edge: float = 0.985  # a box whose bottom is below this is cut by the picture's edge
    pan_words: float = 0.08  # camera movement (picture widths per second) worth saying
    max_groups: int = 4  # groups in the text (all are in the objects)

    def __post_init__(self) -> None:
        if self.min_frames < 1 or self.max_gap < 0:
            raise ValueError("min_frames must be >= 1 and max_gap >= 0")
        if not 0 <= self.still_frac <= self.move_frac:
            raise ValueError("need 0 <= still_frac <= move_frac")


@dataclass
class Track:
    """One object followed across the window's frames."""

    points: list[tuple[int, tuple[float, float, float, float], str, float]] = field(default_factory=list)

    @property
    def last_frame(self) -> int:
        return self.points[-1][0]

    @property
    def box(self) -> tuple[float, float, float, float]:
        return self.points[-1][1]

    def predict(self, frame: int) -> tuple[float, float, float, float]:
        """The box expected at ``frame``, moving on at the speed of its last two sightings."""
        (f1, b1, _, _) = self.points[-1]
        if len(self.points) < 2:
            return b1
        (f0, b0, _, _) = self.points[-2]
        k = (frame - f1) / max(f1 - f0, 1)
        dx = ((b1[0] + b1[2]) - (b0[0] + b0[2])) / 2 * k
        dy = (b1[3] - b0[3]) * k
        return (b1[0] + dx, b1[1] + dy, b1[2] + dx, b1[3] + dy)

    @property
    def family(self) -> str:
        return _FAMILIES.get(self.points[0][2], self.points[0][2])

    def label(self) -> str:
        votes: dict[str, float] = {}
        for _, _, lab, score in self.points:
            votes[lab] = votes.get(lab, 0.0) + score
        return max(sorted(votes), key=lambda k: votes[k])

    def mean_score(self) -> float:
        return sum(p[3] for p in self.points) / len(self.points)


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _shift(box, dx: float, dy: float):
    return (box[0] - dx, box[1] - dy, box[2] - dx, box[3] - dy)


def track_objects(frames: Sequence[Sequence[DetectionLike]], settings: SceneSettings,
                  camera: Sequence[tuple[float, float]] | None = None) -> list[Track]:
    """Link the detections of consecutive frames into tracks. ``camera[i]``: the picture's
    cumulative shift at frame ``i`` (normalised; taken out of the boxes)."""
    wanted = set(settings.describe)
    tracks: list[Track] = []
    for i, dets in enumerate(frames):
        cx, cy = camera[i] if camera else (0.0, 0.0)
        boxes = [(_shift(d.box, cx, cy), d.label, float(d.score)) for d in dets if d.label in wanted]
        candidates = []
        for ti, t in enumerate(tracks):
            gap = i - t.last_frame
            if gap > settings.max_gap + 1:
                continue
            tb = t.predict(i)
            th = max(tb[3] - tb[1], 1e-3)
            for bi, (box, label, _) in enumerate(boxes):
                if _FAMILIES.get(label, label) != t.family:
                    continue
                iou = _iou(tb, box)
                bh = max(box[3] - box[1], 1e-3)
                dist = math.hypot((tb[0] + tb[2] - box[0] - box[2]) / 2, (tb[3] - box[3])) / max(th, bh)
                size = max(th, bh) / min(th, bh)
                if (iou >= settings.min_iou or dist <= settings.max_jump * gap) and size <= 1.6:
                    candidates.append((dist - iou, ti, bi))
        used_t: set[int] = set()
        used_b: set[int] = set()
        for _, ti, bi in sorted(candidates):
            if ti in used_t or bi in used_b:
                continue
            used_t.add(ti)
            used_b.add(bi)
            box, label, score = boxes[bi]
            tracks[ti].points.append((i, box, label, score))
        for bi, (box, label, score) in enumerate(boxes):
            if bi not in used_b:
                tracks.append(Track([(i, box, label, score)]))
    tracks = _stitch(tracks, settings)
    return [t for t in tracks if len(t.points) >= settings.min_frames and t.mean_score() >= settings.min_track_score]


def _stitch(tracks: list[Track], settings: SceneSettings) -> list[Track]:
    """Join the pieces of one object's track: a track that starts after another of its family
    ended, where that one was heading (a person hidden for a frame behind another, or a link
    stolen by a neighbour, leaves two pieces that would be counted twice)."""
    tracks = sorted(tracks, key=lambda t: t.points[0][0])
    merged = True
    while merged:
        merged = False
        best = None
        for a in tracks:
            for b in tracks:
                first = b.points[0][0]
                gap = first - a.last_frame
                if b is a or gap < 1 or gap > settings.max_gap + 1 or a.family != b.family:
                    continue
                pa, bb = a.predict(first), b.points[0][1]
                h = max(pa[3] - pa[1], bb[3] - bb[1], 1e-3)
                dist = math.hypot((pa[0] + pa[2] - bb[0] - bb[2]) / 2, pa[3] - bb[3]) / h
                size = max(pa[3] - pa[1], bb[3] - bb[1]) / max(min(pa[3] - pa[1], bb[3] - bb[1]), 1e-3)
                if dist <= settings.max_jump * gap and size <= 1.6 and (best is None or dist < best[0]):
                    best = (dist, a, b)
        if best is not None:
            _, a, b = best
            a.points.extend(b.points)
            tracks.remove(b)
            merged = True
    return tracks


def _slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    den = sum((x - mx) ** 2 for x in xs)
    return 0.0 if den == 0 else sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den


@dataclass(frozen=True)
class Motion:
    motion: str  # one of MOTIONS
    sideways: float  # signed, box heights over the window (+: right)
    depth: float  # signed score (+: towards the camera)
    speed: float  # sideways box heights per second
    steady: bool = False  # seen in every frame, every step sideways the same way (speed words need it)


def track_motion(track: Track, dt_s: float, settings: SceneSettings, frames: int,
                 aspect: float = 1.0) -> Motion:
    """How a track moved over a window of ``frames`` frames ``dt_s`` apart. ``aspect``: the
    picture's width over its height (boxes are normalised, heights and widths in different units)."""
    pts = track.points
    if len(pts) < 2 or dt_s <= 0:
        return Motion("unknown", 0.0, 0.0, 0.0)
    ts = [p[0] * dt_s for p in pts]
    heights = [max(p[1][3] - p[1][1], 1e-3) for p in pts]
    h = sorted(heights)[len(heights) // 2]
    feet_x = [(p[1][0] + p[1][2]) / 2 * aspect for p in pts]
    feet_y = [p[1][3] for p in pts]
    span = max(frames - 1, 1) * dt_s  # the whole window: a short track's slope speaks for it
    vx = _slope(ts, feet_x) / h  # heights per second
    vy = _slope(ts, feet_y) / h
    vs = _slope(ts, [math.log(x) for x in heights])
    sideways = vx * span
    depth = (vy + settings.scale_weight * vs) * span
    if max(abs(sideways), abs(depth)) < settings.still_frac:
        motion = "still"
    elif abs(sideways) >= settings.move_frac and abs(sideways) >= abs(depth):
        motion = "right" if sideways > 0 else "left"
    elif abs(depth) >= settings.move_frac and abs(depth) > abs(sideways):
        motion = "towards" if depth > 0 else "away"
    else:
        motion = "moving"
    steps = [b - a for a, b in zip(feet_x, feet_x[1:])]
    steady = len(pts) == frames and (all(d > 0 for d in steps) or all(d < 0 for d in steps))
    return Motion(motion, sideways, depth, abs(vx), steady)


@dataclass(frozen=True)
class SceneDescription:
    text: str
    objects: tuple[SceneObject, ...]
    score: float  # mean log detection score of the objects counted (0 when none)
    key: str = ""  # the gist windows agree on (see :func:`gist`)


def _bucket(n: int) -> str:
    return str(n) if n <= 3 else "4-6" if n <= 6 else "7+"


def gist(objects: Sequence[SceneObject]) -> str:
    """What consecutive windows must share for the stabiliser to call a description final: per
    kind (people, vehicles, each animal) a coarse count (1, 2, 3, 4-6, 7+) and the motion most of
    them share (``mixed`` when no motion holds 60 %). Exact counts flicker by one between windows
    as people pass behind each other; the gist does not."""
    totals: dict[str, int] = {}
    motions: dict[str, dict[str, int]] = {}
    for o in objects:
        kind = "vehicle" if o.label in VEHICLES else o.label
        totals[kind] = totals.get(kind, 0) + o.count
        m = motions.setdefault(kind, {})
        m[o.motion] = m.get(o.motion, 0) + o.count
    parts = []
    for kind in sorted(totals):
        motion, n = max(sorted(motions[kind].items()), key=lambda kv: kv[1])
        parts.append(f"{kind}:{_bucket(totals[kind])}:{motion if n >= 0.6 * totals[kind] else 'mixed'}")
    return "|".join(parts) or "empty"


def _count_word(n: int, *, article: str = "a") -> str:
    if n == 1:
        return article
    return _NUMBERS[n] if n < len(_NUMBERS) else str(n)


def _plural(label: str, n: int) -> str:
    if n == 1:
        return label
    return _PLURALS.get(label, label + "s")


def _kind_order(label: str) -> int:
    return 0 if label in PEOPLE else 1 if label in VEHICLES else 2


_DIRECTION = {"left": "left", "right": "right", "away": "away"}


def _verb(label: str, motion: str, n: int, *, whole: bool, running: bool) -> str:
    one = n == 1
    if motion == "still":
        if label in VEHICLES:
            return "is stationary" if one else "are stationary"
        return "stays still" if one else "stay still"
    if motion == "unknown":
        return "is in view" if one else "are in view"
    if motion == "towards":
        return "approaches" if one else "approach"
    if label in PEOPLE and whole:
        base = ("runs" if one else "run") if running else ("walks" if one else "walk")
    else:
        base = "moves" if one else "move"
    return base if motion == "moving" else f"{base} {_DIRECTION[motion]}"


def describe_window(frames: Sequence[Sequence[DetectionLike]], dt_s: float, settings: SceneSettings, *,
                    camera: Sequence[tuple[float, float]] | None = None, cut_after: int | None = None,
                    aspect: float = 1.0) -> SceneDescription:
    """Describe one window. ``frames``: each sampled frame's detections, oldest first, ``dt_s``
    apart. ``camera``: the picture's cumulative shift at each frame (normalised, from the first
    frame; None: a still camera). ``cut_after``: index of the first frame after the window's last
    cut (None: no cut). ``aspect``: the picture's width / height."""
    if cut_after:
        frames = frames[cut_after:]
        camera = camera[cut_after:] if camera else None
    n_frames = len(frames)
    single = n_frames < 2
    min_frames = 1 if single else min(settings.min_frames, n_frames)
    tracks = track_objects(frames, replace(settings, min_frames=min_frames), camera)
    groups: dict[tuple[str, str], list[tuple[Track, Motion]]] = {}
    for t in tracks:
        m = Motion("unknown", 0.0, 0.0, 0.0) if single else track_motion(t, dt_s, settings, n_frames, aspect)
        groups.setdefault((t.label(), m.motion), []).append((t, m))
    ordered = sorted(groups.items(), key=lambda kv: (_kind_order(kv[0][0]), kv[0][0], kv[0][1] == "still",
                                                     -len(kv[1]), kv[0][1]))
    objects = tuple(SceneObject(label, len(members), motion, tuple(t.box for t, _ in members))
                    for (label, motion), members in ordered)
    scores = [t.mean_score() for t in tracks]
    score = sum(math.log(max(s, 1e-6)) for s in scores) / len(scores) if scores else 0.0
    if not objects:
        text = EMPTY_TEXT
    else:
        parts: list[str] = []
        said: set[str] = set()
        parked = [(label, len(m)) for (label, motion), m in ordered if motion == "still" and label in VEHICLES]
        if len(parked) < len(ordered):
            # still vehicles are the background of a scene where something moves or someone is
            # there: the objects keep them, the words (read in a few seconds) do not
            ordered = [g for g in ordered if not (g[0][1] == "still" and g[0][0] in VEHICLES)]
            parked = []
        elif len(parked) > 1:  # "two cars and a truck are stationary": one clause for the still vehicles
            ordered = []
        for (label, motion), members in ordered[: settings.max_groups]:
            n = len(members)
            whole = all(t.box[3] < settings.edge for t, _ in members)
            # a run is claimed only for tracks seen in every frame moving one way at each step: a
            # link that jumped between two people side by side looks fast too
            running = motion in ("left", "right") and all(m.steady and m.speed >= settings.run_speed
                                                           for _, m in members)
            verb = _verb(label, motion, n, whole=whole, running=running)
            if label in said:  # "three people walk left, two walk right, one stays still"
                parts.append(f"{_count_word(n, article='one')} {verb}")
            else:
                parts.append(f"{_count_word(n, article='an' if label[0] in 'aeiou' else 'a')} "
                             f"{_plural(label, n)} {verb}")
                said.add(label)
        rest = sum(len(m) for _, m in ordered[settings.max_groups:])
        if len(parked) > 1:
            names = [f"{_count_word(n, article='an' if lab[0] in 'aeiou' else 'a')} {_plural(lab, n)}" for lab, n in parked]
            parts.append(", ".join(names[:-1]) + " and " + names[-1] + " are stationary")
        if rest > 0:
            parts.append(f"{_count_word(rest, article='one')} more")
        text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    pan = _pan_words(camera, dt_s, settings)
    if pan:
        text = f"{pan}; {text}"
    if single and cut_after:
        text = f"new scene: {text}"
    return SceneDescription(text, objects, score, ("cut:" if cut_after else "") + gist(objects))


def _pan_words(camera, dt_s: float, settings: SceneSettings) -> str:
    if not camera or len(camera) < 2 or dt_s <= 0:
        return ""
    span = (len(camera) - 1) * dt_s
    vx = (camera[-1][0] - camera[0][0]) / span
    vy = (camera[-1][1] - camera[0][1]) / span
    if max(abs(vx), abs(vy)) < settings.pan_words:
        return ""
    if abs(vx) >= abs(vy):  # the picture moves right when the camera turns left
        return "the camera pans " + ("left" if vx > 0 else "right")
    return "the camera tilts " + ("up" if vy > 0 else "down")
