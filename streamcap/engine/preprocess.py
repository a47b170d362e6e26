"""Frame preprocessing shared by the runtime engines and the training/export tools.

Pure numpy + OpenCV, no I/O. The manifest of an engine folder says which resize mode,
size and mean/std apply; training uses the very same function so the model sees at serve
time exactly what it saw in training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Preprocessing:
    image_size: int
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    resize: str = "stretch"  # "stretch" (whole frame, aspect not kept) or "center_crop"

    def to_dict(self) -> dict:
        return {"image_size": self.image_size, "mean": list(self.mean), "std": list(self.std),
                "resize": self.resize}

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        return cls(int(d["image_size"]), tuple(d["mean"]), tuple(d["std"]), str(d.get("resize", "stretch")))


def resize_frame(frame: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """Resize one RGB uint8 frame (H×W×3) to the model's square input size."""
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"expected an H×W×3 uint8 RGB frame, got {frame.dtype} {frame.shape}")
    s = pre.image_size
    if pre.resize == "center_crop":
        h, w = frame.shape[:2]
        side = min(h, w)
        y, x = (h - side) // 2, (w - side) // 2
        frame = frame[y : y + side, x : x + side]
    elif pre.resize != "stretch":
        raise ValueError(f"unknown resize mode {pre.resize!r}")
    if frame.shape[0] == s and frame.shape[1] == s:
        return frame
    interp = cv2.INTER_AREA if frame.shape[0] >= s else cv2.INTER_LINEAR
    return cv2.resize(frame, (s, s), interpolation=interp)


def normalise(frames_u8: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """(..., S, S, 3) uint8 → (..., 3, S, S) float32, scaled to [0, 1] then (x - mean) / std."""
    x = frames_u8.astype(np.float32) * (1.0 / 255.0)
    x = (x - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
    return np.ascontiguousarray(np.moveaxis(x, -1, -3))


def preprocess_frames(frames: Sequence[np.ndarray], pre: Preprocessing) -> np.ndarray:
    """A list of RGB uint8 frames of any size → float32 array (N, 3, S, S)."""
    return normalise(np.stack([resize_frame(f, pre) for f in frames]), pre)
