"""The cluster commands refuse clearly before touching Redis or Ray, and never echo a password."""

from __future__ import annotations

import pytest

from streamcap.cli import main


def test_gateway_without_a_bus_says_how_to_give_one(monkeypatch, capsys):
    monkeypatch.delenv("STREAMCAP_BUS", raising=False)
    assert main(["gateway"]) == 2
    assert "--bus redis://" in capsys.readouterr().err


def test_controller_needs_streams_in_its_config(tmp_path, capsys):
    cfg = tmp_path / "empty.toml"
    cfg.write_text("")
    assert main(["controller", "--bus", "redis://:pw-not-shown@127.0.0.1:1/0", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "[[sources]]" in err and "pw-not-shown" not in err


def test_worker_needs_its_stream_in_the_config(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[[sources]]\nid = "cam"\nurl = "synthetic:shapes"\n')
    with pytest.raises(SystemExit):  # --stream is required
        main(["worker", "--bus", "redis://127.0.0.1:1/0", "--config", str(cfg)])


def test_worker_for_a_stream_not_in_the_config_is_refused(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[[sources]]\nid = "cam"\nurl = "synthetic:shapes"\n')
    assert main(["worker", "--bus", "redis://127.0.0.1:1/0", "--config", str(cfg), "--stream", "door"]) == 2
    assert "no [[sources]] entry with id 'door'" in capsys.readouterr().err
