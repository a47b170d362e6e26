"""The soak tool's pure measures (tools/soak.py): RSS growth from warm-up to the end, seq gaps,
the config it writes (accepted by streamcap's own loader)."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamcap.runtime.config import load_config
from tools import fuzz, soak


def test_growth_compares_the_median_after_warmup_with_the_median_at_the_end():
    # a start-up spike before the warm-up ends, a spike in the middle; the end is 5 % higher
    samples = [(float(t), 100.0 if t < 60 else 200.0 if t in (60, 150) else 115.5 if t >= 280 else 110.0)
               for t in range(0, 306, 2)]
    base, end, pct = soak.growth_pct(samples, warmup_s=62, window_s=20)
    assert base == 110.0 and end == 115.5 and pct == pytest.approx(5.0)
    assert soak.growth_pct([], 60, 20) == (0.0, 0.0, 0.0)


def test_seq_gaps_count_missing_captions_not_repeats():
    assert soak.seq_gaps([1, 2, 3, 4]) == 0
    assert soak.seq_gaps([1, 2, 5, 6, 9]) == 4
    assert soak.seq_gaps([5, 5, 4, 6]) == 0
    assert soak.seq_gaps([]) == 0


def test_percentile_picks_from_the_sorted_values():
    assert soak.percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert soak.percentile([1.0, 2.0, 3.0, 100.0], 0.95) == 100.0
    assert soak.percentile([], 0.5) == 0.0


def test_one_stream_is_the_rtsp_camera_when_there_is_one():
    assert list(soak.stream_sources(4, None)) == ["syn0", "syn1", "syn2", "syn3"]
    streams = soak.stream_sources(4, "rtsp://127.0.0.1:8554/cam")
    assert sorted(streams) == ["rtsp0", "syn0", "syn1", "syn2"] and streams["rtsp0"].startswith("rtsp://")


def test_the_configs_written_for_the_server_are_valid(tmp_path: Path):
    secrets = fuzz.Secrets.from_seed(1)
    path = tmp_path / "soak.toml"
    path.write_text(soak.soak_config(secrets, soak.stream_sources(4, "rtsp://127.0.0.1:8554/cam"), 0, 256))
    cfg = load_config(str(path), environ={})
    assert [s.id for s in cfg.sources] == ["syn0", "syn1", "syn2", "rtsp0"]
    assert {t.token for t in cfg.auth.tokens} == set(secrets.tokens.values())
    path.write_text(fuzz.server_config(secrets, 1))
    cfg = load_config(str(path), environ={})
    assert [s.id for s in cfg.sources] == [fuzz.DEMO, fuzz.PUSH] and cfg.engine.threads == 1
