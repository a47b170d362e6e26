"""Real media for tests and benchmarks, built at run time from system packages.

- :func:`fetch_vtest` extracts ``vtest.avi`` (pedestrians, 768×576, 10 fps, 795 frames) from
  Debian's ``opencv-doc`` package with ``apt-get download`` + ``dpkg-deb``, cached on disk.
- :func:`render_storyline_file` renders a synthetic shapes storyline into an H.264 file with the
  ``ffmpeg`` CLI, and returns the :class:`~streamcap.demo.synthetic.Storyline` that is its ground truth.
- :func:`make_long` loops a file with ``ffmpeg -stream_loop`` (a file served over RTSP does not
  loop by itself).
- :func:`render_beep_clip` writes a clip with sound (PyAV: H.264 + AAC in mp4, or Opus in mkv,
  or sound alone): a dark picture that flashes white for one frame while a tone beeps, at known
  times, so a test can check that a sound and a picture at the same media time line up.

Blocking, synchronous helpers (subprocesses); every output is written to a temporary name and
renamed into place, so a crash never leaves a truncated file behind a cache hit. A missing tool
raises :class:`MediaToolError` with the package to install.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from dataclasses import dataclass

import numpy as np

from streamcap.demo.synthetic import Storyline

VTEST_MEMBER = "./usr/share/doc/opencv-doc/examples/data/vtest.avi"


class MediaToolError(RuntimeError):
    """A system tool (apt-get, dpkg-deb, ffmpeg) is missing or failed."""


def _require_tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise MediaToolError(f"{name} not found on PATH: install the Debian package {package!r}")
    return path


def _tail(text: bytes | str, lines: int = 8) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return "\n".join(text.strip().splitlines()[-lines:])


def fetch_vtest(cache_dir: Path | str) -> Path:
    """Return the path of ``vtest.avi`` in ``cache_dir``, downloading ``opencv-doc`` once."""
    target = Path(cache_dir) / "vtest.avi"
    if not (target.is_file() and target.stat().st_size > 0):
        _extract_opencv_doc({VTEST_MEMBER: target})
    return target


def _extract_opencv_doc(members: dict[str, Path]) -> None:
    """``apt-get download opencv-doc`` once and extract each member of its file tree (``./usr/…``)
    to its path (written aside, then renamed: a reader never sees half a file)."""
    apt_get = _require_tool("apt-get", "apt")
    dpkg_deb = _require_tool("dpkg-deb", "dpkg")
    tar = _require_tool("tar", "tar")
    with tempfile.TemporaryDirectory(prefix="streamcap-opencv-doc-") as tmp:
        Path(tmp).chmod(0o755)  # apt's unprivileged _apt user must be able to write here
        proc = subprocess.run([apt_get, "download", "opencv-doc"], cwd=tmp,
                              capture_output=True, check=False)
        debs = sorted(Path(tmp).glob("opencv-doc_*.deb"))
        if proc.returncode != 0 or not debs:
            raise MediaToolError(
                "apt-get download opencv-doc failed (no network or no apt lists? try "
                f"`apt-get update`): {_tail(proc.stderr)}")
        with subprocess.Popen([dpkg_deb, "--fsys-tarfile", str(debs[0])],
                              stdout=subprocess.PIPE) as deb:
            untar = subprocess.run([tar, "-x", *members], cwd=tmp, stdin=deb.stdout,
                                   capture_output=True, check=False)
            assert deb.stdout is not None
            deb.stdout.close()
        names = [Path(m).name for m in members]
        if deb.returncode != 0 or untar.returncode != 0:
            raise MediaToolError(f"could not extract {names} from {debs[0].name}: {_tail(untar.stderr)}")
        for member, target in members.items():
            extracted = Path(tmp) / member
            if not extracted.is_file():
                raise MediaToolError(f"{debs[0].name} has no {member}")
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f".{target.name}.{Path(tmp).name}")
            shutil.move(str(extracted), partial)
            partial.replace(target)


def render_storyline_file(
    path: Path | str,
    *,
    seed: int,
    duration_s: float,
    fps: float = 10,
    size: tuple[int, int] = (320, 240),
    scene_s: float = 6.0,
    crf: int = 18,
    storyline: Storyline | None = None,
) -> Storyline:
    """Render a storyline to an H.264 (libx264, yuv420p) file; the container follows the suffix
    (``.mp4`` or ``.mkv``). Frame ``i`` shows media time ``i / fps``, exactly as the live
    ``synthetic:shapes`` source renders it; pass ``storyline`` for a scripted one. Returns the
    storyline (the file's ground truth)."""
    ffmpeg = _require_tool("ffmpeg", "ffmpeg")
    out = Path(path)
    if out.suffix.lower() not in (".mp4", ".mkv"):
        raise ValueError(f"expected a .mp4 or .mkv path, got {out}")
    if duration_s <= 0 or fps <= 0:
        raise ValueError("duration_s and fps must be positive")
    width, height = size
    if width % 2 or height % 2:
        raise ValueError(f"yuv420p needs an even size, got {width}x{height}")
    if storyline is None:
        storyline = Storyline(seed, scene_s, aspect=width / height)
    n_frames = round(duration_s * fps)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.stem}.partial{out.suffix}")
    cmd = [
        ffmpeg, "-hide_banner", "-loglevel", "error", "-y",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", f"{fps:g}",
        "-i", "-",
        "-c:v", "libx264", "-preset", "veryfast", "-crf", str(crf), "-pix_fmt", "yuv420p",
        "-g", str(max(1, round(2 * fps))), str(partial),
    ]
    with tempfile.TemporaryFile() as err, subprocess.Popen(cmd, stdin=subprocess.PIPE,
                                                           stderr=err) as proc:
        assert proc.stdin is not None
        try:
            for i in range(n_frames):
                proc.stdin.write(storyline.render(i / fps, width, height, i).tobytes())
        except BrokenPipeError:
            pass  # ffmpeg died: its stderr says why, reported below
        finally:
            try:
                proc.stdin.close()
            except BrokenPipeError:
                pass
        returncode = proc.wait()
        if returncode != 0:
            err.seek(0)
            partial.unlink(missing_ok=True)
            raise MediaToolError(f"ffmpeg failed to encode {out.name}: {_tail(err.read())}")
    partial.replace(out)
    return storyline


def make_long(path_in: Path | str, path_out: Path | str, loops: int) -> Path:
    """Write ``path_out``: ``path_in`` played ``loops + 1`` times, stream-copied (no re-encode)."""
    ffmpeg = _require_tool("ffmpeg", "ffmpeg")
    if loops < 0:
        raise ValueError("loops must be >= 0")
    src, out = Path(path_in), Path(path_out)
    if not src.is_file():
        raise FileNotFoundError(src)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.stem}.partial{out.suffix}")
    proc = subprocess.run(
        [ffmpeg, "-hide_banner", "-loglevel", "error", "-y", "-stream_loop", str(loops),
         "-i", str(src), "-c", "copy", str(partial)],
        capture_output=True, check=False)
    if proc.returncode != 0:
        partial.unlink(missing_ok=True)
        raise MediaToolError(f"ffmpeg -stream_loop failed for {src.name}: {_tail(proc.stderr)}")
    partial.replace(out)
    return out


@dataclass(frozen=True)
class BeepClip:
    """A clip written by :func:`render_beep_clip`: each beep (and flash) starts at a time of
    ``beeps_s`` and lasts ``beep_s``."""

    path: Path
    fps: float
    duration_s: float
    beeps_s: tuple[float, ...]
    beep_s: float
    tone_hz: float
    has_video: bool
    audio_codec: str


def render_beep_clip(
    path: Path | str,
    *,
    duration_s: float = 6.0,
    fps: float = 10.0,
    size: tuple[int, int] = (160, 120),
    beeps_s: tuple[float, ...] = (1.0, 2.5, 4.0),
    beep_s: float | None = None,
    tone_hz: float = 1000.0,
    sample_rate: int = 48_000,
    channels: int = 2,
    audio_codec: str = "aac",
    video: bool = True,
) -> BeepClip:
    """Write a clip whose sound beeps (a ``tone_hz`` sine at 0.5 amplitude, silence between)
    while its picture flashes white (dark grey between), both starting at each time of
    ``beeps_s`` and lasting ``beep_s`` (default one frame interval). ``audio_codec``: ``"aac"``
    (``.mp4``/``.mkv``) or ``"opus"`` (``.mkv``); ``video=False``: sound only. Encoded with PyAV
    (H.264 by libx264, yuv420p, a key frame every 2 s), tracks interleaved by time."""
    import av

    out = Path(path)
    if audio_codec not in ("aac", "opus"):
        raise ValueError(f"audio_codec must be 'aac' or 'opus', not {audio_codec!r}")
    if audio_codec == "opus" and out.suffix.lower() != ".mkv":
        raise ValueError("Opus goes in .mkv")
    if duration_s <= 0 or fps <= 0:
        raise ValueError("duration_s and fps must be positive")
    beep = beep_s if beep_s is not None else 1.0 / fps
    width, height = size
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.stem}.partial{out.suffix}")
    from fractions import Fraction

    n_samples = round(duration_s * sample_rate)
    t = np.arange(n_samples) / sample_rate
    on = np.zeros(n_samples, bool)
    for b in beeps_s:
        on |= (t >= b) & (t < b + beep)
    tone = np.where(on, 0.5 * np.sin(2 * np.pi * tone_hz * t), 0.0).astype(np.float32)
    try:
        with av.open(str(partial), "w") as container:
            vstream = None
            if video:
                vstream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
                vstream.width, vstream.height, vstream.pix_fmt = width, height, "yuv420p"
                vstream.options = {"g": str(max(1, round(2 * fps))), "preset": "veryfast", "crf": "18"}
            codec = "aac" if audio_codec == "aac" else "libopus"
            astream = container.add_stream(codec, rate=sample_rate)
            astream.layout = "stereo" if channels == 2 else "mono"
            astream.format = "fltp" if audio_codec == "aac" else "flt"
            # interleave by time so the demuxer sees both tracks side by side
            frame_size = astream.codec_context.frame_size or 960
            a_next, v_next, a_pos = 0.0, 0.0, 0
            n_frames = round(duration_s * fps) if video else 0
            v_index = 0
            while a_pos < n_samples or v_index < n_frames:
                if vstream is not None and v_index < n_frames and (v_next <= a_next or a_pos >= n_samples):
                    ft = v_index / fps
                    flash = any(b - 1e-9 <= ft < b + beep - 1e-9 for b in beeps_s)
                    image = np.full((height, width, 3), 235 if flash else 30, np.uint8)
                    frame = av.VideoFrame.from_ndarray(image, format="rgb24")
                    frame.pts = v_index
                    frame.time_base = Fraction(1) / vstream.codec_context.framerate
                    container.mux(vstream.encode(frame))
                    v_index += 1
                    v_next = v_index / fps
                    continue
                block = tone[a_pos:a_pos + frame_size]
                if len(block) < frame_size:
                    block = np.pad(block, (0, frame_size - len(block)))
                planes = np.tile(block, (channels, 1))
                if astream.format.name == "flt":
                    planes = planes.T.reshape(1, -1)
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(planes, np.float32),
                                                   format=astream.format.name, layout=astream.layout.name)
                frame.sample_rate = sample_rate
                frame.pts = a_pos
                frame.time_base = Fraction(1, sample_rate)
                container.mux(astream.encode(frame))
                a_pos += frame_size
                a_next = a_pos / sample_rate
            if vstream is not None:
                container.mux(vstream.encode(None))
            container.mux(astream.encode(None))
    except Exception:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(out)
    return BeepClip(out, fps, duration_s, tuple(beeps_s), beep, tone_hz, video, audio_codec)


OPENCV_DATA_PREFIX = "./usr/share/doc/opencv-doc/examples/data/"


def fetch_opencv_data(cache_dir: Path | str, names: list[str] | tuple[str, ...]) -> dict[str, Path]:
    """Return ``{name: path}`` for files of opencv-doc's ``examples/data`` folder (photos,
    ``Megamind.avi``…), extracted into ``cache_dir/opencv-data/``; downloads ``opencv-doc`` once
    for all the files not cached yet. A name the package lacks raises :class:`MediaToolError`."""
    folder = Path(cache_dir) / "opencv-data"
    paths = {name: folder / name for name in names}
    for name in names:
        if "/" in name or name.startswith("."):
            raise ValueError(f"expected a plain file name of examples/data, got {name!r}")
    missing = [n for n, p in paths.items() if not (p.is_file() and p.stat().st_size > 0)]
    if missing:
        _extract_opencv_doc({OPENCV_DATA_PREFIX + n: paths[n] for n in missing})
    return paths


def make_emptying_clip(vtest: Path | str, path_out: Path | str, *, people_s: float = 12.0,
                       empty_s: float = 8.0) -> Path:
    """Write ``path_out`` (MJPEG AVI, 10 fps): the first ``people_s`` of ``vtest.avi``, then
    ``empty_s`` of the same place with nobody in it — the median of frames spread over the
    clip (walkers never stay, the background does), with a little noise so no two frames are
    equal. For rules that must end when the scene empties."""
    import cv2
    import numpy as np

    src, out = Path(vtest), Path(path_out)
    cap = cv2.VideoCapture(str(src))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    if len(frames) < 100:
        raise MediaToolError(f"{src.name}: only {len(frames)} frames readable")
    background = np.median(np.stack(frames[::8]), axis=0).astype(np.uint8)
    fps = 10.0
    h, w = background.shape[:2]
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.stem}.partial{out.suffix}")
    writer = cv2.VideoWriter(str(partial), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    if not writer.isOpened():
        raise MediaToolError("OpenCV cannot write MJPEG AVI here")
    rng = np.random.default_rng(0)
    for frame in frames[: round(people_s * fps)]:
        writer.write(frame)
    for _ in range(round(empty_s * fps)):
        noise = rng.integers(-2, 3, background.shape, dtype=np.int16)
        writer.write(np.clip(background.astype(np.int16) + noise, 0, 255).astype(np.uint8))
    writer.release()
    partial.replace(out)
    return out
