"""Real media for tests and benchmarks, built at run time from system packages.

- :func:`fetch_vtest` extracts ``vtest.avi`` (pedestrians, 768×576, 10 fps, 795 frames) from
  Debian's ``opencv-doc`` package with ``apt-get download`` + ``dpkg-deb``, cached on disk.
- :func:`render_storyline_file` renders a synthetic shapes storyline into an H.264 file with the
  ``ffmpeg`` CLI, and returns the :class:`~streamcap.demo.synthetic.Storyline` that is its ground truth.
- :func:`make_long` loops a file with ``ffmpeg -stream_loop`` (a file served over RTSP does not
  loop by itself).

Blocking, synchronous helpers (subprocesses); every output is written to a temporary name and
renamed into place, so a crash never leaves a truncated file behind a cache hit. A missing tool
raises :class:`MediaToolError` with the package to install.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

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
    cache = Path(cache_dir)
    target = cache / "vtest.avi"
    if target.is_file() and target.stat().st_size > 0:
        return target
    apt_get = _require_tool("apt-get", "apt")
    dpkg_deb = _require_tool("dpkg-deb", "dpkg")
    tar = _require_tool("tar", "tar")
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="streamcap-vtest-") as tmp:
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
            untar = subprocess.run([tar, "-x", VTEST_MEMBER], cwd=tmp, stdin=deb.stdout,
                                   capture_output=True, check=False)
            assert deb.stdout is not None
            deb.stdout.close()
        extracted = Path(tmp) / VTEST_MEMBER
        if deb.returncode != 0 or untar.returncode != 0 or not extracted.is_file():
            raise MediaToolError(f"could not extract vtest.avi from {debs[0].name}: "
                                 f"{_tail(untar.stderr)}")
        partial = cache / f".vtest.avi.{Path(tmp).name}"
        shutil.move(str(extracted), partial)
        partial.replace(target)
    return target


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
