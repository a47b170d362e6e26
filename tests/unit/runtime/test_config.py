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


def test_tokens_can_come_from_the_environment():
    cfg = load_config(None, environ={"STREAMCAP_AUTH__TOKENS": '[{scope="publish", token="abcdefgh1"}]'})
    assert [(t.scope, t.token) for t in cfg.auth.tokens] == [("publish", "abcdefgh1")]


def test_tls_needs_both_files_and_ingest_limits_are_bounded():
    with pytest.raises(ConfigError, match="tls_cert and tls_key go together"):
        load_config(None, environ={}, overrides={"server": {"tls_key": "k.pem"}})
    with pytest.raises(ConfigError, match="ingest.max_queued_frames"):
        load_config(None, environ={}, overrides={"ingest": {"max_queued_frames": 0}})
