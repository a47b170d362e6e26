"""Object detector on ONNX Runtime for ``kind: "describer"`` engine folders (NanoDet, COCO-80).

The folder (``engines/scene-describer``, built by ``tools/convert_nanodet.py``) holds an int8 and
optionally an fp32 ONNX graph plus ``engine.json`` whose ``detector`` section says how to
preprocess (size, colour order, mean/std, resize) and how to decode (strides, ``reg_max``, output
names, thresholds). Preprocessing, decoding and NMS are the pure functions of
:mod:`streamcap.engine.nanodet`; this module owns the session. Blocking; call from one executor
thread; not thread-safe (one caller at a time).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from streamcap.core.errors import EngineLoadError
from streamcap.engine import nanodet
from streamcap.engine.manifest import MANIFEST_NAME, _check_files, _read_raw

log = logging.getLogger(__name__)

DESCRIBER_KIND = "describer"
PRECISIONS = ("int8", "fp32")


@dataclass(frozen=True, slots=True)
class Detection:
    label: str                                # COCO class name, e.g. "person"
    score: float
    box: tuple[float, float, float, float]    # x0, y0, x1, y1 normalised to the frame (0..1)


class Detector:
    """NanoDet on ONNX Runtime: ``detect_batch(frames)`` → detections per frame, best first."""

    def __init__(self, folder: str | os.PathLike, *, provider: str = "cpu", intra_op_threads: int | None = None,
                 precision: str = "int8", verify_hashes: bool = True, score_threshold: float | None = None) -> None:
        if importlib.util.find_spec("onnxruntime") is None:
            raise EngineLoadError("onnxruntime is not installed (pip install 'streamcap[cpu]')")
        import onnxruntime as ort

        from streamcap.engine.onnx import session_setup

        self.folder = Path(folder)
        mpath = self.folder / MANIFEST_NAME
        raw = _read_raw(self.folder)
        if raw.get("kind") != DESCRIBER_KIND:
            raise EngineLoadError(f"{mpath}: a {raw.get('kind', 'caption')} engine ({raw.get('architecture')}), "
                                  "not a describer (detector) engine")
        if raw.get("architecture") != "nanodet":
            raise EngineLoadError(f"{mpath}: describer architecture {raw.get('architecture')!r} is not supported "
                                  "(supported: nanodet)")
        if precision not in PRECISIONS:
            raise EngineLoadError(f"precision must be one of {PRECISIONS}, not {precision!r}")
        try:
            det = dict(raw["detector"])
            model_name = det["model"] if precision == "int8" else det.get("model_fp32")
            if not model_name:
                raise EngineLoadError(f"{mpath}: this folder has no {precision} model")
            self.input_name = str(det["input"])
            self.input_size = (int(det["input_size"][0]), int(det["input_size"][1]))
            self.colour, self.resize = str(det["colour"]), str(det["resize"])
            self.mean = tuple(float(v) for v in det["mean"])
            self.std = tuple(float(v) for v in det["std"])
            self.classes: tuple[str, ...] = tuple(str(c) for c in det["classes"])
            self.reg_max = int(det["reg_max"])
            self.levels = [(int(o["stride"]), str(o["scores"]), str(o["boxes"])) for o in det["outputs"]]
            self.score_threshold = float(det["score_threshold"] if score_threshold is None else score_threshold)
            self.nms_iou = float(det["nms_iou"])
            self.nms_pre = int(det.get("nms_pre", 1000))
            self.max_detections = int(det.get("max_detections", 100))
            files = dict(raw.get("files", {}))
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise EngineLoadError(f"{mpath}: missing or invalid field in 'detector': {e}") from e
        if self.colour not in ("BGR", "RGB") or self.resize not in nanodet.RESIZE_MODES:
            raise EngineLoadError(f"{mpath}: colour {self.colour!r} / resize {self.resize!r} not supported")
        if verify_hashes and model_name not in files:
            raise EngineLoadError(f"{mpath}: {model_name} has no sha256 under 'files'")
        _check_files(self.folder, [model_name], {model_name: files[model_name]} if model_name in files else {},
                     verify_hashes)
        self.name = str(raw.get("name", self.folder.name))
        self.manifest = raw
        self.precision = precision
        opts, _, chosen = session_setup(SimpleNamespace(folder=self.folder, precision=precision), provider=provider,
                                        providers=None, intra_op_threads=intra_op_threads, provider_options=None,
                                        trt_cache_dir=None)
        # (session_setup bounds spin-waiting: a detector call is ~15 ms and calls come a few
        # times a second per stream, so threads spinning long after each would burn a core)
        try:
            self._session = ort.InferenceSession(str(self.folder / model_name), opts,
                                                 providers=[p for p, _ in chosen],
                                                 provider_options=[o for _, o in chosen])
        except Exception as e:  # boundary: ORT raises its own types for a corrupt or unreadable graph
            raise EngineLoadError(f"{self.folder / model_name}: ONNX Runtime cannot load it: {e}") from e
        shape = self._session.get_inputs()[0].shape
        self._batched = not isinstance(shape[0], int) or shape[0] != 1
        names = {o.name for o in self._session.get_outputs()}
        missing = [n for _, s, b in self.levels for n in (s, b) if n not in names]
        if missing:
            raise EngineLoadError(f"{mpath}: outputs {missing} are not in {model_name}")
        self._output_names = [n for _, s, b in self.levels for n in (s, b)]
        log.info("detector %s loaded (%s, %s)", self.name, model_name, provider)

    def _preprocess(self, frame: np.ndarray) -> np.ndarray:
        return nanodet.preprocess(frame, input_size=self.input_size, mean=self.mean, std=self.std,
                                  colour=self.colour, resize=self.resize)

    def _decode(self, outputs: list[np.ndarray], i: int) -> list[Detection]:
        levels = [nanodet.Level(stride, outputs[2 * k][i], outputs[2 * k + 1][i])
                  for k, (stride, _, _) in enumerate(self.levels)]
        d = nanodet.decode(levels, input_size=self.input_size, reg_max=self.reg_max,
                           score_threshold=self.score_threshold, nms_iou=self.nms_iou, nms_pre=self.nms_pre,
                           max_detections=self.max_detections)
        return [Detection(self.classes[int(c)], float(s), (float(b[0]), float(b[1]), float(b[2]), float(b[3])))
                for b, s, c in zip(d.boxes, d.scores, d.labels)]

    def detect_batch(self, frames: Sequence[np.ndarray]) -> list[list[Detection]]:
        """Detections for each RGB uint8 ``H×W×3`` frame (any size), best score first."""
        if self._session is None:
            raise RuntimeError(f"detector {self.name} is closed")
        if not frames:
            return []
        inputs = [self._preprocess(np.asarray(f)) for f in frames]
        if self._batched:
            outputs = self._session.run(self._output_names, {self.input_name: np.stack(inputs)})
            return [self._decode(outputs, i) for i in range(len(inputs))]
        results = []
        for x in inputs:
            outputs = self._session.run(self._output_names, {self.input_name: x[None]})
            results.append(self._decode(outputs, 0))
        return results

    def close(self) -> None:
        self._session = None


def load_detector(folder: str | os.PathLike, **kw) -> Detector:
    """A :class:`Detector` for a describer engine folder (keyword arguments as ``Detector``)."""
    return Detector(folder, **kw)
