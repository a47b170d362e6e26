"""Webcams (``webcam:N``) through OpenCV's VideoCapture (V4L2 on Linux).

Files, RTSP and HTTP are read by :mod:`streamcap.sources.pyav`; OpenCV stays only where it is the
better tool: opening a local camera by index. :class:`OpenCVSource` is a
:class:`~streamcap.sources.reader.ReaderSource` (reader thread per connection, supervisor on the
loop, drop-oldest handoff, statuses, backoff, media clock: read that module's docstring); this
module is its reader thread. A webcam's frames carry no container time worth trusting, so the
media clock places them by capture time. A camera that cannot be opened is retried
``max_failures`` times (``"auto"``: 3) before the stream reports ERROR.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys

import cv2

from streamcap.sources.reader import Decoded, Event, Kind, ReaderSource
from streamcap.sources.url import SourceKind

log = logging.getLogger(__name__)


class OpenCVSource(ReaderSource):
    """A webcam. See :mod:`streamcap.sources.reader` for the contract and the tuning keywords."""

    kinds = frozenset({SourceKind.WEBCAM})
    default_max_failures = 3

    def _open_failure_detail(self) -> str:
        index = self.spec.options["index"]
        missing = sys.platform.startswith("linux") and not os.path.exists(f"/dev/video{index}")
        return f"cannot open webcam {index}" + (f": no /dev/video{index}" if missing else "")

    def _read_loop(self, gen: int, loop: asyncio.AbstractEventLoop) -> None:
        cap: cv2.VideoCapture | None = None
        try:
            cap = cv2.VideoCapture(int(self.spec.options["index"]))
            if not cap.isOpened():
                self._post(loop, Event(gen, Kind.OPEN_FAILED, self._open_failure_detail()))
                return
            fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
            if not self._post(loop, Event(gen, Kind.OPENED, fps=fps if 0 < fps < 1000 else 0.0)):
                return
            while not self._abandoned(gen):
                ok, bgr = cap.read()
                capture_ns = self._clock()
                if self._abandoned(gen):
                    return  # abandoned while blocked in read(): its result no longer matters
                if not ok or bgr is None:
                    self._post(loop, Event(gen, Kind.READ_FAILED,
                                           f"read from webcam {self.spec.options['index']} failed (camera lost)"))
                    return
                image = self._transform(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
                if not self._post(loop, Decoded(gen, image, capture_ns, None)):
                    return
        except Exception as exc:  # boundary: report the reader's failure to the supervisor
            log.exception("stream %s: reader failed", self.id)
            self._post(loop, Event(gen, Kind.CRASHED, f"reader failed: {exc!r}"))
        finally:
            if cap is not None:
                cap.release()


__all__ = ["OpenCVSource"]
