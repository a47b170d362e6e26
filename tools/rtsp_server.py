"""A loopback RTSP test server: serves media files on rtsp://127.0.0.1:PORT/NAME.

Run with the SYSTEM interpreter (``/usr/bin/python3``): GStreamer's RTSP server bindings
(``python3-gi``, ``gir1.2-gst-rtsp-server-1.0``) live there, not in the project's venv::

    /usr/bin/python3 tools/rtsp_server.py --port 0 --serve vtest=/path/vtest.avi
    /usr/bin/python3 tools/rtsp_server.py --port 0 --audio-codec opus --serve talk=/path/talk.mkv

Each file is decoded and re-encoded: its video to H.264 (zero-latency x264, a key frame every 15
frames, payload ``pay0``), its sound (when it has some) to AAC (``--audio-codec aac``, the default:
RTP ``mpeg4-generic``) or Opus (``--audio-codec opus``) in the next payload; a file with sound only
is served as sound only. What a file holds is found with GStreamer's discoverer. Media are shared
between clients. A file does not
loop: serve a long one. ``--port 0`` picks a free port. Prints ``READY <port>`` on stdout once it is
serving; exits non-zero when the port is in use or a file is missing or unreadable. Driven from the
tests by ``tests/helpers/rtsp.py``.
"""

from __future__ import annotations

import argparse
import os
import sys

VIDEO = (
    "d. ! video/x-raw ! queue ! videoconvert ! video/x-raw,format=I420 "
    "! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=15 "
    "! rtph264pay name=pay{n} pt=96 config-interval=1"
)
AUDIO = {
    "aac": "d. ! audio/x-raw ! queue ! audioconvert ! audioresample ! avenc_aac ! rtpmp4gpay name=pay{n} pt=97",
    "opus": ("d. ! audio/x-raw ! queue ! audioconvert ! audioresample ! audio/x-raw,rate=48000 ! opusenc "
             "! rtpopuspay name=pay{n} pt=97"),
}
#: the encoders and payloaders each audio codec needs
AUDIO_ELEMENTS = {"aac": ("avenc_aac", "rtpmp4gpay"), "opus": ("opusenc", "rtpopuspay")}


def launch_line(location: str, *, video: bool, audio: str | None) -> str:
    """The media factory's pipeline for a file with ``video`` and/or sound encoded as ``audio``."""
    branches = []
    if video:
        branches.append(VIDEO.format(n=len(branches)))
    if audio is not None:
        branches.append(AUDIO[audio].format(n=len(branches)))
    # decodebin's pads are linked by their caps: each branch's capsfilter takes the pad it can
    return f"( filesrc location={location} ! decodebin name=d {' '.join(branches)} )"


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--serve", action="append", required=True, metavar="NAME=PATH",
                        help="serve PATH on rtsp://HOST:PORT/NAME (repeatable)")
    parser.add_argument("--audio-codec", choices=sorted(AUDIO), default="aac",
                        help="how a file's sound is sent (default aac)")
    return parser.parse_args(argv)


def _quote(path: str) -> str:
    # gst_parse_launch property values: quote and escape so spaces and quotes survive
    return '"' + path.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _tracks(Gst, GstPbutils, path: str) -> tuple[bool, bool]:
    """(has video, has audio) of ``path``, by GStreamer's discoverer."""
    info = GstPbutils.Discoverer.new(10 * Gst.SECOND).discover_uri(Gst.filename_to_uri(path))
    return bool(info.get_video_streams()), bool(info.get_audio_streams())


def main(argv: list[str]) -> int:
    args = _parse_args(argv)
    mounts: dict[str, str] = {}
    for item in args.serve:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            print(f"bad --serve {item!r}: expected NAME=PATH", file=sys.stderr)
            return 2
        if not os.path.isfile(path):
            print(f"no such file: {path}", file=sys.stderr)
            return 2
        mounts[name.strip("/")] = os.path.abspath(path)

    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    gi.require_version("GstPbutils", "1.0")
    from gi.repository import GLib, Gst, GstPbutils, GstRtspServer

    Gst.init(None)
    for element in AUDIO_ELEMENTS[args.audio_codec]:
        if Gst.ElementFactory.find(element) is None:
            print(f"GStreamer element {element} is missing (needed for --audio-codec {args.audio_codec})",
                  file=sys.stderr)
            return 1
    server = GstRtspServer.RTSPServer()
    server.set_address(args.host)
    server.set_service(str(args.port))
    mount_points = server.get_mount_points()
    for name, path in mounts.items():
        try:
            has_video, has_audio = _tracks(Gst, GstPbutils, path)
        except GLib.Error as exc:
            print(f"cannot read {path}: {exc.message}", file=sys.stderr)
            return 2
        if not has_video and not has_audio:
            print(f"{path} has neither video nor audio", file=sys.stderr)
            return 2
        audio = args.audio_codec if has_audio else None
        factory = GstRtspServer.RTSPMediaFactory()
        factory.set_launch(launch_line(_quote(path), video=has_video, audio=audio))
        factory.set_shared(True)
        mount_points.add_factory("/" + name, factory)

    if server.attach(None) == 0:
        print(f"cannot listen on {args.host}:{args.port} (port in use?)", file=sys.stderr)
        return 1
    print(f"READY {server.get_bound_port()}", flush=True)
    GLib.MainLoop().run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
