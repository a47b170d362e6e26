"""Caption alert rules through the real pipeline: a scripted storyline (rendered to H.264) is
captioned by the demo model and the rules see the stabiliser's finals. An event that lasts long
enough fires once and ends when it ends; one shorter than the rule's minimum never fires; a repeat
within the cooldown does not re-fire, and one after a short cooldown does."""

from __future__ import annotations

import numpy as np
import pytest

from streamcap.runtime.config import load_config
from streamcap.engine.base import load_engine_from_config
from streamcap.runtime.metrics import Metrics
from streamcap.runtime.pipeline import Pipeline
from streamcap.demo.synthetic import ScriptedStoryline, still_scene
from streamcap.core.types import AlertPhase, CaptionState
from tools import media

pytestmark = pytest.mark.integration

# media seconds: the red circle is the event; B is shorter than the rules' 4 s minimum
SCRIPT = [(8.0, [("blue", "square")]), (10.0, [("red", "circle")]),  # event A: 8-18
          (8.0, [("green", "triangle")]), (2.5, [("red", "circle")]),  # event B: 26-28.5 (too short)
          (9.5, [("yellow", "square")]), (10.0, [("red", "circle")]),  # event C: 38-48
          (8.0, [("blue", "triangle")])]


@pytest.fixture(scope="module")
def scripted_file(tmp_path_factory, require_system):
    rng = np.random.default_rng(4)
    story = ScriptedStoryline([(d, still_scene(rng, objs)) for d, objs in SCRIPT], seed=4)
    path = tmp_path_factory.mktemp("alerts") / "script.mp4"
    try:
        media.render_storyline_file(path, seed=4, duration_s=story.duration_s, storyline=story)
    except media.MediaToolError as exc:
        require_system(f"cannot render the scripted storyline: {exc}")
    return path, story


async def test_rules_fire_once_ignore_short_events_end_and_respect_the_cooldown(scripted_file):
    path, story = scripted_file
    cfg = load_config(None, environ={}, overrides={
        "engine": {"max_batch": 1},
        "alerts": {"health": {"enabled": False}, "rules": [
            {"name": "circle", "keywords": ["circle"], "min_duration_s": 4, "cooldown_s": 60, "severity": "critical"},
            {"name": "circle-10s", "phrases": ["red circle"], "min_duration_s": 4, "cooldown_s": 10},
            {"name": "never", "keywords": ["yes"]},  # "eyes"-style substrings must not match anything
        ]}})
    engine = load_engine_from_config(cfg.engine)
    alerts, finals = [], []
    pipeline = Pipeline(cfg, engine, metrics=Metrics(), on_caption=finals.append, on_status=lambda s: None,
                        on_alert=alerts.append)
    pipeline.add_stream("file", str(path))
    await pipeline.run(stop_when_idle=True)

    shown = [(round(c.start_s, 1), c.text) for c in finals if c.state is CaptionState.FINAL]
    # the model saw the script: the red circle of A and C became finals, B's 2.5 s did not last
    assert any(t == "a red circle stays still" and 8 <= s < 12 for s, t in shown), shown
    assert any(t == "a red circle stays still" and 38 <= s < 42 for s, t in shown), shown
    by_rule: dict[str, list] = {}
    for a in alerts:
        by_rule.setdefault(a.rule, []).append(a)
    assert "never" not in by_rule

    # 60 s cooldown: event A fires once and ends; B is too short; C falls inside the cooldown
    circle = by_rule["circle"]
    assert [a.phase for a in circle if a.phase is not AlertPhase.UPDATE] == [AlertPhase.START, AlertPhase.END], shown
    start, end = circle[0], circle[-1]
    assert len({a.id for a in circle}) == 1 and start.severity.value == "critical"
    assert 8.0 <= start.start_s <= 10.5 and 17.5 <= end.end_s <= 21.0, (start, end, shown)
    assert start.caption_seq is not None and "circle" in next(c.text for c in finals if c.seq == start.caption_seq)

    # 10 s cooldown: A and C fire (C starts 20 s after A ended), B never does
    short = [a for a in by_rule["circle-10s"] if a.phase is AlertPhase.START]
    assert len(short) == 2, (short, shown)
    assert 8.0 <= short[0].start_s <= 10.5 and 38.0 <= short[1].start_s <= 40.5, (short, shown)
    ends = [a for a in by_rule["circle-10s"] if a.phase is AlertPhase.END]
    assert len(ends) == 2 and ends[-1].end_s >= 47.5  # C ends when its scene does (or the file)


async def test_a_rule_by_meaning_fires_on_the_scripted_events_through_the_service_config(scripted_file,
                                                                                     require_system):
    """The same storyline with a description rule: the offline embedder (loaded the way the service
    loads it) matches "a red circle stays still" to "a red circle" and nothing else in the script."""
    from streamcap.alerts.embedding import EmbedderUnavailable, TextEmbedder

    path, _ = scripted_file
    try:
        embedder = TextEmbedder.load()
    except EmbedderUnavailable as exc:
        require_system(str(exc))
    cfg = load_config(None, environ={}, overrides={
        "engine": {"max_batch": 1},
        "alerts": {"health": {"enabled": False}, "rules": [
            {"name": "red circle", "description": "a red circle", "threshold": 0.6, "min_duration_s": 4,
             "cooldown_s": 10}]}})
    alerts = []
    pipeline = Pipeline(cfg, load_engine_from_config(cfg.engine), metrics=Metrics(), on_caption=lambda c: None,
                        on_status=lambda s: None, on_alert=alerts.append, similarity=embedder.similarity,
                        warm_texts=embedder.embed)
    pipeline.add_stream("file", str(path))
    await pipeline.run(stop_when_idle=True)
    starts = [a for a in alerts if a.phase is AlertPhase.START]
    assert len(starts) == 2, alerts
    assert 8.0 <= starts[0].start_s <= 10.5 and 38.0 <= starts[1].start_s <= 40.5, alerts
    assert len([a for a in alerts if a.phase is AlertPhase.END]) == 2
