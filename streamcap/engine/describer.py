"""The scene-describer engine: a real pretrained detector behind the ``CaptionEngine`` protocol.

Each window's sampled frames go through the detector (NanoDet, :mod:`streamcap.engine.detector`)
once: detections and a small grey thumbnail are cached per frame key, so overlapping windows
(stride < window) detect each frame once, like the caption models' frame-feature cache. The
thumbnails give the cut check (a large change of the picture between neighbouring frames) and
the camera-movement check (phase correlation of the whole picture); :mod:`streamcap.engine.scene`
turns detections, cuts and camera movement into the caption and its structured objects.

Synchronous and blocking, used by one thread at a time (the pipeline's engine thread).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from streamcap.core.errors import EngineLoadError
from streamcap.core.types import CaptionResult
from streamcap.engine.framecache import FrameFeatureCache, content_key
from streamcap.engine.manifest import MANIFEST_NAME
from streamcap.engine.preprocess import Preprocessing
from streamcap.engine.scene import DESCRIBED, SceneSettings, describe_window
from streamcap.engine.windows import sample_indices

DESCRIBER_KIND = "describer"
THUMB = 64  # side of the grey thumbnail the cut and camera checks look at
CUT_DIFF = 0.25  # mean absolute thumbnail change (0..1) between neighbouring frames that is a cut
MIN_PAN_RESPONSE = 0.2  # phase-correlation peak below this: no reliable camera movement
# a fixed camera over a busy scene (vtest.avi: people walking) shows up to ~2 px of shift at 64 px
# between frames 1/3 s apart: smaller shifts are taken for no camera movement (slow pans are not
# taken out of the motions: with them the describer may say a still object moves)
MIN_PAN_PX = 2.5


def describer_kind(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds a scene-describer engine (``engine.json`` of kind describer)."""
    try:
        raw = json.loads((Path(folder) / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(raw, dict) and raw.get("kind") == DESCRIBER_KIND


def thumbnail(frame: np.ndarray) -> np.ndarray:
    """A THUMB×THUMB grey float32 picture in 0..1 (what the cut and camera checks compare)."""
    grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    return cv2.resize(grey, (THUMB, THUMB), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0


_HANN = cv2.createHanningWindow((THUMB, THUMB), cv2.CV_32F)


def picture_motion(prev: np.ndarray, cur: np.ndarray) -> tuple[float, float, bool]:
    """(dx, dy, cut) between two thumbnails: the picture's shift (normalised to its size; +x:
    the content moved right) and whether the picture changed too much to be one shot."""
    if float(np.mean(np.abs(cur - prev))) > CUT_DIFF:
        return 0.0, 0.0, True
    # copies: OpenCV's phaseCorrelate writes the window into its inputs (the cached thumbnails)
    (dx, dy), response = cv2.phaseCorrelate(prev.copy(), cur.copy(), _HANN)
    if response < MIN_PAN_RESPONSE or max(abs(dx), abs(dy)) < MIN_PAN_PX:
        return 0.0, 0.0, False
    return dx / THUMB, dy / THUMB, False


class DescriberEngine:
    """``CaptionEngine`` for a describer folder (``engine.json`` of kind ``describer``)."""

    def __init__(self, path: str | os.PathLike, *, provider: str = "cpu", intra_op_threads: int | None = None,
                 frame_cache_size: int = 256, precision: str | None = None, verify_hashes: bool = True,
                 settings: SceneSettings | None = None, refresh_s: float | None = 5.0, **_ignored) -> None:
        from streamcap.engine.detector import Detector

        folder = Path(path)
        if not describer_kind(folder):
            raise EngineLoadError(f"{folder} is not a scene-describer engine folder (engine.json of kind "
                                  f"{DESCRIBER_KIND!r})")
        raw = json.loads((folder / MANIFEST_NAME).read_text())
        kwargs: dict = {"provider": provider, "intra_op_threads": intra_op_threads, "verify_hashes": verify_hashes}
        if precision:
            kwargs["precision"] = precision
        self.detector = Detector(folder, **kwargs)
        self.manifest = raw
        self.name = str(raw.get("name", folder.name))
        self.frames_per_window = int(raw.get("frames_per_window", 4))
        # frames on a grid of window_s / K (the last at the window's end): with the stride a
        # multiple of it, windows share frames and each frame is detected once
        self.frame_sampling = "grid"
        # a final that agrees by gist is renewed after this long (the stabiliser's refresh_s)
        self.refresh_s = refresh_s
        self.window_s = float(raw.get("window_s", 2.0))
        size = raw.get("detector", {}).get("input_size", [416, 416])
        self.preprocessing = Preprocessing(int(size[0]), resize="stretch")
        described = tuple(c for c in raw.get("describe", DESCRIBED) if c in self.detector.classes)
        self.settings = settings or SceneSettings(describe=described or DESCRIBED)
        self.cache = FrameFeatureCache(frame_cache_size)

    # ------------------------------------------------------------------ frames

    def _analyse(self, frames: Sequence[np.ndarray], keys: Sequence) -> list[tuple]:
        """(detections, thumbnail) of each frame, from the cache or detected now in one batch."""
        out: list[tuple | None] = [self.cache.get(k) for k in keys]
        missing: dict = {}
        for i, item in enumerate(out):
            if item is None:
                missing.setdefault(keys[i], i)  # a frame repeated in one batch is detected once
        if missing:
            idx = list(missing.values())
            found = self.detector.detect_batch([frames[i] for i in idx])
            for i, dets in zip(idx, found):
                item = (tuple(dets), thumbnail(frames[i]))
                self.cache.put(keys[i], item)
                out[i] = item
            for i, item in enumerate(out):
                if item is None:
                    out[i] = out[missing[keys[i]]]
        return out  # type: ignore[return-value]

    def caption_batch(self, windows: Sequence[Sequence[np.ndarray]], *, keys=None, aspect: float | None = None,
                      **_options) -> list[CaptionResult]:
        """Describe each window (its frames ``window_s / K`` apart, the pipeline's ``grid`` sampling). ``aspect``: the
        source picture's width / height (frames come stretched to the detector's square; motion
        is measured in box heights). Decoding options of the caption models (beams, prompt…) do
        not apply and are ignored."""
        if keys is None:
            keys = [[content_key(f) for f in w] for w in windows]
        flat_frames = [f for w in windows for f in w]
        flat_keys = [k for ks in keys for k in ks]
        analysed = self._analyse(flat_frames, flat_keys)
        results: list[CaptionResult] = []
        pos = 0
        for w in windows:
            items = analysed[pos: pos + len(w)]
            pos += len(w)
            results.append(self._describe(items, self.window_s / max(len(w), 1), aspect or 1.0))
        return results

    def _describe(self, items: Sequence[tuple], dt_s: float, aspect: float) -> CaptionResult:
        camera = [(0.0, 0.0)]
        cut_after = None
        for i in range(1, len(items)):
            dx, dy, cut = picture_motion(items[i - 1][1], items[i][1])
            if cut:
                cut_after = i
                camera = [(0.0, 0.0)] * (i + 1)  # shifts start again after a cut
                continue
            camera.append((camera[-1][0] + dx, camera[-1][1] + dy))
        d = describe_window([dets for dets, _ in items], dt_s, self.settings, camera=camera, cut_after=cut_after,
                           aspect=aspect)
        return CaptionResult(d.text, d.score, d.objects, d.key)

    def caption(self, frames: Sequence[np.ndarray], prompt: str | None = None, max_new_tokens: int | None = None,
                **options) -> CaptionResult:
        """Describe one clip of any number of frames (``frames_per_window`` sampled evenly)."""
        picked = [frames[i] for i in sample_indices(len(frames), self.frames_per_window)]
        return self.caption_batch([picked])[0]

    def close(self) -> None:
        self.cache.clear()
        close = getattr(self.detector, "close", None)
        if close is not None:
            close()
