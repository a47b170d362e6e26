"""NanoDet (GFL head) pre- and post-processing in numpy: pure functions, no I/O, no runtime.

NanoDet predicts, for every cell of three feature maps (strides 8, 16, 32), a sigmoid score per
class and, per box side (left, top, right, bottom), a discrete distribution over ``reg_max + 1``
distance bins (General Focal Loss). A side's distance is the softmax-weighted mean bin, times the
stride, measured from the cell centre ``((col + 0.5) * stride, (row + 0.5) * stride)`` — as
upstream NanoDet (v0.x ``GFLHead.get_bboxes_single``) decodes it. Candidates are every
(cell, class) pair above the score threshold among the ``nms_pre`` best cells of each level, then
class-aware NMS (boxes of different classes never suppress each other), ``max_detections`` kept.

Used by :mod:`streamcap.engine.detector` (serving) and ``tools/convert_nanodet.py`` (calibration
inputs), so both preprocess alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

COCO_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)

RESIZE_MODES = ("stretch",)


def preprocess(frame_rgb: np.ndarray, *, input_size: tuple[int, int], mean: Sequence[float],
               std: Sequence[float], colour: str = "BGR", resize: str = "stretch") -> np.ndarray:
    """One RGB uint8 ``H×W×3`` frame → a float32 ``3×h×w`` tensor (``input_size`` is ``(w, h)``):
    resized to the input size without keeping the aspect ratio (``"stretch"``, so a box normalised
    to the input is normalised to the frame), channels reordered to ``colour``, then
    ``(x - mean) / std`` per channel (in ``colour`` order, on 0..255 values)."""
    import cv2

    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}, not {resize!r}")
    if frame_rgb.ndim != 3 or frame_rgb.shape[2] != 3:
        raise ValueError(f"expected an H×W×3 RGB frame, got shape {frame_rgb.shape}")
    w, h = int(input_size[0]), int(input_size[1])
    image = frame_rgb
    if image.shape[:2] != (h, w):
        image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
    if colour == "BGR":
        image = image[:, :, ::-1]
    elif colour != "RGB":
        raise ValueError(f"colour must be 'BGR' or 'RGB', not {colour!r}")
    x = (image.astype(np.float32) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def centre_points(rows: int, cols: int, stride: int) -> np.ndarray:
    """``(rows*cols, 2)`` cell centres ``(x, y)`` in input pixels, row-major like the head's output."""
    ys, xs = np.meshgrid((np.arange(rows, dtype=np.float32) + 0.5) * stride,
                         (np.arange(cols, dtype=np.float32) + 0.5) * stride, indexing="ij")
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


def distances(reg: np.ndarray, reg_max: int) -> np.ndarray:
    """``(N, 4*(reg_max+1))`` distribution logits → ``(N, 4)`` expected distances in bins
    (softmax over each side's bins, then the mean bin index)."""
    bins = reg_max + 1
    if reg.ndim != 2 or reg.shape[1] != 4 * bins:
        raise ValueError(f"expected (N, {4 * bins}) regression logits, got {reg.shape}")
    logits = reg.reshape(-1, 4, bins).astype(np.float32)
    logits = logits - logits.max(axis=2, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=2, keepdims=True)
    return p @ np.arange(bins, dtype=np.float32)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of ``(N, 4)`` and ``(M, 4)`` ``x0, y0, x1, y1`` boxes → ``(N, M)``."""
    a = np.asarray(a, np.float32).reshape(-1, 4)
    b = np.asarray(b, np.float32).reshape(-1, 4)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0).astype(np.float32)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS: indices of the kept boxes, best score first. A box is dropped when its IoU with
    a kept, better-scoring box is above ``iou_threshold``."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        if order.size == 1:
            break
        rest = order[1:]
        order = rest[iou_matrix(boxes[i], boxes[rest])[0] <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def class_aware_nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                    iou_threshold: float) -> np.ndarray:
    """NMS within each class only; indices of the kept boxes sorted by score (best first)."""
    kept = [np.flatnonzero(labels == c)[nms(boxes[labels == c], scores[labels == c], iou_threshold)]
            for c in np.unique(labels)]
    if not kept:
        return np.zeros(0, np.int64)
    keep = np.concatenate(kept)
    return keep[np.argsort(-scores[keep], kind="stable")]


@dataclass(frozen=True, slots=True)
class Level:
    """One head output: ``scores`` ``(N, classes)`` after sigmoid, ``reg`` ``(N, 4*(reg_max+1))``."""

    stride: int
    scores: np.ndarray
    reg: np.ndarray


@dataclass(frozen=True, slots=True)
class Decoded:
    """Detections of one frame, best first: ``boxes`` ``(K, 4)`` normalised ``x0, y0, x1, y1``."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


def decode(levels: Sequence[Level], *, input_size: tuple[int, int], reg_max: int,
           score_threshold: float, nms_iou: float, nms_pre: int = 1000,
           max_detections: int = 100) -> Decoded:
    """Decode one frame's head outputs (``input_size`` is ``(w, h)`` in pixels) into boxes
    normalised to the input (clipped to 0..1), scores and class indices."""
    w, h = int(input_size[0]), int(input_size[1])
    all_boxes, all_scores, all_labels = [], [], []
    for level in levels:
        rows, cols = -(-h // level.stride), -(-w // level.stride)
        scores = np.asarray(level.scores, np.float32)
        if scores.shape[0] != rows * cols:
            raise ValueError(f"stride {level.stride}: {scores.shape[0]} cells, expected {rows}×{cols}")
        centres = centre_points(rows, cols, level.stride)
        reg = np.asarray(level.reg)
        if nms_pre and scores.shape[0] > nms_pre:
            best = np.argsort(-scores.max(axis=1), kind="stable")[:nms_pre]
            scores, reg, centres = scores[best], reg[best], centres[best]
        cell, label = np.nonzero(scores > score_threshold)
        if cell.size == 0:
            continue
        d = distances(reg[cell], reg_max) * level.stride
        c = centres[cell]
        boxes = np.stack([c[:, 0] - d[:, 0], c[:, 1] - d[:, 1], c[:, 0] + d[:, 2], c[:, 1] + d[:, 3]], axis=1)
        boxes = np.clip(boxes / np.array([w, h, w, h], np.float32), 0.0, 1.0)
        all_boxes.append(boxes)
        all_scores.append(scores[cell, label])
        all_labels.append(label)
    if not all_boxes:
        return Decoded(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))
    boxes = np.concatenate(all_boxes).astype(np.float32)
    scores = np.concatenate(all_scores).astype(np.float32)
    labels = np.concatenate(all_labels).astype(np.int64)
    keep = class_aware_nms(boxes, scores, labels, nms_iou)[:max_detections]
    return Decoded(boxes[keep], scores[keep], labels[keep])
