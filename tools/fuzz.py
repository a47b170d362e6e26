#!/usr/bin/env python
"""Fuzz a real streamcap server with seeded hostile messages and check its invariants meanwhile.

A seeded, bounded run: hostile messages on every endpoint, invariants checked while it runs.

It starts ``python -m streamcap.cli run`` with a temporary config (view/publish/admin tokens, the
demo stream ``synthetic:shapes`` captioned by the bundled engine, a push stream ``push1``, WHIP on
loopback) and sends ``--messages N`` hostile messages, one probe at a time, spread over

  ws      ``/ws`` viewer websockets: valid, mutated, huge, deeply nested JSON, huge integers,
          bad UTF-8, binary frames, control characters in ``?streams=``
  ingest  ``/ingest/{stream}`` publisher websockets: JSON batches with bad ``fps`` (1e-300,
          5e-324, NaN, -1), bad base64, huge or odd images, binary frames
  v1      ``/v1/*``: streams added (hostile URLs with passwords, ``/etc/passwd``, odd schemes) and
          deleted, clip uploads (bad multipart boundaries, truncated or odd files), unknown
          routes, bad methods, with no, wrong and every scope of token
  whip    ``/whip/{stream}``: bad and mutated SDP, wrong content types, huge bodies
  http    every other path, and raw requests aiohttp's parser must refuse: oversized request
          lines and headers, unencoded spaces, bad versions, bad lengths

Meanwhile a thread polls ``/healthz`` (view token) and the server's RSS, a viewer websocket counts
the demo stream's captions, and every line the server writes is scanned. Invariants (each can fail):

  no_500               no HTTP answer (or websocket handshake) is 500
  no_abnormal_close    no websocket is closed by the server with 1011, or with 1000 after a client
                       message (the wire protocol answers a bad message with ``error``)
  no_traceback         no ``Traceback`` in the server's output
  no_secret            no token or password the fuzzer used appears in the server's output or in any
                       answer (bodies, headers, websocket messages, close reasons)
  no_forged_log_line   no log line forged by a control character in a request, no NUL in the log
  no_system_file       no ``/etc/passwd``-like path accepted as a stream (201)
  healthz              every poll answered 200 within ``--health-limit-s``
  captions             the demo stream's captions never paused longer than ``--caption-gap-s``
  rss                  the server's RSS never grew more than ``--max-rss-growth-mb`` over its start
  server_alive         the server still runs at the end, and SIGTERM stops it with status 0 within 15 s

Probe ``i`` of seed ``s`` depends only on ``(s, i)``: ``--only i`` replays it alone. Every finding
prints its probe, and the command line that replays it. Message generation (:func:`probe_at`,
:func:`generate`), log scanning (:func:`scan_log_line`) and the invariant check (:func:`check`)
are pure functions; the I/O driver (:func:`run`) is asyncio plus one polling thread.

Usage:
  python tools/fuzz.py                               # seed 1, 3000 messages (~1 min)
  python tools/fuzz.py --seed 7 --messages 100000 --json fuzz.json
  python tools/fuzz.py --seed 7 --only 1234          # replay one probe
  python tools/fuzz.py --exclude ingest.fps_tiny     # skip a kind (prefix) that hangs the server

Exit status: 0 when every invariant holds, 1 when one is broken, 2 when the server did not start.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import json
import os
import random
import re
import signal
import socket
import struct
import sys
import tempfile
import threading
import time
import urllib.parse
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

ENDPOINTS = ("ws", "ingest", "v1", "whip", "http")
FORGED_MARK = "FZFORGED"  # what a forged log line would start with
DEMO = "demo"
PUSH = "push1"
DEMO_URL = "synthetic:shapes?seed=1&scene_s=3"  # a new scene (and caption) every 3 s
MAX_UPLOAD_MB = 4.0
MAX_RESPONSE_BYTES = 8 << 20
LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) (\S+): ")
SYSTEM_FILES = ("/etc/passwd", "file:///etc/passwd", "/etc/shadow", "/proc/self/environ",
                "../../../../etc/passwd", "file:/etc/hostname")


# ---------------------------------------------------------------- secrets


@dataclass(frozen=True)
class Secrets:
    """The tokens and stream-URL passwords of one run. A leak is found by its marker: a run of
    letters and digits that survives any quoting (a password ``m1?m2`` leaks if either half shows)."""

    view: str
    publish: str
    admin: str
    passwords: tuple[str, ...]
    markers: tuple[tuple[str, str], ...]  # (name, marker)

    @classmethod
    def from_seed(cls, seed: int) -> Secrets:
        rng = random.Random(f"secrets:{seed}")

        def word(prefix: str) -> str:
            return prefix + "".join(rng.choice("abcdefghjkmnpqrstuvwxyz23456789") for _ in range(12))

        view, publish, admin = word("fzview"), word("fzpub"), word("fzadm")
        cores = [(word("pwa"), word("pwb")) for _ in range(6)]
        # unencoded ?, #, @, /, :, a space and %: what masking has missed
        joins = ["?", "#", "@", "/", " ", "%"]
        passwords = tuple(a + j + b for (a, b), j in zip(cores, joins, strict=True))
        markers = [("view token", view), ("publish token", publish), ("admin token", admin)]
        for k, (a, b) in enumerate(cores):
            markers += [(f"password {k}", a), (f"password {k}", b)]
        return cls(view, publish, admin, passwords, tuple(markers))

    @property
    def tokens(self) -> dict[str, str]:
        return {"view": self.view, "publish": self.publish, "admin": self.admin}

    def leaks(self, data: str | bytes) -> list[str]:
        """The names of the secrets found in ``data`` (sorted, no repeats)."""
        text = data if isinstance(data, str) else bytes(data).decode("latin-1")
        return sorted({name for name, marker in self.markers if marker in text})


# ---------------------------------------------------------------- probes


@dataclass(frozen=True)
class WsFrame:
    data: bytes
    text: bool  # a text frame (its bytes may be invalid UTF-8) or a binary one


@dataclass(frozen=True)
class Probe:
    """One hostile exchange: an HTTP request (``raw``: the exact bytes written to the socket) or a
    websocket connection to ``target`` sending ``frames``. ``messages`` counts what it sends."""

    index: int
    endpoint: str
    kind: str
    target: str = ""  # websocket: path and query
    headers: tuple[tuple[str, str], ...] = ()  # websocket handshake headers
    frames: tuple[WsFrame, ...] = ()
    raw: bytes = b""  # HTTP: the request
    timeout_s: float = 10.0
    cleanup: str = ""  # "stream:ID" (delete it if added), "whip" (delete the session if created)
    system_file: bool = False  # adds a stream whose URL names a system file

    @property
    def messages(self) -> int:
        return max(1, len(self.frames))

    def describe(self, limit: int = 300) -> str:
        if self.frames:
            shown = ", ".join(_short(f.data, 80) + ("" if f.text else " (binary)") for f in self.frames)
            head = f"WS {self.target!r} headers={list(self.headers)} frames=[{shown}]"
        else:
            head = f"HTTP {_short(self.raw, limit)}"
        return f"#{self.index} {self.kind}: {head}"[: limit + 200]


def _short(data: bytes, limit: int) -> str:
    if len(data) <= limit:
        return repr(data)
    return f"{data[:limit]!r}...(+{len(data) - limit} bytes)"


@dataclass(frozen=True)
class Corpus:
    """Media the probes are made of (built once by :func:`build_corpus`; tests pass small fakes)."""

    jpeg: bytes
    png: bytes
    video: bytes  # a short decodable clip
    sdp_offer: str
    huge_png: bytes  # a small file of a huge picture (decompression bomb)


def build_request(method: str, target: str, headers: Sequence[tuple[str, str]] = (), body: bytes = b"",
                  *, length: bool = True, version: str = "HTTP/1.1") -> bytes:
    """An HTTP/1.1 request as bytes (``Connection: close``: the answer ends at EOF)."""
    lines = [f"{method} {target} {version}", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers]
    if length and (body or method in ("POST", "PUT", "PATCH")):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape") + body


def _auth(rng: random.Random, secrets: Secrets, scope: str) -> tuple[list[tuple[str, str]], str]:
    """Headers and a query suffix for ``scope`` (or no token, a wrong one, a malformed header)."""
    choice = rng.random()
    if scope == "none":
        return [], ""
    if scope == "wrong":
        return ([("Authorization", "Bearer not-a-token-" + str(rng.randrange(10**6)))], "") if choice < 0.5 \
            else ([], "token=wrong" + str(rng.randrange(10**6)))
    if scope == "malformed":
        return [("Authorization", rng.choice(["Bearer", "Bearer  ", "Basic Zm9vOmJhcg==", "bearer " + "x" * 5000,
                                              "Bearer \x7f\x01", "Token abc"]))], ""
    token = secrets.tokens[scope]
    if choice < 0.6:
        return [("Authorization", f"Bearer {token}")], ""
    return [], "token=" + token


def _scope(rng: random.Random, wanted: str) -> str:
    """Mostly the scope an endpoint needs; sometimes none, a wrong token, a lower or higher scope."""
    r = rng.random()
    if r < 0.75:
        return wanted
    return rng.choice(["none", "wrong", "malformed", "view", "publish", "admin"])


def _with_query(path: str, *parts: str) -> str:
    q = "&".join(p for p in parts if p)
    if not q:
        return path
    return path + ("&" if "?" in path else "?") + q


_CONTROL = ["%0A" + FORGED_MARK + "%20forged%20line", "%0D%0A" + FORGED_MARK, "%00", "%1B%5B31m", "%E2%80%AE",
            "%FF%FE", "%C0%AF", "%7F", "%09", "%08"]


def _hostile_text(rng: random.Random) -> str:
    """A short string with whatever breaks parsers and logs (raw, not encoded)."""
    return rng.choice(["\n" + FORGED_MARK + " forged", "\r\n" + FORGED_MARK, "\x00", "\x1b[31m", "\u202e",
                       "\ud800", "../../etc/passwd", "a" * rng.choice([64, 300, 5000]), "%s%s%n", "{{7*7}}",
                       "' OR 1=1 --", "\u00e9\u4e2d\U0001f600", "", " ", "demo\x00x"])


def _mutate(rng: random.Random, data: bytes) -> bytes:
    """1-4 random byte edits: flip, delete, insert (often a quote, brace or control byte), repeat."""
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if not b:
            b.extend(b"{")
        pos = rng.randrange(len(b))
        op = rng.random()
        if op < 0.3:
            b[pos] ^= 1 << rng.randrange(8)
        elif op < 0.5:
            del b[pos]
        elif op < 0.8:
            b.insert(pos, rng.choice(b'"{}[],:\\\x00\n\x7f\xff0e-'))
        else:
            b[pos:pos] = b[pos:pos + rng.randint(1, 16)]
    return bytes(b)


def _nested(depth: int, opener: str = "[", closer: str = "]") -> str:
    return opener * depth + closer * depth


def _huge_int(rng: random.Random) -> str:
    return rng.choice(["9" * 5000, "-" + "1" * 4301, "1" + "0" * 400, "1e400", "-1e400", "4.9e-324",
                       "1" * 20000])


# --- /ws


def _ws_streams_param(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.35:
        return ""
    if r < 0.6:
        return "streams=" + rng.choice([DEMO, f"{DEMO},{PUSH}", PUSH, "nope", "demo,demo,demo", ",,,"])
    if r < 0.75:
        return "streams=" + rng.choice([DEMO + "%2C", ""]) + rng.choice(_CONTROL)
    return "streams=" + urllib.parse.quote(_hostile_text(rng), safe="", errors="surrogatepass")


def _ws_frame(rng: random.Random) -> tuple[str, WsFrame]:
    valid = [
        {"type": "ping"}, {"type": "ping", "v": 1}, {"type": "subscribe", "streams": None},
        {"type": "subscribe", "streams": [DEMO]}, {"type": "subscribe", "streams": [DEMO, PUSH, "nope"]},
        {"type": "ack", "id": "x-" + str(rng.randrange(100)), "by": "fuzz"},
    ]
    r = rng.random()
    if r < 0.15:
        return "ws.valid", WsFrame(json.dumps(rng.choice(valid)).encode(), True)
    if r < 0.45:
        return "ws.mutated", WsFrame(_mutate(rng, json.dumps(rng.choice(valid)).encode()), True)
    if r < 0.52:
        size = rng.choice([70 << 10, 900 << 10, (1 << 20) + 10])
        return "ws.huge", WsFrame(b'{"type":"ping","pad":"' + b"x" * size + b'"}', True)
    if r < 0.60:
        depth = rng.choice([200, 1000, 20000, 60000])
        body = rng.choice([_nested(depth), '{"type":"subscribe","streams":' + _nested(depth) + "}",
                           '{"a":' * depth + "1" + "}" * depth])
        return "ws.nested", WsFrame(body.encode(), True)
    if r < 0.67:
        return "ws.huge_int", WsFrame(('{"type":"ping","v":' + _huge_int(rng) + "}").encode(), True)
    if r < 0.72:
        return "ws.bad_utf8", WsFrame(rng.choice([b'{"type":"ping\xff"}', b"\xed\xa0\x80", b"\xc3\x28",
                                                   b'{"type":"subscribe","streams":["\xfe"]}']), True)
    if r < 0.78:
        return "ws.binary", WsFrame(rng.randbytes(rng.choice([0, 1, 16, 4096])), False)
    if r < 0.85:
        return "ws.control", WsFrame(json.dumps({"type": "subscribe", "streams": [_hostile_text(rng)]}).encode(),
                                     True)
    other = rng.choice(['{"type":"ping","v":NaN}', '{"type":"ping","v":Infinity}', '{"type":"ping","type":"ping"}',
                        '{"type":5}', '{"type":"hello"}', '[]', '"ping"', 'null', '123', '{}',
                        '{"type":"subscribe","streams":"demo"}', '{"type":"ack","id":' + '"x' * 3 + '"}',
                        '{"type":"ack","id":"a","by":"' + "b" * 300 + '"}', '{"type":"ping","v":1.0}',
                        '{"type":"ping","v":true}', '{"type":"subscribe","streams":[' + '"a",' * 5000 + '"a"]}'])
    return "ws.schema", WsFrame(other.encode(), True)


def _ws_probe(rng: random.Random, index: int, secrets: Secrets) -> Probe:
    scope = _scope(rng, "view")
    headers, token_q = _auth(rng, secrets, scope)
    target = _with_query("/ws", _ws_streams_param(rng), token_q)
    frames, kinds = [], []
    for _ in range(rng.randint(1, 3)):
        kind, frame = _ws_frame(rng)
        kinds.append(kind)
        frames.append(frame)
    kind = kinds[0] if scope == "view" else f"ws.auth_{scope}"
    if scope == "view" and "streams=" in target and any(c in target for c in ("%0", "%1", "%7F", "%E2", "%FF")):
        kind = "ws.streams_control"
    return Probe(index, "ws", kind, target=target, headers=tuple(headers), frames=tuple(frames))


# --- /ingest


TINY_FPS = ["1e-300", "5e-324", "1e-30", "2.2250738585072014e-308"]
BAD_FPS = ["NaN", "-1", "0", "-0.0", "1e308", "Infinity", '"10"', "true", "null", "120.00000001", "1e-7", "[]"]


def _ingest_stream(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.7:
        return PUSH
    if r < 0.85:
        return rng.choice(["fz-push", "clip-1", "clip-2"])
    return rng.choice([DEMO, "a" * 300, "..%2F..%2Fx", "%00", "%E2%98%83", "x%0A" + FORGED_MARK, ".", "-"])


def _ingest_frame(rng: random.Random, corpus: Corpus) -> tuple[str, WsFrame]:
    b64 = base64.b64encode(corpus.jpeg).decode()

    def batch(frames: list[str], fps: str = "10", extra: str = "") -> bytes:
        return ('{"frames":[' + ",".join(f'"{f}"' for f in frames) + '],"fps":' + fps + extra + "}").encode()

    r = rng.random()
    if r < 0.15:
        return "ingest.valid", rng.choice([WsFrame(corpus.jpeg, False), WsFrame(corpus.png, False),
                                          WsFrame(batch([b64] * rng.randint(1, 4)), True)])
    if r < 0.20:
        return "ingest.fps_tiny", WsFrame(batch([b64], rng.choice(TINY_FPS)), True)
    if r < 0.30:
        return "ingest.fps_bad", WsFrame(batch([b64], rng.choice(BAD_FPS)), True)
    if r < 0.38:
        ml = rng.choice(["0", "-1", "1" + "0" * 30, "1.5", '"x"', "null", "100000", _huge_int(rng)])
        return "ingest.max_length", WsFrame(batch([b64], "10", ',"max_length":' + ml), True)
    if r < 0.48:
        bad = rng.choice(["###", "AAA", "A", "=", b64[:-7], "data:image/jpeg;base64," + b64, b64 + "\\n",
                          "\\u0000", base64.b64encode(b"not an image").decode(), ""])
        return "ingest.bad_base64", WsFrame(batch([bad]), True)
    if r < 0.587:
        data = rng.choice([corpus.jpeg[: rng.randrange(1, len(corpus.jpeg))], _mutate(rng, corpus.jpeg),
                           b"\xff\xd8\xff" + b"\x00" * 500, b"\x89PNG\r\n\x1a\n" + rng.randbytes(64), b"",
                           rng.randbytes(rng.choice([1, 100, 10_000])), _png_header_only(rng)])
        return "ingest.odd_image", WsFrame(data, False)
    if r < 0.59:  # rare: the server may decode it (1.2 GB)
        return "ingest.huge_image", WsFrame(corpus.huge_png, False)
    if r < 0.66:
        return "ingest.mutated", WsFrame(_mutate(rng, batch([b64])), True)
    if r < 0.72:
        depth = rng.choice([1000, 20000, 60000])
        return "ingest.nested", WsFrame(('{"frames":' + _nested(depth) + "}").encode(), True)
    if r < 0.77:
        return "ingest.huge_int", WsFrame(batch([b64], _huge_int(rng)), True)
    if r < 0.80:
        return "ingest.bad_utf8", WsFrame(b'{"frames":["\xff\xfe"],"fps":10}', True)
    if r < 0.84:
        return "ingest.too_many", WsFrame(batch([b64] * rng.choice([65, 200])), True)
    other = rng.choice(['{"frames":"x"}', '{"frames":[1,2]}', "{}", "[]", '{"type":"ping"}', "null",
                        '{"frames":[],"fps":10}', '{"frames":["' + b64 + '"],"extra":1}', "{not json",
                        '{"frames":["' + b64 + '"],"frames":[]}', '"' + "x" * 70000 + '"'])
    return "ingest.schema", WsFrame(other.encode(), True)


def _png_header_only(rng: random.Random) -> bytes:
    """A PNG signature and IHDR claiming a big picture, with no pixel data."""
    w, h = rng.choice([(65535, 65535), (1, 10**6), (30000, 30000)])
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IEND", b"")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _ingest_probe(rng: random.Random, index: int, corpus: Corpus, secrets: Secrets) -> Probe:
    scope = _scope(rng, "publish")
    headers, token_q = _auth(rng, secrets, scope)
    stream = _ingest_stream(rng)
    target = _with_query(f"/ingest/{stream}", token_q)
    frames, kinds = [], []
    for _ in range(rng.randint(1, 3)):
        kind, frame = _ingest_frame(rng, corpus)
        kinds.append(kind)
        frames.append(frame)
    # the rare kinds name the probe wherever they are in it (so --exclude can skip them)
    rare = [k for k in kinds if k in ("ingest.fps_tiny", "ingest.huge_image")]
    kind = rare[0] if rare else kinds[0]
    if scope != "publish":
        kind = f"ingest.auth_{scope}" if not rare else kind
    return Probe(index, "ingest", kind, target=target, headers=tuple(headers), frames=tuple(frames),
                 timeout_s=30.0 if "ingest.huge_image" in kinds else 10.0)


# --- /v1


def _hostile_url(rng: random.Random, secrets: Secrets) -> tuple[str, str, bool]:
    """(kind, url, names a system file)."""
    pw = rng.choice(secrets.passwords)
    r = rng.random()
    if r < 0.45:
        base = rng.choice([f"rtsp://user:{pw}@127.0.0.1:9/x", f"http://user:{pw}@127.0.0.1:9/x.mp4",
                           f"rtsps://user:{pw}@127.0.0.1:9/x", f"rtsp:/user:{pw}@127.0.0.1:9/x",
                           f"rtsp//user:{pw}@127.0.0.1:9/x", f"rtmp://user:{pw}@127.0.0.1:9/x",
                           f"rtsp://user:{pw}@[::1:9/x", f"rtsp://:{pw}@127.0.0.1:9", f"rtsp://{pw}@127.0.0.1:9/",
                           f"RTSP://user:{pw}@127.0.0.1:9/x", f"rtsp://user:{pw}@127.0.0.1:99999/x",
                           f"rtsp://user:{urllib.parse.quote(pw, safe='')}@127.0.0.1:9/x?password={pw}"])
        wrap = rng.choice(["{}", " {}", "\n{}", "{}\n", "\t{} ", "{}#frag", "\u00a0{}"])
        return "v1.add_stream.password", wrap.format(base), False
    if r < 0.6:
        return "v1.add_stream.system_file", rng.choice(SYSTEM_FILES), True
    if r < 0.65:
        return "v1.add_stream.tiny_fps", rng.choice(["synthetic:shapes?fps=1e-300", "synthetic:shapes?fps=5e-324"]), \
            False
    url = rng.choice(["synthetic:shapes?size=32x32&fps=2", "synthetic:shapes?fps=nan", "synthetic:shapes?size=0x0",
                      "synthetic:shapes?seed=99999999999999999999", "synthetic:shapes?bogus=1", "synthetic:",
                      "push:", "push:x", "webcam:99", "webcam:-1", "javascript:alert(1)", "ftp://127.0.0.1/x",
                      "gopher://127.0.0.1:9/", "data:video/mp4;base64,AAAA", "", " ", "\x00", "file://",
                      "/nonexistent/" + "a" * 300, "http://" + "a" * 10000, "rtsp://127.0.0.1:9/\x00",
                      "\u00e9://x", "/dev/zero", "/dev/urandom", "/proc/self/mem"])
    return "v1.add_stream.odd_url", url, url.startswith(("/dev/", "/proc/"))


def _stream_id(rng: random.Random, index: int) -> str:
    r = rng.random()
    if r < 0.8:
        return f"fz{index}"
    return rng.choice(["../x", "", "a" * 200, DEMO, "clip-1", "x\x00", "x\ny", "Ω", "x y", ".", "-"])


def _v1_probe(rng: random.Random, index: int, corpus: Corpus, secrets: Secrets) -> Probe:
    r = rng.random()
    if r < 0.40:
        return _v1_add_stream(rng, index, secrets)
    if r < 0.50:
        scope = _scope(rng, "admin")
        headers, q = _auth(rng, secrets, scope)
        sid = rng.choice(["nope", "fz-none", "..", "%2E%2E", "a" * 300, "%00", "%0A" + FORGED_MARK, PUSH, "clip-1"])
        if sid == PUSH and scope != "admin":
            sid = "nope"
        return Probe(index, "v1", "v1.delete_stream", raw=build_request("DELETE", _with_query(f"/v1/streams/{sid}", q),
                                                                        headers))
    if r < 0.72:
        return _v1_captions(rng, index, corpus, secrets)
    scope = _scope(rng, "view")
    headers, q = _auth(rng, secrets, scope)
    since = rng.choice(["0", "-1", "nan", "1e400", "x", "", "9" * 5000])
    method, path, body, kind = rng.choice([
        ("GET", "/v1/streams", b"", "v1.list"),
        ("GET", f"/v1/streams/{DEMO}/chapters?since={since}", b"", "v1.chapters"),
        ("GET", f"/v1/streams/{rng.choice([DEMO, 'nope', PUSH])}/subtitles.m3u8", b"", "v1.subtitles"),
        ("GET", f"/v1/streams/{DEMO}/subtitles/{rng.choice(['0', '1', '99999999999999999999', '9' * 5000])}.vtt", b"",
         "v1.subtitles"),
        ("GET", "/v1/alerts", b"", "v1.alerts"),
        ("POST", f"/v1/alerts/{rng.choice(['x', '%00', 'a' * 300])}/ack",
         rng.choice([b"", b"{}", b'{"by":"' + b"x" * 300 + b'"}', b"[", b'{"by":' + b"9" * 5000 + b"}"]), "v1.ack"),
        (rng.choice(["PUT", "PATCH", "TRACE", "FOO", "OPTIONS", "HEAD"]), "/v1/streams", b"", "v1.bad_method"),
        ("GET", "/v1/" + rng.choice(["nothing", "streams/", "streams//x", "%2e%2e/%2e%2e/etc/passwd", "x" * 3000]),
         b"", "v1.unknown"),
    ])
    return Probe(index, "v1", kind if scope == "view" else f"v1.auth_{scope}",
                 raw=build_request(method, _with_query(path, q), headers + [("Content-Type", "application/json")]
                                   if body else headers, body))


def _v1_add_stream(rng: random.Random, index: int, secrets: Secrets) -> Probe:
    scope = _scope(rng, "admin")
    headers, q = _auth(rng, secrets, scope)
    kind, url, system = _hostile_url(rng, secrets)
    sid = _stream_id(rng, index)
    shape = rng.random()
    if shape < 0.8:
        body = json.dumps({"id": sid, "url": url}).encode()
    elif shape < 0.85:
        body = _mutate(rng, json.dumps({"id": sid, "url": url}).encode())
    elif shape < 0.9:
        body = ('{"id":"' + sid + '","url":' + _nested(rng.choice([1000, 50000])) + "}").encode()
    elif shape < 0.95:
        body = ('{"id":' + _huge_int(rng) + ',"url":"synthetic:shapes"}').encode()
    else:
        body = json.dumps({"id": sid, "url": url, "windows": {"stride_s": rng.choice([1e-300, -1, 0])}}).encode()
    ctype = rng.choice(["application/json"] * 8 + ["text/plain", "application/json; charset=latin-1",
                                                   "multipart/form-data"])
    cleanup = f"stream:{sid}" if sid.startswith("fz") else ""
    if scope != "admin":
        kind = f"v1.auth_{scope}"
    return Probe(index, "v1", kind, raw=build_request("POST", _with_query("/v1/streams", q),
                                                      headers + [("Content-Type", ctype)], body),
                 cleanup=cleanup, system_file=system and scope == "admin" and shape < 0.8)


def _multipart(rng: random.Random, payload: bytes, boundary: str, *, filename: str = "clip.mp4",
               close: bool = True) -> bytes:
    b = boundary.encode("utf-8", "surrogateescape")
    parts = [b"--" + b + b"\r\n",
             f'Content-Disposition: form-data; name="video"; filename="{filename}"\r\n'.encode(
                 "utf-8", "surrogateescape"),
             b"Content-Type: video/mp4\r\n\r\n", payload, b"\r\n",
             b"--" + b + b"\r\n", b'Content-Disposition: form-data; name="max_length"\r\n\r\n',
             rng.choice([b"20", b"0", b"-5", b"x", b"9" * 5000]), b"\r\n"]
    if close:
        parts.append(b"--" + b + b"--\r\n")
    return b"".join(parts)


def _v1_captions(rng: random.Random, index: int, corpus: Corpus, secrets: Secrets) -> Probe:
    scope = _scope(rng, "publish")
    headers, q = _auth(rng, secrets, scope)
    video = corpus.video
    payload = rng.choice([video[: rng.randrange(1, len(video))], video[: rng.randrange(1, 64)], b"",
                          _mutate(rng, video), b"hello, I am text\n" * 20, corpus.jpeg, rng.randbytes(2000),
                          video[: len(video) // 2] + video])
    fmt = rng.choice(["", "", "?format=vtt", "?format=srt", "?format=jsonl", "?format=doc", "?format=%00",
                      "?format=" + "x" * 3000])
    path = _with_query("/v1/captions" + fmt, q)
    r = rng.random()
    if r < 0.35:
        body = json.dumps({"video": base64.b64encode(payload).decode(),
                           "max_length": rng.choice([20, 0, -1, 10**30, "x", None])}).encode()
        kind, ctype = "v1.captions_json", "application/json"
    elif r < 0.45:
        body = rng.choice([b'{"video":"###"}', b"{not json", b'{"video":' + b"9" * 5000 + b"}",
                           b'{"video":' + _nested(20000).encode() + b"}", b"[]", b'{"video":null}'])
        kind, ctype = "v1.captions_bad_json", "application/json"
    elif r < 0.75:
        boundary = "fzb" + str(rng.randrange(10**6))
        filename = rng.choice(["clip.mp4", "../../etc/passwd", "x\x00.mp4", "a" * 300 + ".mp4", "clip\n.mp4"])
        body = _multipart(rng, payload, boundary, filename=filename, close=rng.random() < 0.8)
        kind, ctype = "v1.captions_multipart", f"multipart/form-data; boundary={boundary}"
    else:
        boundary = "fzb" + str(rng.randrange(10**6))
        body = _multipart(rng, payload, boundary)
        ctype = rng.choice(["multipart/form-data; boundary=other", "multipart/form-data",
                            'multipart/form-data; boundary=""', "multipart/form-data; boundary=" + "b" * 100,
                            "multipart/form-data; boundary=a\x7fb", "multipart/mixed; boundary=" + boundary,
                            "video/mp4", "application/octet-stream", "text/plain"])
        if rng.random() < 0.3:
            body = body[: rng.randrange(1, len(body))]
        kind = "v1.captions_bad_boundary"
    if rng.random() < 0.05:
        body = b"x" * int((MAX_UPLOAD_MB + 1) * (1 << 20))
        kind = "v1.captions_huge"
    if scope != "publish":
        kind = f"v1.auth_{scope}"
    return Probe(index, "v1", kind, raw=build_request("POST", path, headers + [("Content-Type", ctype)], body),
                 timeout_s=60.0)


# --- /whip


def _whip_probe(rng: random.Random, index: int, corpus: Corpus, secrets: Secrets) -> Probe:
    scope = _scope(rng, "publish")
    headers, q = _auth(rng, secrets, scope)
    stream = rng.choice([PUSH] * 6 + ["fz-whip", DEMO, "a" * 300, "%00", "x%0A" + FORGED_MARK])
    offer = corpus.sdp_offer.encode()
    ctype = "application/sdp"
    cleanup = ""
    r = rng.random()
    if r < 0.08:
        kind, body, cleanup = "whip.valid", offer, "whip"
    elif r < 0.45:
        kind, body = "whip.mutated", _mutate(rng, offer)
        cleanup = "whip"
    elif r < 0.65:
        kind = "whip.bad_sdp"
        body = rng.choice([b"hello there", b"v=0", b"v=0\r\ns=-\r\nm=audio 9 RTP/AVP 0\r\n", b"\xff\xfe\x00garbage",
                           b"", offer.replace(b"a=ice-ufrag", b"a=x"), offer.replace(b"a=fingerprint", b"a=x"),
                           offer.replace(b"m=video 9", b"m=video " + b"9" * 5000),
                           offer + b"a=candidate:" + b"x" * 5000 + b"\r\n", offer.replace(b"\r\n", b"\n"),
                           offer.replace(b"VP8/90000", b"VP8/0"), offer * 50,
                           offer.replace(b"IN IP4 127.0.0.1", b"IN IP4 999.1.1.1")])
    elif r < 0.8:
        kind, body = "whip.content_type", offer
        ctype = rng.choice(["text/plain", "application/json", "", "application/sdp; charset=\x01",
                            "application/sdp" + " " * 5000, "multipart/form-data; boundary=x"])
    elif r < 0.88:
        kind, body = "whip.huge", b"v=0\r\n" + b" " * rng.choice([(1 << 20) + 1, 2 << 20])
    else:
        kind = "whip.session"
        method = rng.choice(["DELETE", "PATCH", "OPTIONS", "GET", "PUT"])
        path = rng.choice([f"/whip/{stream}/nope", f"/whip/{stream}/" + "a" * 300, f"/whip/{stream}/%00",
                           f"/whip/{stream}"])
        return Probe(index, "whip", kind if scope == "publish" else f"whip.auth_{scope}",
                     raw=build_request(method, _with_query(path, q), headers, b"a=candidate:1" if method == "PATCH"
                                       else b""))
    if scope != "publish":
        kind = f"whip.auth_{scope}"
    hdrs = headers + ([("Content-Type", ctype)] if ctype else [])
    return Probe(index, "whip", kind, raw=build_request("POST", _with_query(f"/whip/{stream}", q), hdrs, body),
                 cleanup=cleanup, timeout_s=20.0)


# --- other HTTP, and raw requests


def _http_probe(rng: random.Random, index: int, secrets: Secrets) -> Probe:
    r = rng.random()
    admin_q = "token=" + secrets.admin
    if r < 0.35:
        scope = _scope(rng, "view")
        headers, q = _auth(rng, secrets, scope)
        hostile = urllib.parse.quote(_hostile_text(rng), errors="surrogatepass")
        path = rng.choice(["/healthz", "/metrics", "/", "/overlay?stream=" + hostile,
                           "/dashboard", "/publish?stream=" + rng.choice(_CONTROL), "/overlay?stream=demo&size=1e400",
                           "/../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/%00", "/static/../../pyproject.toml",
                           "/" + "a" * 3000, "/ws", "/ingest/x", "//", "/healthz/", "/favicon.ico"])
        method = rng.choice(["GET"] * 6 + ["POST", "DELETE", "HEAD", "OPTIONS", "BREW"])
        return Probe(index, "http", "http.path" if scope == "view" else f"http.auth_{scope}",
                     raw=build_request(method, _with_query(path, q), headers))
    if r < 0.45:  # a request line over aiohttp's limit (8190), with a token in it
        return Probe(index, "http", "http.long_line",
                     raw=build_request("GET", "/healthz?" + admin_q + "&pad=" + "a" * rng.choice([8200, 9000, 20000])))
    if r < 0.55:  # an unencoded space (or control byte) in the target
        junk = rng.choice([" x", "\x00", "\x7f", "\t", "\x1b[2J"])
        return Probe(index, "http", "http.bad_target",
                     raw=build_request("GET", f"/v1/streams?{admin_q}&x=a{junk}b"))
    if r < 0.65:
        headers = rng.choice([[("X-Big", "h" * 9000)], [("Cookie", "c" * 20000)],
                              [(f"X-H{i}", "v") for i in range(200)],
                              [("Authorization", "Bearer " + secrets.admin + "x" * 9000)],
                              [("X-\x00", "v")], [("Bad Header", "v")], [("X-Fold", "a\r\n folded")]])
        return Probe(index, "http", "http.big_header", raw=build_request("GET", "/healthz?" + admin_q, headers))
    if r < 0.75:
        raw = rng.choice([
            b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n", b"GET /healthz\r\n\r\n", b"\x16\x03\x01\x02\x00\x01\x00",
            b"GARBAGE\r\n\r\n", b"GET /healthz HTTP/1.1\r\n\r\n", b"GET http://user:" + secrets.passwords[0].encode()
            + b"@127.0.0.1/healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\nConnection: close\r\n\r\n",
            b"POST /v1/streams HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\nConnection: close\r\n\r\n",
            b"POST /v1/streams HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\nConnection: close\r\n\r\n",
            b"POST /v1/streams HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n"
            b"Connection: close\r\n\r\n",
            b"POST /v1/captions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\n",
            b"POST /v1/captions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n"
            b"Connection: close\r\n\r\n0\r\n\r\n",
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: bad\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n",
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Version: 99\r\n\r\n",
            b"\r\n\r\n\r\n", b"GET / HTTP/1.1\r\nHost: \xff\xfe\r\nConnection: close\r\n\r\n",
        ])
        return Probe(index, "http", "http.malformed", raw=raw, timeout_s=2.0)
    # a body shorter than its Content-Length: the server waits, the client gives up
    if r < 0.765:
        raw = build_request("POST", "/v1/captions", [("Authorization", "Bearer " + secrets.publish),
                                                    ("Content-Type", "application/json"),
                                                    ("Content-Length", "100000")], b'{"video":"AAAA', length=False)
        return Probe(index, "http", "http.short_body", raw=raw, timeout_s=1.0)
    scope = _scope(rng, "view")
    headers, q = _auth(rng, secrets, scope)
    return Probe(index, "http", "http.token_in_query" if scope == "view" else f"http.auth_{scope}",
                 raw=build_request("GET", _with_query("/overlay?stream=demo", q), headers))


ENDPOINT_WEIGHTS = (("ws", 0.30), ("ingest", 0.25), ("v1", 0.25), ("whip", 0.08), ("http", 0.12))


def probe_at(seed: int, index: int, corpus: Corpus, secrets: Secrets) -> Probe:
    """Probe ``index`` of ``seed``: depends on nothing else (so one can be replayed alone)."""
    rng = random.Random(f"{seed}:{index}")
    r, acc = rng.random(), 0.0
    endpoint = ENDPOINT_WEIGHTS[-1][0]
    for name, weight in ENDPOINT_WEIGHTS:
        acc += weight
        if r < acc:
            endpoint = name
            break
    if endpoint == "ws":
        return _ws_probe(rng, index, secrets)
    if endpoint == "ingest":
        return _ingest_probe(rng, index, corpus, secrets)
    if endpoint == "v1":
        return _v1_probe(rng, index, corpus, secrets)
    if endpoint == "whip":
        return _whip_probe(rng, index, corpus, secrets)
    return _http_probe(rng, index, secrets)


def excluded(kind: str, exclude: Sequence[str]) -> bool:
    """Whether ``kind`` starts with one of the ``exclude`` prefixes (``whip`` skips every whip.* kind)."""
    return any(kind.startswith(e) for e in exclude)


def generate(seed: int, messages: int, corpus: Corpus, secrets: Secrets, *, exclude: Sequence[str] = (),
             only: Sequence[int] = ()) -> Iterator[Probe]:
    """Probes until ``messages`` messages are sent (or just the probes ``only``); kinds in
    ``exclude`` (prefixes) are skipped without renumbering the others."""
    if only:
        for i in only:
            yield probe_at(seed, i, corpus, secrets)
        return
    sent, index = 0, 0
    while sent < messages:
        probe = probe_at(seed, index, corpus, secrets)
        index += 1
        if excluded(probe.kind, exclude):
            continue
        sent += probe.messages
        yield probe


# ---------------------------------------------------------------- outcomes and invariants


@dataclass
class EndpointTally:
    probes: int = 0
    messages: int = 0
    status: Counter = field(default_factory=Counter)  # "2xx", "4xx", "5xx", "none" (no answer)
    statuses: Counter = field(default_factory=Counter)  # exact codes
    status_500: int = 0
    closes: Counter = field(default_factory=Counter)  # server-initiated close codes ("1006": no close frame)
    closes_by_kind: Counter = field(default_factory=Counter)  # "CODE KIND"
    abnormal_closes: int = 0
    unanswered: int = 0  # a websocket message with no answer in time
    secret_responses: int = 0
    kinds: Counter = field(default_factory=Counter)
    seconds: float = 0.0  # time spent in this endpoint's probes
    slowest_s: float = 0.0
    slowest_probe: int | None = None


@dataclass(frozen=True)
class Finding:
    invariant: str
    probe: int | None  # the probe in flight
    detail: str
    previous: int | None = None  # for a log line: the probe just before may have caused it


@dataclass
class LogTally:
    lines: int = 0
    tracebacks: int = 0
    errors: Counter = field(default_factory=Counter)  # "logger: message start" -> count
    warnings: int = 0
    secret_lines: int = 0
    forged_lines: int = 0
    nul_lines: int = 0


@dataclass
class Report:
    seed: int
    messages_requested: int
    messages_sent: int = 0
    probes_sent: int = 0
    wall_s: float = 0.0
    aborted: str = ""  # why the run stopped early
    endpoints: dict[str, EndpointTally] = field(default_factory=lambda: {e: EndpointTally() for e in ENDPOINTS})
    log: LogTally = field(default_factory=LogTally)
    health_polls: int = 0
    health_failures: int = 0
    health_max_s: float = 0.0
    captions: int = 0
    caption_max_gap_s: float = 0.0
    caption_intervals: list[int] = field(default_factory=list)
    fuzz_span_s: float = 0.0  # from the first probe to the last answer
    rss_start_mb: float = 0.0
    rss_peak_mb: float = 0.0
    threads_peak: int = 0
    server_alive: bool = True
    exit_code: int | None = None
    exit_s: float | None = None
    findings: list[Finding] = field(default_factory=list)

    def to_json(self) -> dict:
        def plain(obj: object) -> object:  # asdict would rebuild a Counter from its items
            if dataclasses.is_dataclass(obj):
                return {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
            if isinstance(obj, dict):
                return {str(k): plain(v) for k, v in obj.items()}
            if isinstance(obj, (list, tuple)):
                return [plain(v) for v in obj]
            return obj

        return plain(self)


@dataclass(frozen=True)
class Limits:
    health_limit_s: float = 5.0
    caption_gap_s: float = 10.0
    max_rss_growth_mb: float = 1000.0
    exit_limit_s: float = 15.0


INVARIANTS = ("no_500", "no_abnormal_close", "no_traceback", "no_secret", "no_forged_log_line", "no_system_file",
              "healthz", "captions", "rss", "server_alive")


def http_status(response: bytes) -> int | None:
    """The status code of a raw HTTP answer (None: nothing, or not HTTP)."""
    m = re.match(rb"HTTP/1\.[01] (\d{3})", response)
    return int(m[1]) if m else None


def response_complete(data: bytes) -> bool:
    """Whether ``data`` holds a whole HTTP answer (by Content-Length or the last chunk), so the
    client need not wait for the server to close a kept-alive connection."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    status = http_status(head)
    if status is not None and (100 <= status < 200 or status in (204, 304)):
        return True
    m = re.search(rb"\r\ncontent-length:\s*(\d+)", head, re.I)
    if m:
        return len(body) >= int(m[1])
    if re.search(rb"\r\ntransfer-encoding:[^\r]*chunked", head, re.I):
        return body.endswith(b"0\r\n\r\n")
    return False


def status_class(status: int | None) -> str:
    return "none" if status is None else f"{status // 100}xx"


def abnormal_close(code: int | None, after_client_message: bool) -> bool:
    """1011 (internal error) always; 1000 when the server closed after a client message (it should
    have answered ``error``, or closed with a documented code)."""
    return code == 1011 or (code == 1000 and after_client_message)


@dataclass(frozen=True)
class LogLine:
    text: str
    probe: int | None  # the probe in flight when it was read
    previous: int | None = None  # the probe before it (a server may log a probe's end after it)


def scan_log_line(text: str, secrets: Secrets) -> dict[str, object]:
    """What one line of server output shows: level, logger, traceback start, leaked secrets, a
    forged line (starts with the fuzzer's mark), a NUL."""
    m = LOG_RECORD.match(text)
    return {
        "level": m[1] if m else None,
        "logger": m[2] if m else None,
        "traceback": text.startswith("Traceback (most recent call last)"),
        "secrets": secrets.leaks(text),
        "forged": text.lstrip("\r").startswith(FORGED_MARK),
        "nul": "\x00" in text,
    }


def tally_log(lines: Iterable[LogLine], secrets: Secrets, report: Report) -> None:
    """Count what the server wrote; a traceback's finding names the record that logged it and the
    exception it ends with."""
    last_record = ""
    trace: tuple[LogLine, str, str] | None = None  # (its first line, the record before, the exception line)

    def close_trace() -> None:
        nonlocal trace
        if trace is not None:
            first, record_line, exc = trace
            report.findings.append(Finding("no_traceback", first.probe,
                                           f"{exc[:160]!r} after {record_line[:160]!r}", first.previous))
            trace = None

    for line in lines:
        seen = scan_log_line(line.text, secrets)
        log = report.log
        log.lines += 1
        if seen["level"] is not None:
            close_trace()
            last_record = line.text[24:]
        elif trace is not None and line.text and not line.text[0].isspace():
            trace = (trace[0], trace[1], line.text)
        if seen["traceback"]:
            close_trace()
            log.tracebacks += 1
            trace = (line, last_record, "")
        if seen["level"] in ("ERROR", "CRITICAL"):
            msg = line.text[LOG_RECORD.match(line.text).end():]
            log.errors[f"{seen['logger']}: {msg[:90]}"] += 1
        elif seen["level"] == "WARNING":
            log.warnings += 1
        if seen["secrets"]:
            log.secret_lines += 1
            report.findings.append(Finding("no_secret", line.probe,
                                           f"server log shows {', '.join(seen['secrets'])}: {line.text[:240]!r}",
                                           line.previous))
        if seen["forged"]:
            log.forged_lines += 1
            report.findings.append(Finding("no_forged_log_line", line.probe, f"forged log line {line.text[:200]!r}",
                                           line.previous))
        if seen["nul"]:
            log.nul_lines += 1
            report.findings.append(Finding("no_forged_log_line", line.probe, f"NUL in log line {line.text[:200]!r}",
                                           line.previous))
    close_trace()


def suspects_since(started: Sequence[tuple[int, float]], last_ok: float) -> list[int]:
    """The probes that may have hung the server: the one in flight at its last answer, and every
    one started since."""
    before = [i for i, t in started if t <= last_ok]
    return before[-1:] + [i for i, t in started if t > last_ok]


def caption_gaps(times: Sequence[float], start: float, end: float) -> float:
    """The longest stretch of ``[start, end]`` without a caption."""
    points = [start] + sorted(t for t in times if start <= t <= end) + [end]
    return max(b - a for a, b in zip(points, points[1:])) if end > start else 0.0


def interval_counts(times: Sequence[float], start: float, end: float, interval_s: float) -> list[int]:
    """Captions in each whole ``interval_s`` of ``[start, end]`` (a last partial interval is left out)."""
    n = int((end - start) // interval_s)
    counts = [0] * n
    for t in times:
        k = int((t - start) // interval_s)
        if 0 <= k < n:
            counts[k] += 1
    return counts


def check(report: Report, limits: Limits) -> dict[str, str]:
    """Each broken invariant with a one-line reason ({} when all hold)."""
    broken: dict[str, str] = {}
    n500 = {e: t.status_500 for e, t in report.endpoints.items() if t.status_500}
    if n500:
        broken["no_500"] = f"500 answers: {n500}"
    closes = {e: t.abnormal_closes for e, t in report.endpoints.items() if t.abnormal_closes}
    if closes:
        broken["no_abnormal_close"] = f"websockets closed with 1011, or 1000 after a message: {closes}"
    if report.log.tracebacks:
        broken["no_traceback"] = f"{report.log.tracebacks} tracebacks in the server log"
    leaks = {e: t.secret_responses for e, t in report.endpoints.items() if t.secret_responses}
    if report.log.secret_lines or leaks:
        broken["no_secret"] = f"{report.log.secret_lines} log lines and answers {leaks} show a secret"
    if report.log.forged_lines or report.log.nul_lines:
        broken["no_forged_log_line"] = (f"{report.log.forged_lines} forged log lines, "
                                        f"{report.log.nul_lines} with a NUL")
    accepted = [f for f in report.findings if f.invariant == "no_system_file"]
    if accepted:
        broken["no_system_file"] = f"{len(accepted)} system-file stream URLs accepted (201)"
    if report.health_polls == 0 or report.health_failures or report.health_max_s > limits.health_limit_s:
        broken["healthz"] = (f"{report.health_failures} of {report.health_polls} polls failed, slowest "
                             f"{report.health_max_s:.2f} s (limit {limits.health_limit_s:g} s)")
    if report.caption_max_gap_s > limits.caption_gap_s or (report.captions == 0
                                                           and report.fuzz_span_s >= limits.caption_gap_s):
        broken["captions"] = (f"{report.captions} demo captions, longest pause {report.caption_max_gap_s:.1f} s "
                              f"(limit {limits.caption_gap_s:g} s)")
    growth = report.rss_peak_mb - report.rss_start_mb
    if growth > limits.max_rss_growth_mb:
        broken["rss"] = (f"RSS {report.rss_start_mb:.0f} -> peak {report.rss_peak_mb:.0f} MB "
                         f"(+{growth:.0f} MB, limit {limits.max_rss_growth_mb:g})")
    if not report.server_alive or report.exit_code != 0 or (report.exit_s or 0) > limits.exit_limit_s:
        broken["server_alive"] = (f"alive at the end: {report.server_alive}; after SIGTERM exit status "
                                  f"{report.exit_code} in {report.exit_s} s")
    if report.aborted:
        broken.setdefault("healthz", report.aborted)
    return broken


# ---------------------------------------------------------------- corpus (built once per run)


SDP_OFFER = (
    "v=0\r\no=- 4004956287 4004956287 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n"
    "a=msid-semantic:WMS *\r\nm=video 9 UDP/TLS/RTP/SAVPF 97 99\r\nc=IN IP4 127.0.0.1\r\na=sendrecv\r\n"
    "a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid\r\na=mid:0\r\n"
    "a=msid:aaef5acc-065c-42f3-9987-a9b3b1901599 ae6c7072-7093-4ac0-9f8c-cd27fc70cf71\r\n"
    "a=rtcp:9 IN IP4 0.0.0.0\r\na=rtcp-mux\r\na=ssrc:2543572066 cname:3631c5b3-8581-432a-a04f-afedc56d23bd\r\n"
    "a=rtpmap:97 VP8/90000\r\na=rtcp-fb:97 nack\r\na=rtcp-fb:97 nack pli\r\n"
    "a=rtpmap:99 H264/90000\r\na=fmtp:99 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n"
    "a=candidate:f957a2332b1715da3b0ef8ba684454eb 1 udp 2130706431 127.0.0.1 9 typ host\r\n"
    "a=end-of-candidates\r\na=ice-ufrag:57V8\r\na=ice-pwd:orON5BqbGVAx0HKOPLQglT\r\n"
    "a=fingerprint:sha-256 65:F8:88:55:B7:F0:7F:AF:C6:62:38:FB:0C:C5:14:2C:21:F4:53:BA:6C:10:AC:E5:73:E0:7B:6D:"
    "38:B7:4A:29\r\na=setup:actpass\r\n")


def huge_png(width: int = 20000, height: int = 20000) -> bytes:
    """A grey PNG of ``width`` x ``height`` black pixels: ~0.4 MB on the wire, 1.2 GB decoded as BGR."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    comp = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte + pixels
    chunks = [comp.compress(row) for _ in range(height)]
    data = b"".join(chunks) + comp.flush()
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", data) + _png_chunk(b"IEND", b"")


def build_corpus(workdir: Path) -> Corpus:
    import cv2

    from streamcap.demo.synthetic import Storyline

    story = Storyline(seed=3, scene_s=1000.0, aspect=4 / 3)
    picture = cv2.cvtColor(story.render(0.0, 64, 48, 0), cv2.COLOR_RGB2BGR)
    jpeg = cv2.imencode(".jpg", picture)[1].tobytes()
    png = cv2.imencode(".png", picture)[1].tobytes()
    path = workdir / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (64, 48))
    for i in range(20):  # 2 s
        writer.write(cv2.cvtColor(story.render(i / 10, 64, 48, i), cv2.COLOR_RGB2BGR))
    writer.release()
    video = path.read_bytes() if path.exists() else b""
    if len(video) < 100:
        raise RuntimeError("cannot write the sample clip with OpenCV")
    return Corpus(jpeg=jpeg, png=png, video=video, sdp_offer=SDP_OFFER, huge_png=huge_png())


# ---------------------------------------------------------------- the server


def server_config(secrets: Secrets, engine_threads: int) -> str:
    tokens = ", ".join(f'{{scope = "{s}", token = "{t}"}}' for s, t in secrets.tokens.items())
    return f"""\
[server]
host = "127.0.0.1"
port = 0

[engine]
threads = {engine_threads}

[auth]
tokens = [{tokens}]

[ingest]
max_upload_mb = {MAX_UPLOAD_MB}

[webrtc]
loopback_candidates = true

[[sources]]
id = "{DEMO}"
url = "{DEMO_URL}"

[[sources]]
id = "{PUSH}"
url = "push:"
"""


class Server:
    """``python -m streamcap.cli run`` with a config file; every output line kept with the probe
    in flight when it was read."""

    def __init__(self, config_path: Path, root: Path = ROOT) -> None:
        self.config_path = config_path
        self.root = root
        self.proc: asyncio.subprocess.Process | None = None
        self.lines: list[LogLine] = []
        self.current_probe: int | None = None
        self.previous_probe: int | None = None
        self.base = ""
        self._readers: list[asyncio.Task] = []
        self._ready = asyncio.get_running_loop().create_future()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self, timeout_s: float = 90.0) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "streamcap.cli", "run", "--config", str(self.config_path),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL,
            cwd=str(self.root), env={**os.environ, "PYTHONPATH": str(self.root)}, limit=1 << 24)
        self._readers = [asyncio.create_task(self._read(self.proc.stdout)),
                         asyncio.create_task(self._read(self.proc.stderr))]
        try:
            self.base = await asyncio.wait_for(self._ready, timeout_s)
        except BaseException:
            await self.stop(5.0)
            raise

    async def _read(self, stream: asyncio.StreamReader) -> None:
        while True:
            try:
                raw = await stream.readline()
            except (asyncio.LimitOverrunError, ValueError):
                raw = await stream.read(1 << 24)
            if not raw:
                if not self._ready.done():
                    self._ready.set_exception(RuntimeError("the server exited before serving:\n" + "\n".join(
                        line.text for line in self.lines[-30:])))
                return
            text = raw.decode("utf-8", "replace").rstrip("\n")
            self.lines.append(LogLine(text, self.current_probe, self.previous_probe))
            m = re.search(r"serving on (http://\S+?)/?$", text)
            if m and not self._ready.done() and not LOG_RECORD.match(text):
                self._ready.set_result(m[1])

    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def stop(self, limit_s: float) -> tuple[int | None, float | None]:
        """SIGTERM; (exit status, seconds) — (None, None) when it had to be killed."""
        if self.proc is None:
            return None, None
        if self.proc.returncode is not None:
            await asyncio.gather(*self._readers, return_exceptions=True)
            return self.proc.returncode, 0.0
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(self.proc.wait(), limit_s)
            took: float | None = time.monotonic() - t0
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            code, took = None, None
        await asyncio.gather(*self._readers, return_exceptions=True)
        return code, took


class HealthPoller(threading.Thread):
    """Polls ``/healthz`` with the view token every ``every_s`` on its own thread (the fuzzer's
    event loop cannot delay it), with the server's RSS and thread count."""

    def __init__(self, host: str, port: int, token: str, pid: int, every_s: float = 0.25,
                 timeout_s: float = 30.0, probe_in_flight=lambda: None) -> None:
        super().__init__(daemon=True, name="healthz-poller")
        self.host, self.port, self.token, self.pid = host, port, token, pid
        self.every_s, self.timeout_s = every_s, timeout_s
        self.samples: list[tuple[float, float, int | None, int | None]] = []  # (start, latency, status, probe)
        self.probe_in_flight = probe_in_flight
        self.last_status: int | None = None
        self.rss_mb: list[float] = []
        self.threads: list[int] = []
        self.in_flight_since: float | None = None
        self.last_ok = time.monotonic()
        self.stopping = threading.Event()

    def run(self) -> None:
        req = build_request("GET", "/healthz", [("Authorization", f"Bearer {self.token}")])
        while not self.stopping.is_set():
            t0 = time.monotonic()
            self.in_flight_since = t0
            probe = self.probe_in_flight()
            status = None
            try:
                with socket.create_connection((self.host, self.port), timeout=self.timeout_s) as sock:
                    sock.sendall(req)
                    data = b""
                    while chunk := sock.recv(65536):
                        data += chunk
                status = http_status(data)
            except OSError:
                status = None
            latency = time.monotonic() - t0
            self.in_flight_since = None
            self.samples.append((t0, latency, status, probe))
            self.last_status = status
            if status == 200:
                self.last_ok = time.monotonic()
            mem = read_proc_status(self.pid)
            if mem:
                self.rss_mb.append(mem[0])
                self.threads.append(mem[1])
            self.stopping.wait(max(0.0, self.every_s - latency))

    def stalled_for(self) -> float:
        return time.monotonic() - self.last_ok


def read_proc_status(pid: int) -> tuple[float, int] | None:
    """(VmRSS in MB, thread count) of ``pid``, None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    rss = re.search(r"^VmRSS:\s+(\d+) kB", text, re.M)
    threads = re.search(r"^Threads:\s+(\d+)", text, re.M)
    if not rss or not threads:
        return None
    return int(rss[1]) / 1024, int(threads[1])


class CaptionWatch:
    """A viewer of the demo stream counting its caption messages (reconnects if dropped)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.times: list[float] = []
        self.reconnects = 0
        self.first = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        import websockets

        while True:
            try:
                async with websockets.connect(self.url, max_size=None, open_timeout=10) as ws:
                    async for raw in ws:
                        msg = json.loads(raw)
                        if msg.get("type") == "caption" and msg.get("stream") == DEMO:
                            self.times.append(time.monotonic())
                            self.first.set()
            except (OSError, TimeoutError, websockets.WebSocketException):
                pass
            self.reconnects += 1
            await asyncio.sleep(0.5)  # a reconnect backoff, not synchronisation

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


# ---------------------------------------------------------------- exchanges


@dataclass
class Outcome:
    status: int | None = None  # HTTP status (or the refused websocket handshake's)
    received: list[bytes] = field(default_factory=list)  # everything the server sent
    close_code: int | None = None  # server-initiated close
    after_message: bool = False  # the server closed after we had sent a message
    unanswered: int = 0
    error: str = ""
    location: str = ""


async def http_exchange(host: str, port: int, raw: bytes, timeout_s: float) -> Outcome:
    out = Outcome()
    data = b""
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(raw)
                await writer.drain()
                while len(data) < MAX_RESPONSE_BYTES and not response_complete(data):
                    chunk = await reader.read(65536)
                    if not chunk:
                        break
                    data += chunk
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except TimeoutError:
        out.error = "timeout"
    except OSError as e:
        out.error = f"{type(e).__name__}: {e}"
    out.received.append(data)
    out.status = http_status(data)
    m = re.search(rb"\r\nLocation: ([^\r\n]+)", data.split(b"\r\n\r\n", 1)[0])
    if m:
        out.location = m[1].decode("latin-1")
    return out


async def ws_exchange(base_ws: str, probe: Probe) -> Outcome:
    import websockets
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    out = Outcome()
    ingest = probe.endpoint == "ingest"
    try:
        async with asyncio.timeout(probe.timeout_s + 10):
            try:
                ws = await websockets.connect(base_ws + probe.target, additional_headers=list(probe.headers),
                                              max_size=None, open_timeout=10, close_timeout=2, compression=None)
            except InvalidStatus as e:
                out.status = e.response.status_code
                out.received.append(e.response.body or b"")
                out.received.append("\n".join(f"{k}: {v}" for k, v in e.response.headers.raw_items()).encode())
                return out
            out.status = 101
            answered = 0  # pongs (viewer) or ingested/error (ingest) seen
            sent = 0
            try:
                for frame in probe.frames:
                    await ws.send(frame.data, text=frame.text)
                    out.after_message = True
                    if not ingest:
                        await ws.send('{"type":"ping"}')
                    sent += 1
                    try:
                        async with asyncio.timeout(probe.timeout_s):
                            while answered < sent:
                                raw = await ws.recv()
                                out.received.append(raw.encode() if isinstance(raw, str) else raw)
                                kind = _msg_type(raw)
                                if (not ingest and kind == "pong") or (ingest and kind in ("ingested", "error")):
                                    answered += 1
                    except TimeoutError:
                        out.unanswered += 1
                        answered = sent
                await ws.close()
            except ConnectionClosed as e:
                rcvd = e.rcvd
                if rcvd is None:
                    out.close_code = 1006
                elif e.rcvd_then_sent is not False:
                    out.close_code = rcvd.code
                if rcvd is not None:
                    out.received.append(rcvd.reason.encode())
            finally:
                with contextlib.suppress(Exception):  # boundary: the connection may be gone already
                    await ws.close()
    except TimeoutError:
        out.error = "timeout"
    except (OSError, websockets.WebSocketException) as e:
        out.error = f"{type(e).__name__}: {e}"
    return out


def _msg_type(raw: str | bytes) -> str | None:
    try:
        msg = json.loads(raw)
    except ValueError:
        return None
    return msg.get("type") if isinstance(msg, dict) else None


async def exchange(host: str, port: int, probe: Probe, secrets: Secrets) -> Outcome:
    if probe.frames:
        return await ws_exchange(f"ws://{host}:{port}", probe)
    out = await http_exchange(host, port, probe.raw, probe.timeout_s)
    if out.status is not None and 200 <= out.status < 300 and probe.cleanup:
        token = secrets.admin if probe.cleanup.startswith("stream:") else secrets.publish
        auth = [("Authorization", f"Bearer {token}")]
        target = ""
        if probe.cleanup.startswith("stream:"):
            target = "/v1/streams/" + urllib.parse.quote(probe.cleanup.split(":", 1)[1], safe="")
        elif probe.cleanup == "whip" and out.location.startswith("/whip/"):
            target = out.location
        if target:
            done = await http_exchange(host, port, build_request("DELETE", target, auth), 10.0)
            out.received.extend(done.received)
    return out


def record(report: Report, probe: Probe, out: Outcome, secrets: Secrets, took_s: float = 0.0) -> None:
    t = report.endpoints[probe.endpoint]
    t.seconds += took_s
    if took_s > t.slowest_s:
        t.slowest_s, t.slowest_probe = took_s, probe.index
    t.probes += 1
    t.messages += probe.messages
    t.kinds[probe.kind] += 1
    if out.status == 101:
        t.status["101"] += 1
    else:
        t.status[status_class(out.status)] += 1
    if out.status is not None:
        t.statuses[str(out.status)] += 1
    if out.status == 500:
        t.status_500 += 1
        body = out.received[0][:300] if out.received else b""
        report.findings.append(Finding("no_500", probe.index, f"500: {body!r}"))
    if out.close_code is not None:
        t.closes[str(out.close_code)] += 1
        t.closes_by_kind[f"{out.close_code} {probe.kind}"] += 1
        if abnormal_close(out.close_code, out.after_message):
            t.abnormal_closes += 1
            report.findings.append(Finding("no_abnormal_close", probe.index, f"closed with {out.close_code}"))
    t.unanswered += out.unanswered
    leaked = sorted({name for data in out.received for name in secrets.leaks(data)})
    if leaked:
        t.secret_responses += 1
        shown = next((d for d in out.received if secrets.leaks(d)), b"")
        sent = set(secrets.leaks(probe.raw + probe.target.encode() + repr(probe.headers).encode()
                                 + b"".join(f.data for f in probe.frames)))
        how = "echoed from the request" if set(leaked) <= sent else "NOT in the request"
        report.findings.append(Finding("no_secret", probe.index,
                                       f"answer shows {', '.join(leaked)} ({how}): {shown[:240]!r}"))
    if probe.system_file and out.status == 201:
        report.findings.append(Finding("no_system_file", probe.index, "a system file accepted as a stream URL"))


# ---------------------------------------------------------------- the run


@dataclass
class Options:
    seed: int = 1
    messages: int = 3000
    exclude: tuple[str, ...] = ()
    only: tuple[int, ...] = ()
    limits: Limits = field(default_factory=Limits)
    hang_s: float = 15.0  # no healthz answer for this long: the server is hung, stop
    engine_threads: int = 1
    log_path: Path | None = None
    progress: bool = True
    server_root: Path = ROOT  # the streamcap tree the server runs from


async def run(opts: Options) -> Report:
    """Start a server, fuzz it, stop it; the report with every finding (see :func:`check`)."""
    secrets = Secrets.from_seed(opts.seed)
    report = Report(seed=opts.seed, messages_requested=opts.messages)
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="streamcap-fuzz-") as tmp:
        workdir = Path(tmp)
        corpus = await asyncio.to_thread(build_corpus, workdir)
        describe_with(corpus)
        config = workdir / "fuzz.toml"
        config.write_text(server_config(secrets, opts.engine_threads))
        server = Server(config, opts.server_root)
        await server.start()
        host, port = "127.0.0.1", int(server.base.rsplit(":", 1)[1])
        poller = HealthPoller(host, port, secrets.view, server.pid, timeout_s=max(opts.hang_s * 2, 10.0),
                              probe_in_flight=lambda: server.current_probe)
        watch = CaptionWatch(f"ws://{host}:{port}/ws?streams={DEMO}&token={secrets.view}")
        watch.start()
        try:
            await asyncio.wait_for(watch.first.wait(), 90)
        except TimeoutError:
            report.aborted = "the demo stream gave no caption within 90 s of start"
        start_mem = read_proc_status(server.pid)
        report.rss_start_mb = start_mem[0] if start_mem else 0.0
        poller.start()
        fuzz_t0 = time.monotonic()
        last_print = fuzz_t0
        started: list[tuple[int, float]] = []  # (probe, when it started)
        try:
            if not report.aborted:
                for probe in generate(opts.seed, opts.messages, corpus, secrets, exclude=opts.exclude, only=opts.only):
                    if not server.alive():
                        report.aborted = f"the server exited (status {server.proc.returncode}) during probe " \
                                         f"#{server.current_probe}"
                        break
                    server.previous_probe, server.current_probe = server.current_probe, probe.index
                    started.append((probe.index, time.monotonic()))
                    task = asyncio.create_task(exchange(host, port, probe, secrets))
                    while not task.done():
                        await asyncio.wait({task}, timeout=1.0)
                        if poller.stalled_for() > opts.hang_s and not task.done():
                            task.cancel()
                            state = ("no answer" if poller.in_flight_since is not None
                                     and poller.last_status is None else f"last status {poller.last_status}")
                            report.aborted = (f"/healthz without a 200 for {opts.hang_s:g} s ({state}) during "
                                              f"probe #{probe.index} ({probe.kind}): the cause may be a probe "
                                              f"before it (see the log)")
                            suspects = suspects_since(started, poller.last_ok)
                            more = f" and {len(suspects) - 12} more" if len(suspects) > 12 else ""
                            report.aborted += f"; probes since the last 200: {suspects[:12]}{more}"
                            report.findings.append(Finding("healthz", probe.index, report.aborted,
                                                           suspects[0] if suspects else None))
                            break
                    if report.aborted:
                        break
                    record(report, probe, task.result(), secrets, time.monotonic() - started[-1][1])
                    report.probes_sent += 1
                    report.messages_sent += probe.messages
                    if opts.progress and time.monotonic() - last_print > 5:
                        last_print = time.monotonic()
                        print(f"fuzz: {report.messages_sent}/{opts.messages} messages, probe #{probe.index}",
                              file=sys.stderr, flush=True)
        finally:
            fuzz_t1 = time.monotonic()
            server.current_probe = None
            poller.stopping.set()
            await asyncio.to_thread(poller.join, 5.0)
            await watch.stop()
            report.server_alive = server.alive()
            report.exit_code, report.exit_s = await server.stop(opts.limits.exit_limit_s)
        report.wall_s = time.monotonic() - t_start
        samples = poller.samples
        report.health_polls = len(samples)
        report.health_failures = sum(1 for _, _, s, _ in samples if s != 200)
        report.health_max_s = max((lat for _, lat, _, _ in samples), default=0.0)
        for t0, lat, status, during in samples:
            if status != 200 or lat > opts.limits.health_limit_s:
                report.findings.append(Finding("healthz", during, f"/healthz {status} in {lat:.2f} s at "
                                                                  f"+{t0 - fuzz_t0:.1f} s"))
        report.fuzz_span_s = fuzz_t1 - fuzz_t0
        report.captions = sum(1 for t in watch.times if fuzz_t0 <= t <= fuzz_t1)
        report.caption_max_gap_s = caption_gaps(watch.times, fuzz_t0, fuzz_t1)
        report.caption_intervals = interval_counts(watch.times, fuzz_t0, fuzz_t1, opts.limits.caption_gap_s)
        report.rss_peak_mb = max(poller.rss_mb, default=report.rss_start_mb)
        report.threads_peak = max(poller.threads, default=0)
        tally_log(server.lines, secrets, report)
        if opts.log_path is not None:
            opts.log_path.write_text("\n".join(f"[{line.probe}] {line.text}" for line in server.lines) + "\n")
    return report


# ---------------------------------------------------------------- printing


def summary(report: Report, limits: Limits, opts: Options, *, max_findings: int = 5) -> str:
    out = [f"fuzz seed {report.seed}: {report.messages_sent} messages in {report.probes_sent} probes "
           f"({report.wall_s:.1f} s)" + (f"; STOPPED: {report.aborted}" if report.aborted else "")]
    out.append(f"{'endpoint':8} {'probes':>7} {'msgs':>7}  statuses / closes")
    for name, t in report.endpoints.items():
        classes = " ".join(f"{k}:{v}" for k, v in sorted(t.status.items()))
        closes = " ".join(f"{k}:{v}" for k, v in sorted(t.closes.items()))
        out.append(f"{name:8} {t.probes:7d} {t.messages:7d}  [{classes}] 500s:{t.status_500}"
                   + (f" closes[{closes}] abnormal:{t.abnormal_closes} unanswered:{t.unanswered}" if closes or
                      t.unanswered else "") + f" secret-answers:{t.secret_responses}"
                   + f" time:{t.seconds:.1f}s slowest:{t.slowest_s:.2f}s(#{t.slowest_probe})")
    log = report.log
    out.append(f"server log: {log.lines} lines, {log.tracebacks} tracebacks, {sum(log.errors.values())} ERROR, "
               f"{log.warnings} WARNING, {log.secret_lines} with a secret, {log.forged_lines} forged, "
               f"{log.nul_lines} with NUL")
    for msg, n in log.errors.most_common(8):
        out.append(f"  ERROR x{n}: {msg}")
    out.append(f"/healthz: {report.health_polls} polls, {report.health_failures} failed, slowest "
               f"{report.health_max_s:.3f} s; demo captions: {report.captions}, longest pause "
               f"{report.caption_max_gap_s:.1f} s, per {limits.caption_gap_s:g} s: {report.caption_intervals}")
    out.append(f"server RSS {report.rss_start_mb:.0f} -> peak {report.rss_peak_mb:.0f} MB, threads peak "
               f"{report.threads_peak}; alive at end: {report.server_alive}, SIGTERM -> status {report.exit_code} "
               f"in {report.exit_s if report.exit_s is None else round(report.exit_s, 1)} s")
    broken = check(report, limits)
    by_inv: dict[str, list[Finding]] = {}
    for f in report.findings:
        by_inv.setdefault(f.invariant, []).append(f)
    cmd = f"{sys.executable} tools/fuzz.py --seed {report.seed}"
    for inv in INVARIANTS:
        if inv not in broken:
            out.append(f"PASS {inv}")
            continue
        out.append(f"FAIL {inv}: {broken[inv]}")
        groups: dict[str, list[Finding]] = {}
        for f in by_inv.get(inv, []):
            groups.setdefault(_group_key(report.seed, f), []).append(f)
        for key, fs in sorted(groups.items(), key=lambda kv: -len(kv[1]))[:max_findings]:
            f = fs[0]
            also = f" (or #{f.previous} just before)" if f.previous is not None else ""
            out.append(f"  x{len(fs)} {key}: e.g. probe #{f.probe}{also}: {f.detail[:400]}")
            for p in (f.previous, f.probe):
                probe = _probe_for(report.seed, p) if p is not None else None
                if probe is not None:
                    out.append(f"      {probe.describe()}")
            shown = [p for p in (f.previous, f.probe) if p is not None]
            if shown:
                out.append(f"      replay: {cmd} --only {','.join(map(str, shown))}")
        if len(groups) > max_findings:
            out.append(f"  ... and {len(groups) - max_findings} more groups (--json has every finding)")
    return "\n".join(out)


def _group_key(seed: int, f: Finding) -> str:
    """Findings alike: the probe kind, and for log findings the exception or logger."""
    probe = _probe_for(seed, f.probe) if f.probe is not None else None
    kind = probe.kind if probe is not None else "-"
    if f.invariant == "healthz":
        return f.detail.split(" in ")[0] if f.detail.startswith("/healthz ") else "hang"
    if f.invariant == "no_traceback":
        return f"{kind}: {f.detail.split(' after ')[0][:80]}"
    if f.invariant == "no_secret":
        return f"{kind}: {'log' if f.detail.startswith('server log') else 'answer'}"
    return kind


_PROBE_CACHE: dict[tuple[int, int], Probe] = {}
_CORPUS_FOR_DESCRIBE: list[Corpus] = []


def _probe_for(seed: int, index: int) -> Probe | None:
    if not _CORPUS_FOR_DESCRIBE:
        return None
    key = (seed, index)
    if key not in _PROBE_CACHE:
        _PROBE_CACHE[key] = probe_at(seed, index, _CORPUS_FOR_DESCRIBE[0], Secrets.from_seed(seed))
    return _PROBE_CACHE[key]


def describe_with(corpus: Corpus) -> None:
    """Let :func:`summary` show the probes behind findings (it regenerates them from the corpus)."""
    _CORPUS_FOR_DESCRIBE[:] = [corpus]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--messages", type=int, default=3000, help="messages to send (default 3000)")
    parser.add_argument("--only", default="", help="comma-separated probe indices to replay alone")
    parser.add_argument("--exclude", action="append", default=[], metavar="KIND",
                        help="skip probes of this kind or kind prefix (repeatable), e.g. ingest.fps_tiny")
    parser.add_argument("--json", type=Path, help="write the report here")
    parser.add_argument("--log", type=Path, help="write the server's output here (each line tagged [probe])")
    parser.add_argument("--health-limit-s", type=float, default=5.0)
    parser.add_argument("--caption-gap-s", type=float, default=10.0)
    parser.add_argument("--max-rss-growth-mb", type=float, default=1000.0)
    parser.add_argument("--hang-s", type=float, default=15.0, help="stop when /healthz is unanswered this long")
    parser.add_argument("--engine-threads", type=int, default=1, help="the server's engine.threads (0 = all cores)")
    parser.add_argument("--server-root", type=Path, default=ROOT,
                        help="run the server from this streamcap tree (e.g. a `git archive` of another commit)")
    args = parser.parse_args(argv)
    limits = Limits(health_limit_s=args.health_limit_s, caption_gap_s=args.caption_gap_s,
                    max_rss_growth_mb=args.max_rss_growth_mb)
    opts = Options(seed=args.seed, messages=args.messages, exclude=tuple(args.exclude),
                   only=tuple(int(x) for x in args.only.split(",") if x.strip()), limits=limits, hang_s=args.hang_s,
                   engine_threads=args.engine_threads, log_path=args.log, server_root=args.server_root.resolve())
    try:
        report = asyncio.run(run(opts))
    except (RuntimeError, TimeoutError) as e:
        print(f"fuzz: the server did not start: {e}", file=sys.stderr)
        return 2
    print(summary(report, limits, opts))
    if args.json:
        doc = report.to_json()
        doc["broken"] = check(report, limits)
        args.json.write_text(json.dumps(doc, indent=2, default=str))
    return 1 if check(report, limits) else 0


if __name__ == "__main__":
    sys.exit(main())
