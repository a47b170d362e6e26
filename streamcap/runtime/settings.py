"""From the config to the pure classes' settings: the only place defaults reach the core.

:func:`processor_settings` builds a stream's :class:`~streamcap.core.processor.ProcessorSettings`
from the :class:`~streamcap.runtime.config.Config` (global sections merged with the stream's own
``[[sources]]`` overrides) and the engine that captions its video track. Nothing here has a
default of its own.
"""

from __future__ import annotations

from streamcap.alerts.health import HealthLimits
from streamcap.core.processor import LiveVttSettings, ProcessorSettings, StabilizerSettings, TrackSettings
from streamcap.core.errors import ConfigError
from streamcap.core.types import SPEECH_TRACK, VIDEO_TRACK
from streamcap.runtime.config import Config, StreamConfig
from streamcap.sources.url import SourceKind


def health_limits(cfg: Config) -> HealthLimits | None:
    """The ``[alerts.health]`` limits, or None when health alerts are off."""
    h = cfg.alerts.health
    return HealthLimits(**h.model_dump(exclude={"enabled"})) if h.enabled else None


DESCRIBER = "describer"  # the scene describer's key among the pipeline's picture engines


def video_engine_key(choice: str, kind: SourceKind | None, *, describer: bool, stream_id: str = "") -> str:
    """Which of the pipeline's picture engines watches a stream: ``"default"`` (the [engine]
    caption model) or :data:`DESCRIBER`. ``choice``: ``auto`` (the describer for real sources,
    the caption model for synthetic ones and when no describer is loaded), ``caption`` or
    ``describer`` (ConfigError when it is not loaded)."""
    if choice == "caption":
        return "default"
    if choice == DESCRIBER:
        if not describer:
            raise ConfigError(f"stream {stream_id}: the scene describer is not loaded (is describer.path an "
                              "engine folder? engines/scene-describer ships with streamcap)")
        return DESCRIBER
    if choice != "auto":
        raise ConfigError(f"stream {stream_id}: engine must be auto, caption or describer, not {choice!r}")
    return DESCRIBER if describer and kind is not SourceKind.SYNTHETIC else "default"


def processor_settings(cfg: Config, stream_id: str, engine, *, live: bool, hidden: bool = False,
                       collect_finals: bool = False, stream_cfg: StreamConfig | None = None,
                       health: bool = True, tracks: tuple[str, ...] | None = None,
                       engine_key: str = "default") -> ProcessorSettings:
    """The processor settings of ``stream_id`` whose video track ``engine`` captions.

    ``hidden`` streams (caption jobs) get no health alerts and no live WebVTT; ``health=False``
    turns health alerts off (nothing listens for alerts). ``tracks`` overrides the stream's
    configured tracks (``video``, ``speech``)."""
    sc = stream_cfg if stream_cfg is not None else cfg.stream_config(stream_id)
    wanted = tuple(tracks) if tracks else sc.tracks
    unknown = [t for t in wanted if t not in (VIDEO_TRACK, SPEECH_TRACK)]
    if unknown or not wanted or len(set(wanted)) != len(wanted):
        raise ConfigError(f"stream {stream_id}: tracks must be video and/or speech, not {list(wanted)}")
    windows, stab = sc.windows, sc.stabilizer
    window_s = windows.window_s or engine.window_s
    live_cfg = cfg.subtitles.live
    live_vtt = None
    if live_cfg.enabled and not hidden:
        settle_s = live_cfg.settle_s if live_cfg.settle_s is not None else window_s + stab.agree * windows.stride_s
        live_vtt = LiveVttSettings(live_cfg.segment_s, live_cfg.window_segments, cfg.subtitles.rules(), settle_s)
    video = TrackSettings(
        name=VIDEO_TRACK, window_s=window_s, stride_s=windows.stride_s, engine=engine_key,
        sampling=getattr(engine, "frame_sampling", "span"),
        frames_per_window=engine.frames_per_window,
        stabilizer=StabilizerSettings(stab.agree, stab.fresh_agree or None,
                                      refresh_s=getattr(engine, "refresh_s", None)),
        decoding=tuple(sorted(sc.decoding.options().items())), live_vtt=live_vtt)
    chosen = [video] if VIDEO_TRACK in wanted else []
    if SPEECH_TRACK in wanted:
        sp = cfg.speech
        chunk_s = sp.min_chunk_s if live else sp.file_min_chunk_s
        speech_vtt = None
        if live_vtt is not None:  # speech finals settle within a chunk and an utterance's end
            speech_vtt = LiveVttSettings(live_cfg.segment_s, live_cfg.window_segments, cfg.subtitles.rules(),
                                         live_cfg.settle_s if live_cfg.settle_s is not None
                                         else 2 * chunk_s + sp.end_silence_s + 1.0)
        chosen.append(TrackSettings(
            name=SPEECH_TRACK, window_s=sp.max_window_s, stride_s=chunk_s, frames_per_window=0,
            stabilizer=StabilizerSettings(1, None), engine=SPEECH_TRACK, input="audio",
            decoding=tuple(sorted({"language": sp.language, "task": sp.task, "num_beams": sp.num_beams}.items())),
            live_vtt=speech_vtt, speech=sp.settings(chunk_s)))
    s = engine.preprocessing.image_size
    return ProcessorSettings(
        stream=stream_id, live=live, frame_shape=(s, s, 3), ring_capacity=cfg.pipeline.ring_capacity,
        max_ingest_fps=windows.max_ingest_fps, max_backlog=windows.max_backlog if live else None,
        cut_diff=stab.cut_diff, tracks=tuple(chosen),
        health=health_limits(cfg) if health and not hidden else None,
        finals_history=cfg.pipeline.finals_history, collect_finals=collect_finals)
