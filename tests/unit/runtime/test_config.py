import json

import pytest

from streamcap.runtime.config import Config, env_overrides, load_config, markdown_reference
from streamcap.core.errors import ConfigError


def test_defaults_are_valid_and_serve_the_bundled_engine():
    cfg = load_config(None, environ={})
    assert cfg.server.port == 8765 and cfg.server.host == "127.0.0.1"
    assert cfg.engine.path.endswith("engines/shapes-git")
    assert cfg.sources == []


def test_unknown_key_in_file_is_rejected_with_its_path(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[server]\nprot = 9000\n")
    with pytest.raises(ConfigError) as e:
        load_config(p, environ={})
    assert "server.prot" in str(e.value) and "unknown key" in str(e.value)


def test_out_of_range_value_is_rejected():
    with pytest.raises(ConfigError) as e:
        load_config(None, environ={}, overrides={"windows": {"stride_s": -1}})
    assert "windows.stride_s" in str(e.value)


def test_file_then_env_then_flags_later_wins(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[server]\nport = 1000\nhost = "0.0.0.0"\n[windows]\nstride_s = 1.0\n')
    env = {"STREAMCAP_SERVER__PORT": "2000", "STREAMCAP_WINDOWS__STRIDE_S": "0.75", "OTHER": "x"}
    cfg = load_config(p, environ=env, overrides={"server": {"port": 3000}})
    assert cfg.server.port == 3000
    assert cfg.server.host == "0.0.0.0"
    assert cfg.windows.stride_s == 0.75


def test_env_override_parses_scalars_and_keeps_strings():
    assert env_overrides({"STREAMCAP_ENGINE__PATH": "/m/x", "STREAMCAP_ENGINE__THREADS": "2"}) == {
        "engine": {"path": "/m/x", "threads": 2}}


def test_sources_need_valid_unique_ids():
    with pytest.raises(ConfigError, match="duplicate"):
        load_config(None, environ={}, overrides={"sources": [{"id": "a", "url": "x.mp4"}, {"id": "a", "url": "y"}]})
    with pytest.raises(ConfigError, match="stream id"):
        load_config(None, environ={}, overrides={"sources": [{"id": "bad id!", "url": "x.mp4"}]})


def test_invalid_toml_names_the_file(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[server\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(p, environ={})


def test_reference_doc_lists_every_field():
    doc = markdown_reference()
    for section in ("server", "engine", "windows", "stabilizer", "pipeline"):
        for name in getattr(Config.model_fields[section].annotation, "model_fields"):
            assert f"`{name}`" in doc


def test_the_shipped_example_config_is_valid():
    from pathlib import Path

    cfg = load_config(Path(__file__).resolve().parents[3] / "deploy" / "streamcap.toml", environ={})
    assert [s.id for s in cfg.sources] == ["door", "demo", "studio"]
    assert cfg.stream_config("door").windows.stride_s == 1.0  # its per-source override
    assert cfg.stream_config("demo").windows == cfg.windows


def test_tokens_can_come_from_the_environment():
    cfg = load_config(None, environ={"STREAMCAP_AUTH__TOKENS": '[{scope="publish", token="abcdefgh1"}]'})
    assert [(t.scope, t.token) for t in cfg.auth.tokens] == [("publish", "abcdefgh1")]


def test_tls_needs_both_files_and_ingest_limits_are_bounded():
    with pytest.raises(ConfigError, match="tls_cert and tls_key go together"):
        load_config(None, environ={}, overrides={"server": {"tls_key": "k.pem"}})
    with pytest.raises(ConfigError, match="ingest.max_queued_frames"):
        load_config(None, environ={}, overrides={"ingest": {"max_queued_frames": 0}})


# --- per-source overrides ---------------------------------------------------------------------


def _with_sources(*sources: dict, **sections: dict) -> Config:
    return load_config(None, environ={}, overrides={**sections, "sources": list(sources)})


def test_a_source_stride_overrides_the_global_and_unset_fields_inherit():
    cfg = _with_sources({"id": "cam1", "url": "x.mp4", "windows": {"stride_s": 1.0},
                         "decoding": {"max_new_tokens": 12}},
                        {"id": "cam2", "url": "y.mp4"},
                        windows={"stride_s": 0.25, "max_backlog": 5}, engine={"num_beams": 3})
    cam1 = cfg.stream_config("cam1")
    assert cam1.windows.stride_s == 1.0
    assert cam1.windows.max_backlog == 5 and cam1.windows.max_ingest_fps == cfg.windows.max_ingest_fps
    assert cam1.decoding.max_new_tokens == 12 and cam1.decoding.num_beams == 3
    assert cam1.stabilizer == cfg.stabilizer
    assert cfg.stream_config("cam2").windows == cfg.windows
    assert cfg.stream_config("not-configured") == cfg.stream_config()
    assert cfg.stream_config().decoding == cfg.engine.decoding()


def test_overrides_given_directly_win_over_the_configured_entry():
    from streamcap.runtime.config import SourceConfig

    cfg = _with_sources({"id": "cam1", "url": "x.mp4", "windows": {"stride_s": 1.0}})
    pushed = SourceConfig(id="cam1", url="push:", windows={"stride_s": 2.0})
    assert cfg.stream_config("cam1", overrides=pushed).windows.stride_s == 2.0


def test_an_override_keeps_the_global_bounds_and_rejects_unknown_keys():
    with pytest.raises(ConfigError, match="sources.0.windows.stride_s"):
        _with_sources({"id": "cam1", "url": "x.mp4", "windows": {"stride_s": -1}})
    with pytest.raises(ConfigError, match="unknown key"):
        _with_sources({"id": "cam1", "url": "x.mp4", "stabilizer": {"agre": 2}})


def test_an_invalid_merged_result_raises_config_error_naming_the_stream():
    # fresh_agree=3 is fine on its own, but not over the global agree=2
    with pytest.raises(ConfigError, match=r"stream 'cam1'.*\n.*stabilizer.*fresh_agree must not exceed agree"):
        _with_sources({"id": "cam1", "url": "x.mp4", "stabilizer": {"fresh_agree": 3}},
                      stabilizer={"agree": 2, "fresh_agree": 1})
    from streamcap.runtime.config import SourceConfig

    cfg = load_config(None, environ={}, overrides={"stabilizer": {"agree": 2, "fresh_agree": 1}})
    bad = SourceConfig(id="pushed", url="push:", stabilizer={"fresh_agree": 3})
    with pytest.raises(ConfigError, match="stream 'pushed'"):
        cfg.stream_config(overrides=bad)


def test_override_models_mirror_the_global_sections():
    from streamcap.runtime.config import (DecodingConfig, DecodingOverrides, StabilizerConfig,
                                          StabilizerOverrides, WindowConfig, WindowOverrides)

    for section, overrides in [(WindowConfig, WindowOverrides), (StabilizerConfig, StabilizerOverrides),
                               (DecodingConfig, DecodingOverrides)]:
        assert list(overrides.model_fields) == list(section.model_fields)
        for name, field in overrides.model_fields.items():
            assert field.default is None and field.description == section.model_fields[name].description
            assert field.metadata == section.model_fields[name].metadata  # the same bounds
        assert overrides.model_config["extra"] == "forbid"


def test_decoding_options_match_the_engines_reading_of_the_engine_section():
    from streamcap.engine.base import decode_options_from_config

    for engine in ({}, {"num_beams": 4, "max_new_tokens": 30, "repetition_penalty": 1.3, "prompt": "a photo of"}):
        cfg = load_config(None, environ={}, overrides={"engine": engine})
        assert cfg.engine.decoding().options() == decode_options_from_config(cfg.engine)
        assert cfg.stream_config().decoding.options() == decode_options_from_config(cfg.engine)


# --- knobs that used to be hard-coded ---------------------------------------------------------


def test_source_options_are_the_configured_values():
    from streamcap.runtime.config import source_options
    from streamcap.sources.backoff import Backoff

    cfg = load_config(None, environ={}, overrides={
        "network": {"open_timeout_s": 3.0, "read_timeout_s": 4.0, "handoff_size": 9, "backoff_initial_s": 0.2,
                    "backoff_factor": 3.0, "backoff_cap_s": 5.0, "backoff_jitter": 0.1},
        "pipeline": {"stall_timeout_s": 7.0}})
    assert source_options(cfg) == {
        "open_timeout_s": 3.0, "read_timeout_s": 4.0, "handoff_size": 9,
        "backoff": Backoff(initial_s=0.2, factor=3.0, cap_s=5.0, jitter=0.1), "stall_timeout_s": 7.0,
        "end_on_eof": False}


def test_network_backoff_is_checked_as_a_whole():
    with pytest.raises(ConfigError, match="initial_s must not exceed cap_s"):
        load_config(None, environ={}, overrides={"network": {"backoff_initial_s": 2.0, "backoff_cap_s": 1.0}})


def test_config_defaults_are_the_defaults_the_sources_fall_back_to():
    import inspect

    from streamcap.runtime.config import source_options
    from streamcap.sources.backoff import Backoff
    from streamcap.sources.opencv import OpenCVSource
    from streamcap.sources.pyav import PyAVSource
    from streamcap.sources.synthetic import SyntheticShapesSource

    from streamcap.sources.reader import ReaderSource

    options = source_options(Config())
    assert options["backoff"] == Backoff()
    # PyAVSource adds its decoder's own options and hands the rest to ReaderSource
    assert issubclass(PyAVSource, ReaderSource) and "kwargs" in inspect.signature(PyAVSource).parameters
    for cls in (ReaderSource, OpenCVSource):
        params = inspect.signature(cls).parameters
        for name in ("open_timeout_s", "read_timeout_s", "handoff_size", "stall_timeout_s", "end_on_eof"):
            assert params[name].default == options[name], (cls.__name__, name)
    assert inspect.signature(SyntheticShapesSource).parameters["handoff_size"].default == options["handoff_size"]


def test_former_module_constants_have_config_fields_with_todays_values():
    cfg = Config()
    assert cfg.pipeline.health_tick_s == 0.25
    assert cfg.server.heartbeat_s == 20.0 and cfg.server.close_timeout_s == 5.0


# --- stream ids --------------------------------------------------------------------------------


@pytest.mark.parametrize("stream_id", ["x" * 65, "bad id", "-dash-first", "", "cam1\n", "caméra"])
def test_config_and_wire_refuse_the_same_stream_ids(stream_id):
    from streamcap.core.errors import ProtocolError
    from streamcap.outputs import wire

    with pytest.raises(ConfigError, match="stream id"):
        load_config(None, environ={}, overrides={"sources": [{"id": stream_id, "url": "x.mp4"}]})
    with pytest.raises(ProtocolError):
        wire.decode_client_message(json.dumps({"type": "subscribe", "streams": [stream_id]}))


def test_config_and_wire_accept_the_same_stream_ids():
    from streamcap.core.ids import STREAM_ID_MAX_CHARS, is_valid_stream_id
    from streamcap.outputs import wire
    from streamcap.runtime import config

    longest = "c" + "a" * (STREAM_ID_MAX_CHARS - 1)
    cfg = load_config(None, environ={}, overrides={"sources": [{"id": longest, "url": "x.mp4"}]})
    assert cfg.sources[0].id == longest
    assert wire.decode_client_message(json.dumps({"type": "subscribe", "streams": [longest, "cam_1.b-2"]})) \
        == wire.SubscribeMsg((longest, "cam_1.b-2"))
    assert config.is_valid_stream_id is is_valid_stream_id  # still importable from config


def test_the_reference_doc_is_generated_from_the_models():
    from pathlib import Path

    doc = Path(__file__).resolve().parents[3] / "docs" / "configuration.md"
    assert doc.read_text() == markdown_reference() + "\n", \
        "regenerate: python -m streamcap.runtime.config --markdown > docs/configuration.md"
