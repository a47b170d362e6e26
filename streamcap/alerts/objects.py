"""Conditions on the objects a scene describer counted: pure, no I/O, no clock.

An :class:`ObjectCondition` says which objects an alert rule looks for in one captioned window's
:class:`~streamcap.core.types.SceneObject` groups: a COCO label (or ``any``), how many
(``min_count``..``max_count``), moving how (``motion``: any, or one or several of
:data:`~streamcap.core.types.MOTIONS`) and, optionally, where: a ``zone``, a polygon in normalised
picture coordinates (x right, y down, 0..1). An object is in the zone when the **bottom-centre of
its box** — where its feet or wheels meet the ground — lies inside the polygon or on its edge, so
a person standing behind a zone on the floor, whose box merely overlaps it, is not in it. Zones
count boxes: a group with a count but no boxes cannot be placed and does not count in a zone.

:class:`ObjectConditionConfig` is its config entry (``[alerts.rules.objects]``, a pydantic model);
the lifecycle (pending, start, update, end, cooldown) is :class:`streamcap.alerts.rules.ObjectTracker`'s.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from streamcap.core.types import MOTIONS, SceneObject

ANY = "any"

Point = tuple[float, float]

_MOTION_WORDS = {"left": "moving left", "right": "moving right", "towards": "coming towards",
                 "away": "going away", "still": "still", "moving": "moving", "unknown": "of unknown motion"}
_EDGE_EPS = 1e-9


def _on_segment(p: Point, a: Point, b: Point) -> bool:
    (px, py), (ax, ay), (bx, by) = p, a, b
    cross = (bx - ax) * (py - ay) - (by - ay) * (px - ax)
    if abs(cross) > _EDGE_EPS:
        return False
    return (min(ax, bx) - _EDGE_EPS <= px <= max(ax, bx) + _EDGE_EPS
            and min(ay, by) - _EDGE_EPS <= py <= max(ay, by) + _EDGE_EPS)


def point_in_polygon(point: Point, polygon: Sequence[Point]) -> bool:
    """Whether ``point`` lies inside ``polygon`` or on its boundary (even-odd rule, so a
    self-crossing polygon's overlaps count as outside). The boundary counts as inside: feet on the
    bottom edge of the picture are in a zone drawn down to that edge."""
    x, y = point
    inside = False
    n = len(polygon)
    for i in range(n):
        a, b = polygon[i], polygon[(i + 1) % n]
        if _on_segment(point, a, b):
            return True
        (ax, ay), (bx, by) = a, b
        if (ay > y) != (by > y):
            x_cross = ax + (y - ay) * (bx - ax) / (by - ay)
            if x < x_cross:
                inside = not inside
    return inside


def _polygon_area(polygon: Sequence[Point]) -> float:
    n = len(polygon)
    return abs(sum(polygon[i][0] * polygon[(i + 1) % n][1] - polygon[(i + 1) % n][0] * polygon[i][1]
                   for i in range(n))) / 2


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class ObjectCondition:
    """Which objects a rule looks for in one window. :meth:`count` says how many of the window's
    objects fit label, motion and zone; :meth:`matches` whether that is within
    ``min_count``..``max_count`` (inclusive; ``max_count`` None: no upper bound)."""

    label: str  # a COCO class name ("person", "car"), or "any"
    min_count: int = 1
    max_count: int | None = None
    motion: str | frozenset[str] = ANY  # "any", one of MOTIONS, or a set of them
    zone: tuple[Point, ...] | None = None  # normalised polygon (>= 3 points); None: the whole picture

    def __post_init__(self) -> None:
        if not isinstance(self.label, str) or not self.label.strip():
            raise ValueError("objects: label must be a class name such as 'person', or 'any'")
        object.__setattr__(self, "label", self.label.strip().lower())
        if not _is_int(self.min_count) or self.min_count < 0:
            raise ValueError(f"objects: min_count must be a whole number >= 0, got {self.min_count!r}")
        if self.max_count is not None:
            if not _is_int(self.max_count) or self.max_count < self.min_count:
                raise ValueError(f"objects: max_count ({self.max_count!r}) must be a whole number "
                                 f">= min_count ({self.min_count})")
        elif self.min_count == 0:
            raise ValueError("objects: min_count 0 without max_count matches every window; give max_count "
                             "(e.g. max_count = 0: none of them)")
        object.__setattr__(self, "motion", self._valid_motion(self.motion))
        if self.zone is not None:
            object.__setattr__(self, "zone", self._valid_zone(self.zone))

    @staticmethod
    def _valid_motion(motion: str | Iterable[str]) -> str | frozenset[str]:
        if isinstance(motion, str):
            if motion != ANY and motion not in MOTIONS:
                raise ValueError(f"objects: unknown motion {motion!r}; use 'any' or one of {list(MOTIONS)}")
            return motion
        motions = frozenset(motion)
        unknown = sorted(m for m in motions if m not in MOTIONS)
        if unknown:
            raise ValueError(f"objects: unknown motion(s) {unknown}; use one or several of {list(MOTIONS)} "
                             "(or the single word 'any')")
        if not motions:
            raise ValueError("objects: motion list is empty; use 'any' for every motion")
        return motions

    @staticmethod
    def _valid_zone(zone: Iterable[Iterable[float]]) -> tuple[Point, ...]:
        points: list[Point] = []
        for p in zone:
            xy = tuple(p)
            if len(xy) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in xy):
                raise ValueError(f"objects: zone point {p!r} must be [x, y]")
            x, y = float(xy[0]), float(xy[1])
            if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):  # also refuses NaN
                raise ValueError(f"objects: zone point [{x}, {y}] is outside the picture: x and y are "
                                 "fractions of its width and height, 0..1")
            points.append((x, y))
        if len(points) < 3:
            raise ValueError(f"objects: a zone needs at least 3 points, got {len(points)}")
        if _polygon_area(points) <= _EDGE_EPS:
            raise ValueError("objects: the zone has no area (its points are on one line)")
        return tuple(points)

    def _motion_fits(self, motion: str) -> bool:
        if self.motion == ANY:
            return True
        if isinstance(self.motion, str):
            return motion == self.motion
        return motion in self.motion

    def count(self, objects: Sequence[SceneObject]) -> int:
        """How many of one window's objects fit label and motion — and, with a zone, how many of
        their boxes have their bottom-centre in it (groups without boxes do not count there)."""
        n = 0
        for obj in objects:
            if self.label != ANY and obj.label.lower() != self.label:
                continue
            if not self._motion_fits(obj.motion):
                continue
            if self.zone is None:
                n += max(0, obj.count)
            else:
                n += sum(1 for box in obj.boxes if self.in_zone(box))
        return n

    def in_zone(self, box: tuple[float, float, float, float]) -> bool:
        """Whether a box's bottom-centre (its foot point) is in the zone (always, with no zone)."""
        if self.zone is None:
            return True
        x0, _, x1, y1 = box
        foot = ((x0 + x1) / 2, y1)
        if not all(math.isfinite(v) for v in foot):
            return False
        return point_in_polygon(foot, self.zone)

    def fits(self, count: int) -> bool:
        """Whether ``count`` is within ``min_count``..``max_count``."""
        return count >= self.min_count and (self.max_count is None or count <= self.max_count)

    def matches(self, objects: Sequence[SceneObject]) -> bool:
        return self.fits(self.count(objects))

    def describe(self, count: int) -> str:
        """A short account of what matched, for the alert's ``detail``: ``2 person moving left in zone``."""
        parts = [str(count), "object" if self.label == ANY else self.label]
        if self.motion != ANY:
            motions = [self.motion] if isinstance(self.motion, str) else sorted(self.motion, key=MOTIONS.index)
            parts.append(" or ".join(_MOTION_WORDS.get(m, m) for m in motions))
        if self.zone is not None:
            parts.append("in zone")
        return " ".join(parts)


_Coord = Annotated[float, Field(ge=0.0, le=1.0)]


class ObjectConditionConfig(BaseModel):
    """``[alerts.rules.objects]``: the objects a rule looks for (see :class:`ObjectCondition`).
    A plain pydantic model (the pure alerts layer may not import ``streamcap.runtime``), with the
    same settings as the config's models: unknown keys are refused, entries are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    label: str = Field(min_length=1, max_length=64,
                       description="A COCO class name the scene describer reports (\"person\", \"car\", "
                                   "\"dog\"), or \"any\" for every class.")
    min_count: int = Field(1, ge=0, le=10000,
                           description="At least this many matching objects in a window (0 needs max_count).")
    max_count: int | None = Field(None, ge=0, le=10000,
                                  description="At most this many (none: no upper bound). max_count = 0 with "
                                              "min_count = 0: none of them.")
    motion: str | list[str] = Field("any", description="\"any\", or one or several of " + ", ".join(MOTIONS)
                                                      + ": only objects moving so count.")
    zone: list[tuple[_Coord, _Coord]] | None = Field(
        None, min_length=3, max_length=64,
        description="A polygon of [x, y] points, fractions of the picture's width and height (0..1, y down); "
                    "an object counts when the bottom-centre of its box (its feet) is inside. None: anywhere.")

    @model_validator(mode="after")
    def _valid_condition(self) -> ObjectConditionConfig:
        self.to_condition()  # raises ValueError with the reason
        return self

    def to_condition(self) -> ObjectCondition:
        """The :class:`ObjectCondition` this entry describes."""
        motion = self.motion if isinstance(self.motion, str) else frozenset(self.motion)
        return ObjectCondition(self.label, min_count=self.min_count, max_count=self.max_count, motion=motion,
                               zone=tuple(self.zone) if self.zone is not None else None)
