"""Shared fixtures: real media built at run time and a loopback RTSP server.

Skipping rule: outside CI a test whose system package (apt, ffmpeg, GStreamer's RTSP server) is
missing skips with the reason; under ``CI=true`` nothing may skip, so the same fixture fails the
test instead. This file is the only place the tests read the environment.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers import StorylineVideo
from tests.helpers.rtsp import RtspServer, RtspServerError, rtsp_server_available
from tools import media

IN_CI = os.environ.get("CI", "").strip().lower() == "true"
# servers started outside a test's own fixture keep their caption store here, never in the user's
os.environ["XDG_DATA_HOME"] = tempfile.mkdtemp(prefix="streamcap-test-data-")


@pytest.fixture(autouse=True)
def _own_caption_store(tmp_path_factory, monkeypatch) -> None:
    """Each test's servers (server.data_dir defaults to $XDG_DATA_HOME/streamcap) get a store of
    their own: finals and alerts a server stored in an earlier test are never replayed in this one."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path_factory.mktemp("data-home")))
MEDIA_CACHE = Path(os.environ.get("STREAMCAP_TEST_MEDIA")
                   or Path.home() / ".cache" / "streamcap-test-media")

STORYLINE_SEED = 11
STORYLINE_DURATION_S = 75.0
STORYLINE_FPS = 10.0
STORYLINE_SIZE = (320, 240)
STORYLINE_SCENE_S = 6.0
VTEST_LOOPS = 7  # 8 plays of 79.5 s: longer than any test needs


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "integration: uses real peers on loopback (RTSP server, ffmpeg, sockets)")


def unavailable(reason: str) -> None:
    """Skip (locally) or fail (under CI=true) a test whose system prerequisite is missing."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: missing system packages are failures, not skips)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def require_system() -> Callable[[str], None]:
    """``require_system(reason)``: skip outside CI, fail under CI."""
    return unavailable


@pytest.fixture
def artefact_dir(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    """Where a test keeps pictures worth a look (browser screenshots): ``$STREAMCAP_ARTEFACTS/<test>``
    when set (CI keeps that folder), else the test's own tmp_path."""
    root = os.environ.get("STREAMCAP_ARTEFACTS")
    if not root:
        return tmp_path
    out = Path(root) / request.node.name.replace("/", "_")
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(scope="session")
def media_cache_dir() -> Path:
    MEDIA_CACHE.mkdir(parents=True, exist_ok=True)
    return MEDIA_CACHE


@pytest.fixture(scope="session")
def vtest_path(media_cache_dir: Path) -> Path:
    """``vtest.avi`` from Debian's opencv-doc: 768×576, 10 fps, 795 frames."""
    try:
        return media.fetch_vtest(media_cache_dir)
    except media.MediaToolError as exc:
        unavailable(f"vtest.avi unavailable: {exc}")
        raise  # unreachable: unavailable() always raises


@pytest.fixture(scope="session")
def vtest_long_path(vtest_path: Path, media_cache_dir: Path) -> Path:
    """vtest.avi looped (about 10 minutes): served over RTSP, a file does not loop."""
    out = media_cache_dir / f"vtest-x{VTEST_LOOPS + 1}.avi"
    if out.is_file():
        return out
    try:
        return media.make_long(vtest_path, out, VTEST_LOOPS)
    except media.MediaToolError as exc:
        unavailable(f"cannot loop vtest.avi: {exc}")
        raise


def _storyline_cache_key() -> str:
    """Changes whenever the renderer or the encoder settings change, so caches never go stale."""
    digest = hashlib.sha256()
    root = Path(__file__).resolve().parents[1]
    for part in ("streamcap/demo/synthetic.py", "tools/media.py"):
        digest.update((root / part).read_bytes())
    digest.update(repr((STORYLINE_SEED, STORYLINE_DURATION_S, STORYLINE_FPS, STORYLINE_SIZE,
                        STORYLINE_SCENE_S)).encode())
    return digest.hexdigest()[:12]


@pytest.fixture(scope="session")
def storyline_video(media_cache_dir: Path) -> StorylineVideo:
    """A 75 s synthetic storyline rendered to H.264 (mp4), with its ground truth."""
    path = media_cache_dir / f"storyline-{_storyline_cache_key()}.mp4"
    storyline_kwargs = {"seed": STORYLINE_SEED, "duration_s": STORYLINE_DURATION_S,
                        "fps": STORYLINE_FPS, "size": STORYLINE_SIZE,
                        "scene_s": STORYLINE_SCENE_S}
    if path.is_file():
        from streamcap.demo.synthetic import Storyline

        w, h = STORYLINE_SIZE
        storyline = Storyline(STORYLINE_SEED, STORYLINE_SCENE_S, aspect=w / h)
    else:
        try:
            storyline = media.render_storyline_file(path, **storyline_kwargs)
        except media.MediaToolError as exc:
            unavailable(f"cannot render the storyline video: {exc}")
            raise
    return StorylineVideo(path, storyline, STORYLINE_FPS, STORYLINE_DURATION_S, STORYLINE_SIZE)


@pytest.fixture(scope="session")
def _rtsp_server_check() -> str | None:
    return rtsp_server_available()


@pytest.fixture
def rtsp_server(_rtsp_server_check: str | None) -> Iterator[Callable[..., RtspServer]]:
    """Factory: ``rtsp_server({"name": path, ...}, port=None)`` → a started
    :class:`~tests.helpers.rtsp.RtspServer`; every server is stopped after the test."""
    if _rtsp_server_check is not None:
        unavailable(_rtsp_server_check)
    servers: list[RtspServer] = []

    def start(files: dict[str, Path | str], port: int | None = None) -> RtspServer:
        server = RtspServer(files, port)
        servers.append(server)
        try:
            server.start()
        except RtspServerError as exc:
            pytest.fail(str(exc))
        return server

    yield start
    for server in servers:
        server.close()
