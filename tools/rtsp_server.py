"""A loopback RTSP test server: serves video files on rtsp://127.0.0.1:PORT/NAME.

Run with the SYSTEM interpreter (``/usr/bin/python3``): GStreamer's RTSP server bindings
(``python3-gi``, ``gir1.2-gst-rtsp-server-1.0``) live there, not in the project's venv::

    /usr/bin/python3 tools/rtsp_server.py --port 0 --serve vtest=/path/vtest.avi

Each file is decoded and re-encoded to H.264 (zero-latency x264, a key frame every 15 frames)
and shared between clients. A file does not loop: serve a long one. ``--port 0`` picks a free
port. Prints ``READY <port>`` on stdout once it is serving; exits non-zero when the port is in
use or a file is missing. Driven from the tests by ``tests/helpers/rtsp.py``.
"""

from __future__ import annotations

import argparse
import os
import sys

LAUNCH = (
    "( filesrc location={location} ! decodebin ! videoconvert ! video/x-raw,format=I420 "
    "! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=15 "
    "! rtph264pay name=pay0 pt=96 config-interval=1 )"
)


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--serve", action="append", required=True, metavar="NAME=PATH",
                        help="serve PATH on rtsp://HOST:PORT/NAME (repeatable)")
    return parser.parse_args(argv)


def _quote(path: str) -> str:
    # gst_parse_launch property values: quote and escape so spaces and quotes survive
    return '"' + path.replace("\\", "\\\\").replace('"', '\\"') + '"'


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
    from gi.repository import GLib, Gst, GstRtspServer

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address(args.host)
    server.set_service(str(args.port))
    mount_points = server.get_mount_points()
    for name, path in mounts.items():
        factory = GstRtspServer.RTSPMediaFactory()
        factory.set_launch(LAUNCH.format(location=_quote(path)))
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
