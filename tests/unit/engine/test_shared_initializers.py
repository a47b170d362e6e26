"""One copy of the weights that several graphs hold byte for byte (streamcap.engine.onnx
``shared_initializers``): found by content whatever their names, read from the files themselves."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from streamcap.engine.onnx import _initializers, shared_initializers  # noqa: E402


def _graph(path, weights: dict[str, np.ndarray], small: np.ndarray) -> None:
    """y = x @ W1 @ W2 ... + small: one MatMul per weight (names as given)."""
    nodes, prev = [], "x"
    for i, name in enumerate(weights):
        nodes.append(helper.make_node("MatMul", [prev, name], [f"h{i}"]))
        prev = f"h{i}"
    nodes.append(helper.make_node("Add", [prev, "small"], ["y"]))
    inits = [numpy_helper.from_array(w, name) for name, w in weights.items()]
    inits.append(numpy_helper.from_array(small, "small"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 128])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 128])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_identical_weights_are_shared_by_content_not_name(tmp_path):
    rng = np.random.default_rng(0)
    a, b, c = (rng.standard_normal((128, 128)).astype(np.float32) for _ in range(3))
    small = rng.standard_normal(128).astype(np.float32)  # 512 bytes: under the size worth sharing
    _graph(tmp_path / "one.onnx", {"w_a": a, "w_b": b}, small)
    _graph(tmp_path / "two.onnx", {"onnx::MatMul_7": a, "only_here": c}, small)
    per_graph, keep = shared_initializers([tmp_path / "one.onnx", tmp_path / "two.onnx"])
    assert list(per_graph[0]) == ["w_a"] and list(per_graph[1]) == ["onnx::MatMul_7"]
    assert per_graph[0]["w_a"] is per_graph[1]["onnx::MatMul_7"]  # one value for both graphs
    np.testing.assert_array_equal(per_graph[0]["w_a"].numpy(), a)
    assert keep

    # the sessions run on the shared value and give what the graphs alone give
    x = rng.standard_normal((3, 128)).astype(np.float32)
    for path, values in zip(("one.onnx", "two.onnx"), per_graph):
        opts = ort.SessionOptions()
        opts.add_session_config_entry("session.disable_prepacking", "1")
        for name, value in values.items():
            opts.add_initializer(name, value)
        shared = ort.InferenceSession(str(tmp_path / path), opts, providers=["CPUExecutionProvider"])
        plain = ort.InferenceSession(str(tmp_path / path), providers=["CPUExecutionProvider"])
        np.testing.assert_allclose(shared.run(None, {"x": x})[0], plain.run(None, {"x": x})[0], rtol=1e-6, atol=1e-5)


def test_initializer_table_matches_onnx(tmp_path):
    rng = np.random.default_rng(1)
    weights = {"w": rng.standard_normal((128, 128)).astype(np.float32)}
    _graph(tmp_path / "g.onnx", weights, np.zeros(128, np.float32))
    raw = (tmp_path / "g.onnx").read_bytes()
    table = _initializers(raw)
    model = onnx.load(str(tmp_path / "g.onnx"))
    assert set(table) == {t.name for t in model.graph.initializer}
    for t in model.graph.initializer:
        dtype, dims, start, end = table[t.name]
        assert dtype == t.data_type and dims == tuple(t.dims)
        assert raw[start:end] == numpy_helper.to_array(t).tobytes()


def test_nothing_shared_between_different_graphs(tmp_path):
    rng = np.random.default_rng(2)
    _graph(tmp_path / "one.onnx", {"w": rng.standard_normal((128, 128)).astype(np.float32)}, np.zeros(128, np.float32))
    _graph(tmp_path / "two.onnx", {"w": rng.standard_normal((128, 128)).astype(np.float32)}, np.zeros(128, np.float32))
    per_graph, _ = shared_initializers([tmp_path / "one.onnx", tmp_path / "two.onnx"])
    assert per_graph == [{}, {}]


@pytest.mark.parametrize("setting,shared", [(None, True), (False, False), (True, True)])
def test_engine_share_decoder_weights_comes_from_the_config(setting, shared):
    """[engine] share_decoder_weights reaches the ONNX engine: unset shares an fp32 engine's decoder
    weights (the demo model is fp32), false gives each session its own pre-packed copy."""
    from streamcap.engine.base import load_engine_from_config
    from streamcap.runtime.config import load_config

    overrides = {"engine": {"threads": 1, **({} if setting is None else {"share_decoder_weights": setting})}}
    engine = load_engine_from_config(load_config(None, environ={}, overrides=overrides).engine)
    try:
        assert bool(engine._shared_keepalive) is shared
        (result,) = engine.caption_batch([[np.zeros((224, 224, 3), np.uint8)] * engine.frames_per_window])
        assert result.text  # the sessions run either way
    finally:
        engine.close()
