"""The committed scene-describer detector (engines/scene-describer, NanoDet-g int8 and fp32) on real
photos that are neither the evaluation clip (vtest.avi) nor in the int8 calibration set: opencv-doc's
``messi5.jpg`` (one footballer, hand-labelled box) and ``basketball1/2.png`` (a man on the right).
Also: fp32 and int8 agree on the person boxes, frames of any size give the same normalised boxes,
and a corrupt or missing folder is refused with EngineLoadError."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from streamcap.core.errors import EngineLoadError
from streamcap.engine.detector import Detection, Detector, load_detector
from streamcap.engine.manifest import load_manifest
from streamcap.engine.nanodet import COCO_CLASSES, iou_matrix
from tools import media

FOLDER = Path(__file__).resolve().parents[2] / "engines" / "scene-describer"
PHOTOS = ("messi5.jpg", "basketball1.png", "basketball2.png")
MESSI_BOX = (0.12, 0.19, 0.84, 0.98)  # hand-labelled: outstretched hand to boot, hair to sole


@pytest.fixture(scope="module")
def photos(media_cache_dir: Path, require_system) -> dict[str, np.ndarray]:
    try:
        paths = media.fetch_opencv_data(media_cache_dir, PHOTOS)
    except media.MediaToolError as exc:
        require_system(f"opencv-doc photos unavailable: {exc}")
    return {n: cv2.cvtColor(cv2.imread(str(p), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB) for n, p in paths.items()}


@pytest.fixture(scope="module")
def int8() -> Detector:
    return load_detector(FOLDER, intra_op_threads=2)


@pytest.fixture(scope="module")
def fp32() -> Detector:
    return load_detector(FOLDER, precision="fp32", intra_op_threads=2)


def people(dets: list[Detection]) -> list[Detection]:
    return [d for d in dets if d.label == "person"]


def iou(a, b) -> float:
    return float(iou_matrix(np.array(a), np.array(b))[0, 0])


def test_manifest_describes_nanodet_with_coco_classes_and_standard_thresholds(int8):
    det = int8.manifest["detector"]
    assert int8.name == "scene-describer" and int8.manifest["kind"] == "describer"
    assert int8.classes == COCO_CLASSES and len(int8.classes) == 80
    assert det["score_threshold"] == 0.35 and det["nms_iou"] == 0.6
    assert "vtest.avi" not in json.dumps(int8.manifest["calibration"]["photos"])


def test_int8_finds_the_footballer_with_a_box_matching_the_hand_label(int8, photos):
    [dets] = int8.detect_batch([photos["messi5.jpg"]])
    best = people(dets)[0]
    assert best is dets[0] and best.score > 0.7
    assert iou(best.box, MESSI_BOX) > 0.8
    assert all(0.0 <= v <= 1.0 for d in dets for v in d.box)
    assert [d.score for d in dets] == sorted((d.score for d in dets), reverse=True)


def test_int8_finds_the_man_on_the_right_of_both_basketball_photos(int8, photos):
    for dets in int8.detect_batch([photos["basketball1.png"], photos["basketball2.png"]]):
        p = people(dets)[0]
        x0, y0, x1, y1 = p.box
        assert x0 > 0.5 and x1 > 0.95, p  # he stands at the right edge
        assert y1 - y0 > 0.8, p           # and fills the height


def test_fp32_and_int8_agree_on_the_person_boxes(int8, fp32, photos):
    frames = [photos[n] for n in PHOTOS]
    for name, a, b in zip(PHOTOS, int8.detect_batch(frames), fp32.detect_batch(frames)):
        pa, pb = people(a)[0], people(b)[0]
        assert iou(pa.box, pb.box) > 0.8, (name, pa, pb)
        assert abs(pa.score - pb.score) < 0.1, (name, pa, pb)


def test_frame_size_does_not_change_normalised_boxes(int8, photos):
    frame = photos["messi5.jpg"]
    big = cv2.resize(frame, (frame.shape[1] * 2, frame.shape[0] * 2), interpolation=cv2.INTER_LINEAR)
    small, large = int8.detect_batch([frame, big])
    assert iou(people(small)[0].box, people(large)[0].box) > 0.9


def test_one_list_per_frame_and_nothing_in_a_flat_grey_frame(int8, photos):
    grey = np.full((240, 320, 3), 128, np.uint8)
    out = int8.detect_batch([grey, photos["messi5.jpg"], grey])
    assert len(out) == 3 and out[0] == [] and out[2] == [] and people(out[1])
    assert int8.detect_batch([]) == []


def test_score_threshold_override_filters(photos):
    det = load_detector(FOLDER, score_threshold=0.7)
    [dets] = det.detect_batch([photos["messi5.jpg"]])
    assert dets and all(d.score > 0.7 for d in dets)
    det.close()
    with pytest.raises(RuntimeError, match="closed"):
        det.detect_batch([photos["messi5.jpg"]])


def copy_folder(tmp_path: Path) -> Path:
    out = tmp_path / "scene-describer"
    shutil.copytree(FOLDER, out)
    return out


def test_a_corrupt_model_file_is_refused_by_its_hash(tmp_path):
    folder = copy_folder(tmp_path)
    model = folder / "nanodet-g-416-int8.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(EngineLoadError, match="sha256"):
        load_detector(folder)


def test_a_truncated_model_is_refused_even_without_hash_checks(tmp_path):
    folder = copy_folder(tmp_path)
    model = folder / "nanodet-g-416-fp32.onnx"
    model.write_bytes(model.read_bytes()[:1000])
    with pytest.raises(EngineLoadError, match="ONNX Runtime cannot load"):
        load_detector(folder, precision="fp32", verify_hashes=False)


def test_missing_folder_and_missing_model_are_refused(tmp_path):
    with pytest.raises(EngineLoadError, match="does not exist"):
        load_detector(tmp_path / "nowhere")
    folder = copy_folder(tmp_path)
    (folder / "nanodet-g-416-int8.onnx").unlink()
    with pytest.raises(EngineLoadError, match="missing"):
        load_detector(folder)


def test_the_caption_loader_points_to_load_detector():
    with pytest.raises(EngineLoadError, match="streamcap.engine.detector.load_detector"):
        load_manifest(FOLDER)
