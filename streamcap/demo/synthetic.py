"""The synthetic "shapes" world: scenes, captions, rendering and scripted storylines.

Pure and deterministic: no clock, no I/O, no asyncio. Everything takes an explicit
``numpy.random.Generator`` or seed and a media time in seconds, so the training script,
the live ``synthetic:shapes`` source, the stability tools and the tests all render the
exact same world.

A scene holds one or two objects. Each object has a colour, a shape and a motion, a start
position (centre, in units of the canvas' shorter side) and a speed. Captions follow a fixed
grammar; with two objects they are named left first, by horizontal position in the first
frame of the clip.
"""

from __future__ import annotations

import functools

import math
from dataclasses import dataclass

import numpy as np

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 45, 40),
    "green": (40, 170, 60),
    "blue": (45, 75, 215),
    "yellow": (235, 205, 35),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
MOTIONS: tuple[str, ...] = ("left", "right", "up", "down", "still")
MOTION_PHRASES: dict[str, str] = {
    "left": "moves left",
    "right": "moves right",
    "up": "moves up",
    "down": "moves down",
    "still": "stays still",
}
_DIRECTIONS: dict[str, tuple[float, float]] = {
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
    "still": (0.0, 0.0),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)

#: Every word the caption grammar can produce, in a fixed order (the tokenizer's vocabulary).
VOCABULARY: tuple[str, ...] = (
    "a", *COLOUR_NAMES, *SHAPES, "moves", "left", "right", "up", "down", "stays", "still", "and",
)


@dataclass(frozen=True)
class ShapeObject:
    """One object of a scene. Positions and sizes are in units of the canvas' shorter side."""

    colour: str
    shape: str
    motion: str
    x0: float
    y0: float
    size: float
    speed: float  # canvas units per second; ignored when motion == "still"
    tint: tuple[int, int, int] = (0, 0, 0)  # small per-object colour jitter

    def centre(self, t_s: float) -> tuple[float, float]:
        dx, dy = _DIRECTIONS[self.motion]
        return self.x0 + dx * self.speed * t_s, self.y0 + dy * self.speed * t_s

    def phrase(self) -> str:
        return f"a {self.colour} {self.shape} {MOTION_PHRASES[self.motion]}"


@dataclass(frozen=True)
class Scene:
    """One or two objects on a background, described by a caption."""

    objects: tuple[ShapeObject, ...]
    background: tuple[int, int, int]
    texture_seed: int
    aspect: float = 1.0  # width / height the scene was laid out for

    def ordered(self, t_s: float = 0.0) -> tuple[ShapeObject, ...]:
        """Objects ordered left to right by their horizontal position at time ``t_s``."""
        return tuple(sorted(self.objects, key=lambda o: o.centre(t_s)[0]))

    def caption(self, t_s: float = 0.0) -> str:
        """Ground-truth caption of a clip whose first frame is at scene time ``t_s``."""
        return " and ".join(o.phrase() for o in self.ordered(t_s))


def scene_caption(scene: Scene, t_s: float = 0.0) -> str:
    return scene.caption(t_s)


# --------------------------------------------------------------------------- sampling


def _sample_object(rng: np.random.Generator, speed_range: tuple[float, float]) -> ShapeObject:
    colour = COLOUR_NAMES[rng.integers(len(COLOUR_NAMES))]
    shape = SHAPES[rng.integers(len(SHAPES))]
    motion = MOTIONS[rng.integers(len(MOTIONS))]
    size = float(rng.uniform(0.2, 0.27))
    speed = float(rng.uniform(*speed_range)) if motion != "still" else 0.0
    tint = tuple(int(v) for v in rng.integers(-18, 19, size=3))
    return ShapeObject(colour, shape, motion, 0.0, 0.0, size, speed, tint)  # type: ignore[arg-type]


def _fits(obj: ShapeObject, aspect: float, duration_s: float, margin: float = 0.02) -> bool:
    r = obj.size / 2
    for t in (0.0, duration_s):
        x, y = obj.centre(t)
        if x - r < margin or x + r > aspect - margin or y - r < margin or y + r > 1.0 - margin:
            return False
    return True


def _apart(a: ShapeObject, b: ShapeObject, duration_s: float, steps: int = 8) -> bool:
    """True when the two objects never overlap and never swap their left/right order."""
    min_gap = (a.size + b.size) / 2 + 0.03
    order0 = a.centre(0.0)[0] < b.centre(0.0)[0]
    for i in range(steps + 1):
        t = duration_s * i / steps
        (ax, ay), (bx, by) = a.centre(t), b.centre(t)
        if math.hypot(ax - bx, ay - by) < min_gap:
            return False
        if (ax < bx) != order0 or abs(ax - bx) < 0.12:
            return False
    return True


def sample_scene(
    rng: np.random.Generator,
    *,
    n_objects: int | None = None,
    duration_s: float = 2.0,
    speed_range: tuple[float, float] = (0.05, 0.16),
    aspect: float = 1.0,
    max_tries: int = 200,
) -> Scene:
    """Sample a scene whose objects stay inside the canvas, apart, and in the same left/right
    order for ``duration_s`` seconds."""
    if n_objects is None:
        n_objects = int(rng.integers(1, 3))
    for _ in range(max_tries):
        objs: list[ShapeObject] = []
        ok = True
        for _i in range(n_objects):
            o = _sample_object(rng, speed_range)
            placed = False
            for _j in range(30):
                x0 = float(rng.uniform(o.size / 2, aspect - o.size / 2))
                y0 = float(rng.uniform(o.size / 2, 1.0 - o.size / 2))
                cand = ShapeObject(o.colour, o.shape, o.motion, x0, y0, o.size, o.speed, o.tint)
                if _fits(cand, aspect, duration_s) and all(
                    _apart(cand, other, duration_s) for other in objs
                ):
                    objs.append(cand)
                    placed = True
                    break
            if not placed:
                ok = False
                break
        if ok:
            grey = int(rng.integers(90, 200))
            bg = tuple(int(np.clip(grey + d, 0, 255)) for d in rng.integers(-20, 21, size=3))
            return Scene(tuple(objs), bg, int(rng.integers(2**31)), aspect)  # type: ignore[arg-type]
    raise RuntimeError("could not place objects; relax duration_s or speed_range")


# --------------------------------------------------------------------------- rendering


def _textured(background, texture: np.ndarray, height: int, width: int) -> np.ndarray:
    base = np.empty((height, width, 3), np.float32)
    base[:] = background
    base += texture[..., None] * 12.0
    return np.clip(base, 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=16)
def _background(background: tuple, texture_seed: int, height: int, width: int) -> np.ndarray:
    """A scene's textured background (read-only; copy before drawing): the same pixels as
    :func:`_textured` makes, once per scene instead of once per frame (a live demo stream renders
    10 frames a second)."""
    img = _textured(background, _texture(texture_seed, height, width), height, width)
    img.flags.writeable = False
    return img


def _texture(seed: int, height: int, width: int) -> np.ndarray:
    """A light, smooth background texture in [-1, 1], deterministic per scene."""
    rng = np.random.default_rng(seed)
    coarse = rng.standard_normal((4, 4)).astype(np.float32)
    import cv2  # local: keep module import cheap for pure users

    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)


def render_scene(
    scene: Scene,
    t_s: float,
    width: int,
    height: int,
    *,
    noise_seed: int | None = None,
    noise_std: float = 6.0,
    texture: np.ndarray | None = None,
) -> np.ndarray:
    """Render ``scene`` at scene time ``t_s`` into an RGB uint8 array of ``height``×``width``."""
    import cv2

    unit = float(min(width, height))
    # scale horizontally so a scene laid out for another aspect still fills the canvas
    sx = width / (scene.aspect * unit)
    if texture is None:  # the same scene's background for every frame of it: made once
        img = _background(tuple(scene.background), scene.texture_seed, height, width).copy()
    else:
        img = _textured(scene.background, texture, height, width)
    for obj in scene.objects:
        colour = tuple(int(np.clip(c + d, 0, 255)) for c, d in zip(COLOURS[obj.colour], obj.tint))
        _draw(img, obj, t_s, unit, sx, colour, cv2.LINE_AA)
    if noise_std > 0:
        nrng = np.random.default_rng(noise_seed)
        noisy = img.astype(np.int16) + nrng.normal(0, noise_std, img.shape).astype(np.int16)
        img = np.clip(noisy, 0, 255).astype(np.uint8)
    return img


def _draw(img: np.ndarray, obj: ShapeObject, t_s: float, unit: float, sx: float, colour,
          line_type: int) -> None:
    import cv2

    shift = 4  # sub-pixel precision
    mul = 1 << shift
    cx, cy = obj.centre(t_s)
    px, py = cx * unit * sx, cy * unit
    r = obj.size * unit / 2
    if obj.shape == "circle":
        cv2.circle(img, (round(px * mul), round(py * mul)), round(r * mul), colour, -1, line_type, shift)
        return
    if obj.shape == "square":
        h = r * 0.9
        pts = np.array([[px - h, py - h], [px + h, py - h], [px + h, py + h], [px - h, py + h]])
    else:
        pts = np.array([[px, py - r], [px + r * 0.95, py + r * 0.8], [px - r * 0.95, py + r * 0.8]])
    cv2.fillPoly(img, [np.round(pts * mul).astype(np.int32)], colour, line_type, shift)


def render_label_map(scene: Scene, t_s: float, width: int, height: int) -> np.ndarray:
    """Which object covers each pixel at ``t_s``: 0 = background, i + 1 = ``scene.objects[i]``
    (uint8 ``height``×``width``; later objects are drawn over earlier ones, as in ``render_scene``)."""
    import cv2

    unit = float(min(width, height))
    sx = width / (scene.aspect * unit)
    labels = np.zeros((height, width), np.uint8)
    for i, obj in enumerate(scene.objects):
        _draw(labels, obj, t_s, unit, sx, i + 1, cv2.LINE_8)
    return labels


def clip_times(window_s: float, frames: int, t0_s: float = 0.0) -> list[float]:
    """Times of ``frames`` samples evenly spaced over a window of ``window_s`` seconds."""
    if frames == 1:
        return [t0_s]
    return [t0_s + window_s * k / (frames - 1) for k in range(frames)]


def render_clip(
    scene: Scene,
    times_s: list[float],
    width: int,
    height: int,
    *,
    noise_seed: int = 0,
    noise_std: float = 6.0,
) -> np.ndarray:
    """Render a clip: an array of shape (len(times_s), height, width, 3), RGB uint8."""
    tex = _texture(scene.texture_seed, height, width)
    return np.stack(
        [
            render_scene(scene, t, width, height, noise_seed=noise_seed * 1000 + i,
                         noise_std=noise_std, texture=tex)
            for i, t in enumerate(times_s)
        ]
    )


# --------------------------------------------------------------------------- storylines


@dataclass(frozen=True)
class StoryScene:
    """A scene of a storyline, shown from media time ``start_s`` to ``end_s``."""

    start_s: float
    end_s: float
    scene: Scene


class Storyline:
    """A scripted, endless sequence of scenes, each ``scene_s`` seconds long.

    Scene ``i`` covers media time ``[i*scene_s, (i+1)*scene_s)``; within it, the objects move
    from their start positions at the storyline's speed. Deterministic per ``seed``: scene ``i``
    is sampled from its own generator, so random access costs nothing and memory stays flat.
    """

    def __init__(
        self,
        seed: int = 0,
        scene_s: float = 6.0,
        aspect: float = 1.0,
        speed_range: tuple[float, float] = (0.06, 0.09),
    ) -> None:
        if scene_s <= 0:
            raise ValueError("scene_s must be positive")
        self.seed = seed
        self.scene_s = scene_s
        self.aspect = aspect
        self.speed_range = speed_range
        self._cache: dict[int, Scene] = {}

    def index_at(self, t_s: float) -> int:
        return max(0, int(math.floor(t_s / self.scene_s)))

    def scene(self, index: int) -> Scene:
        cached = self._cache.get(index)
        if cached is None:
            rng = np.random.default_rng([self.seed, index])
            prev = self._cache.get(index - 1) if index > 0 else None
            while True:
                cached = sample_scene(rng, duration_s=self.scene_s, speed_range=self.speed_range,
                                      aspect=self.aspect)
                # consecutive scenes always differ, so every scene change is a caption change
                if prev is None or cached.caption() != prev.caption():
                    break
            if len(self._cache) > 64:
                self._cache.pop(min(self._cache))
            self._cache[index] = cached
        return cached

    def scene_start_s(self, index: int) -> float:
        """Media time at which scene ``index`` starts."""
        return index * self.scene_s

    def story_scene(self, index: int) -> StoryScene:
        return StoryScene(index * self.scene_s, (index + 1) * self.scene_s, self.scene(index))

    def caption_at(self, t_s: float) -> str:
        """Ground truth for a clip whose frames lie in the scene playing at ``t_s``."""
        i = self.index_at(t_s)
        return self.scene(i).caption(t_s - self.scene_start_s(i))

    def caption_for_window(self, start_s: float, end_s: float, frames: int = 6) -> str:
        """Ground truth for a window: the scene covering most of its sample times (ties: later)."""
        counts: dict[int, int] = {}
        for t in clip_times(end_s - start_s, frames, start_s):
            i = self.index_at(t + 1e-9)
            counts[i] = counts.get(i, 0) + 1
        best = max(counts, key=lambda i: (counts[i], i))
        first_t = max(start_s, self.scene_start_s(best))
        return self.scene(best).caption(first_t - self.scene_start_s(best))

    def scene_changes(self, until_s: float) -> list[float]:
        return [i * self.scene_s for i in range(1, int(until_s / self.scene_s) + 1)]

    def render(self, t_s: float, width: int, height: int, frame_index: int = 0) -> np.ndarray:
        i = self.index_at(t_s)
        return render_scene(self.scene(i), t_s - self.scene_start_s(i), width, height,
                            noise_seed=(self.seed * 7919 + frame_index) & 0x7FFFFFFF)


class ScriptedStoryline(Storyline):
    """A storyline whose scenes and their lengths are given: ``[(duration_s, Scene), ...]``
    (tests and tools that need an event to last exactly so long). After the last scene, the
    last scene goes on."""

    def __init__(self, scenes: list[tuple[float, Scene]], seed: int = 0) -> None:
        if not scenes or any(d <= 0 for d, _ in scenes):
            raise ValueError("give at least one scene, each with a positive duration")
        super().__init__(seed, scene_s=max(d for d, _ in scenes), aspect=scenes[0][1].aspect)
        self._scripted = [s for _, s in scenes]
        self._starts = [0.0]
        for d, _ in scenes:
            self._starts.append(self._starts[-1] + d)

    @property
    def duration_s(self) -> float:
        return self._starts[-1]

    def index_at(self, t_s: float) -> int:
        i = 0
        while i + 1 < len(self._scripted) and t_s >= self._starts[i + 1]:
            i += 1
        return i

    def scene(self, index: int) -> Scene:
        return self._scripted[min(index, len(self._scripted) - 1)]

    def story_scene(self, index: int) -> StoryScene:
        end = self._starts[index + 1] if index + 1 < len(self._scripted) else math.inf
        return StoryScene(self._starts[index], end, self.scene(index))

    def scene_start_s(self, index: int) -> float:
        return self._starts[index]

    def scene_changes(self, until_s: float) -> list[float]:
        return [t for t in self._starts[1:-1] if t <= until_s]


def still_scene(rng: np.random.Generator, objects: list[tuple[str, str]], aspect: float = 4 / 3) -> Scene:
    """A scene of still objects with the given (colour, shape)s, placed like a sampled scene."""
    from dataclasses import replace

    base = sample_scene(rng, n_objects=len(objects), duration_s=1.0, aspect=aspect)
    objs = tuple(replace(o, colour=c, shape=s, motion="still") for o, (c, s) in zip(base.objects, objects))
    return replace(base, objects=objs)
