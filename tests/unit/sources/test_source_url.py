import pytest

from streamcap.core.errors import BadSourceURL
from streamcap.sources.url import SourceKind, parse_source_url, sanitize_url

# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize("url", ["video.mp4", "/data/cam 1.mkv", "./clips/a:b.avi"])
def test_plain_path_is_a_file_source(url):
    spec = parse_source_url(url)
    assert spec.kind is SourceKind.FILE
    assert spec.location == url
    assert not spec.live


def test_file_url_is_decoded_to_a_path():
    spec = parse_source_url("file:///data/my%20clip.mp4")
    assert (spec.kind, spec.location) == (SourceKind.FILE, "/data/my clip.mp4")


def test_file_url_with_remote_host_is_rejected():
    with pytest.raises(BadSourceURL, match="local"):
        parse_source_url("file://fileserver/share/a.mp4")


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("rtsp://127.0.0.1:8554/cam", SourceKind.RTSP),
        ("rtsps://cam.example/live", SourceKind.RTSP),
        ("http://10.0.0.2/mjpeg", SourceKind.HTTP),
        ("https://example.com/live.m3u8", SourceKind.HTTP),
    ],
)
def test_network_urls_are_live_sources_keeping_the_full_url(url, kind):
    spec = parse_source_url(url)
    assert spec.kind is kind
    assert spec.location == url
    assert spec.live


def test_network_url_keeps_credentials_for_the_backend():
    spec = parse_source_url("rtsp://admin:s3cret@cam.local/stream")
    assert spec.location == "rtsp://admin:s3cret@cam.local/stream"


def test_webcam_index_is_parsed():
    spec = parse_source_url("webcam:2")
    assert spec.kind is SourceKind.WEBCAM
    assert spec.options["index"] == 2
    assert spec.live


@pytest.mark.parametrize("url", ["webcam:", "webcam:front", "webcam:-1"])
def test_webcam_without_numeric_index_is_rejected(url):
    with pytest.raises(BadSourceURL, match="webcam:N"):
        parse_source_url(url)


def test_synthetic_defaults():
    spec = parse_source_url("synthetic:shapes")
    assert spec.kind is SourceKind.SYNTHETIC
    assert spec.location == "shapes"
    assert spec.options == {"seed": 1, "fps": 10.0, "size": (320, 240), "scene_s": 6.0,
                            "realtime": True, "duration_s": None}
    assert spec.live


def test_synthetic_options_are_typed():
    spec = parse_source_url(
        "synthetic:shapes?seed=7&fps=25&size=640x360&scene_s=4.5&realtime=0&duration_s=30")
    assert spec.options == {"seed": 7, "fps": 25.0, "size": (640, 360), "scene_s": 4.5,
                            "realtime": False, "duration_s": 30.0}
    assert not spec.live


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("synthetic:shapes?colour=red", "unknown option 'colour'"),
        ("synthetic:shapes?fps=fast", "not a number"),
        ("synthetic:shapes?fps=0", "outside"),
        ("synthetic:shapes?fps=nan", "outside"),
        ("synthetic:shapes?fps=5e-324", r"outside \[0.1, 120\]"),  # found by tools/fuzz.py (seed 8)
        ("synthetic:shapes?fps=1e-300", "outside"),
        ("synthetic:shapes?scene_s=1e-300", "outside"),
        ("synthetic:shapes?duration_s=5e-324", "outside"),
        ("synthetic:shapes?size=320", "WIDTHxHEIGHT"),
        ("synthetic:shapes?size=8x8", "16..4096"),
        ("synthetic:shapes?seed=1.5", "not an integer"),
        ("synthetic:shapes?realtime=maybe", "boolean"),
        ("synthetic:shapes?seed=1&seed=2", "given twice"),
        ("synthetic:shapes?seed", "malformed query"),
        ("synthetic:circles", "unknown synthetic world 'circles'"),
    ],
)
def test_malformed_synthetic_options_are_rejected_with_reason(url, message):
    with pytest.raises(BadSourceURL, match=message):
        parse_source_url(url)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("ftp://host/file.mp4", "unknown scheme 'ftp'"),
        ("rtsp:/host/cam", r"expected rtsp://"),
        ("rtsp:///cam", "no host"),
        ("rtsp://host:notaport/cam", "port"),
        ("http://host:99999/x", "port"),
    ],
)
def test_malformed_urls_are_rejected_with_reason(url, message):
    with pytest.raises(BadSourceURL, match=message):
        parse_source_url(url)


def test_error_for_bad_url_does_not_leak_credentials():
    with pytest.raises(BadSourceURL) as caught:
        parse_source_url("rtsp://admin:hunter2@host:port/cam")
    assert "hunter2" not in str(caught.value)
    assert caught.value.code == "bad_source_url"


# --------------------------------------------------------------------------- sanitising


@pytest.mark.parametrize(
    ("url", "safe"),
    [
        ("rtsp://admin:s3cret@10.0.0.5:554/live", "rtsp://***@10.0.0.5:554/live"),
        ("rtsp://admin@10.0.0.5/live", "rtsp://***@10.0.0.5/live"),
        ("rtsp://admin:p@ss/w@rd@cam/live", "rtsp://***@cam/live"),
        ("http://cam/snap?user=bob&password=x1&res=hd", "http://cam/snap?user=bob&password=***&res=hd"),
        ("https://h/s.m3u8?token=abc&API_KEY=k#frag", "https://h/s.m3u8?token=***&API_KEY=***"),  # a secret value may hold "#"
        ("rtsp://cam/live?pwd=1;auth=2", "rtsp://cam/live?pwd=***;auth=***"),
        ("rtsp://10.0.0.5/live?channel=1", "rtsp://10.0.0.5/live?channel=1"),
        ("/videos/clip.mp4", "/videos/clip.mp4"),
        ("synthetic:shapes?seed=1", "synthetic:shapes?seed=1"),
    ],
)
def test_sanitize_hides_credentials(url, safe):
    assert sanitize_url(url) == safe


def test_sanitize_never_raises_on_garbage():
    for junk in ["", "://", "rtsp://", "rtsp://@", "a" * 10_000, "rtsp://[::1:554/x"]:
        assert isinstance(sanitize_url(junk), str)


# --------------------------------------------------------------------------- opening with config


@pytest.mark.parametrize(
    "url",
    ["clip.mp4", "rtsp://127.0.0.1:1/cam", "https://example.invalid/live.m3u8", "webcam:0",
     "synthetic:shapes?realtime=0", "push:"],
)
def test_open_source_takes_the_configured_options_for_every_kind(url):
    from streamcap.runtime.config import Config, source_options
    from streamcap.sources.url import open_source

    options = source_options(Config(network={"handoff_size": 7}))
    source = open_source("cam1", url, **options)  # not started: nothing is opened yet
    kind = parse_source_url(url).kind
    if kind is SourceKind.PUSH:
        assert not hasattr(source, "_handoff_size")
    else:
        assert source._handoff_size == 7
    if kind not in (SourceKind.PUSH, SourceKind.SYNTHETIC):
        assert source._backoff == options["backoff"]
        assert source._stall_timeout_s == options["stall_timeout_s"]
        assert (source._open_timeout_s, source._read_timeout_s) == (options["open_timeout_s"],
                                                                    options["read_timeout_s"])


def test_a_synthetic_narration_is_a_name_under_engines_never_a_path(tmp_path, monkeypatch):
    from streamcap.sources import url as url_module

    monkeypatch.setattr(url_module, "NARRATIONS_DIR", tmp_path)
    (tmp_path / "demo-narration").mkdir()
    (tmp_path / "demo-narration" / "narration.wav").write_bytes(b"RIFF")
    spec = parse_source_url("synthetic:shapes?narration=demo")
    assert spec.options["narration"] == str(tmp_path / "demo-narration" / "narration.wav")
    for bad in ("../../etc/passwd", "/etc/passwd", "Demo", "demo/x"):
        with pytest.raises(BadSourceURL, match="narration name"):
            parse_source_url(f"synthetic:shapes?narration={bad}")
    with pytest.raises(BadSourceURL, match="not installed"):
        parse_source_url("synthetic:shapes?narration=lecture")
