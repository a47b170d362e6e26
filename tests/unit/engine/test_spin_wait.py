"""[engine] spin_wait_us: how long ONNX Runtime worker threads spin before they sleep, set for every
session of the process (caption, describer, speech) through ``session_setup``."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

pytest.importorskip("onnxruntime")

from streamcap.engine import onnx as engine_onnx  # noqa: E402
from streamcap.engine.base import apply_runtime_settings  # noqa: E402
from streamcap.runtime.config import ConfigError, load_config  # noqa: E402


@pytest.fixture(autouse=True)
def _restore():
    yield
    engine_onnx.set_spin_wait_us(engine_onnx.SPIN_WAIT_US)


def _entries() -> tuple[str, str, str]:
    opts, _, _ = engine_onnx.session_setup(SimpleNamespace(folder=".", precision="fp32"), provider="cpu",
                                           providers=None, intra_op_threads=1, provider_options=None,
                                           trt_cache_dir=None)
    return (opts.get_session_config_entry("session.intra_op.allow_spinning"),
            opts.get_session_config_entry("session.intra_op.spin_duration_us")
            if opts.get_session_config_entry("session.intra_op.allow_spinning") == "1" else "",
            opts.get_session_config_entry("session.inter_op.allow_spinning"))


def test_default_spin_is_bounded():
    cfg = load_config(None, environ={}, overrides={})
    assert cfg.engine.spin_wait_us == engine_onnx.SPIN_WAIT_US == 200
    apply_runtime_settings(cfg.engine)
    assert _entries() == ("1", "200", "0")


@pytest.mark.parametrize("us,expected", [(0, ("0", "", "0")), (50, ("1", "50", "0")), (5000, ("1", "5000", "0"))])
def test_spin_wait_comes_from_the_config(us, expected):
    cfg = load_config(None, environ={}, overrides={"engine": {"spin_wait_us": us}})
    apply_runtime_settings(cfg.engine)
    assert _entries() == expected


def test_environment_sets_it_and_bad_values_are_refused():
    cfg = load_config(None, environ={"STREAMCAP_ENGINE__SPIN_WAIT_US": "0"}, overrides={})
    assert cfg.engine.spin_wait_us == 0
    with pytest.raises(ConfigError):
        load_config(None, environ={}, overrides={"engine": {"spin_wait_us": -1}})
    with pytest.raises(ValueError):
        engine_onnx.set_spin_wait_us(-5)
