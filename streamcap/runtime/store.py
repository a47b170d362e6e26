"""The caption store: finals, alerts (with their acknowledgements) and caption numbers on disk.

One embedded SQLite database (``server.data_dir/streamcap.sqlite3``, WAL journal) per server.
What it is for:

- **Nothing lost:** every final caption and alert step is written (and committed) before it is
  broadcast, so a final any client received survives ``kill -9`` of the process (WAL with
  ``synchronous=NORMAL``: a committed transaction is on disk once the process has handed it to
  the OS; a power loss may lose the last moments).
- **Resume by seq:** :meth:`CaptionStore.finals_after` gives a stream's stored finals after a
  seq, oldest first (the wire message as it was sent), for clients that reconnect with
  ``?since=``.
- **seq continues:** caption numbers are handed out in blocks reserved on disk
  (:class:`SeqAllocator`): after a restart a stream's numbers start above every number it
  could have used before (partials included), so a client's ``since`` stays meaningful.
- **Retention:** :meth:`CaptionStore.prune` drops finals older than ``max_age_s`` and keeps at most
  ``max_finals`` per stream.

Synchronous and small: each call is one short transaction on the event loop thread (a final is a
few hundred bytes; SQLite commits one in well under a millisecond on an SSD).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from streamcap.core.errors import ConfigError
from streamcap.core.types import Alert, Caption

log = logging.getLogger(__name__)

DB_NAME = "streamcap.sqlite3"
SEQ_BLOCK = 256  # caption numbers reserved on disk at a time (one write per block)
SCHEMA = """
CREATE TABLE IF NOT EXISTS finals (
    stream TEXT NOT NULL, seq INTEGER NOT NULL, track TEXT NOT NULL, start_s REAL NOT NULL,
    end_s REAL NOT NULL, text TEXT NOT NULL, message TEXT NOT NULL, stored_at REAL NOT NULL,
    PRIMARY KEY (stream, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS alerts (
    id TEXT PRIMARY KEY, stream TEXT NOT NULL, message TEXT NOT NULL, acked_by TEXT,
    acked_at REAL, acked_message TEXT, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS seqs (stream TEXT PRIMARY KEY, reserved INTEGER NOT NULL);
"""


class CaptionStore:
    """The SQLite store of one server (see the module doc). Not shared between processes."""

    def __init__(self, folder: str | Path, *, clock=time.time) -> None:
        self.folder = Path(folder).expanduser()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.folder / DB_NAME, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=5000")  # another process's short write: wait for it
            self._db.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"cannot open the caption store in {self.folder} (server.data_dir): {exc}") from exc
        self._clock = clock
        self._lock = threading.Lock()  # one connection; calls come from the loop (and tests' threads)

    @property
    def path(self) -> Path:
        return self.folder / DB_NAME

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------------ finals

    def add_final(self, caption: Caption, message: str) -> None:
        """Keep a final (its wire message as sent). A seq stored twice keeps the first."""
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO finals VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                             (caption.stream, caption.seq, caption.track, caption.start_s, caption.end_s,
                              caption.text, message, self._clock()))

    def finals_after(self, stream: str, since: int, limit: int) -> list[str]:
        """The wire messages of ``stream``'s stored finals with seq > ``since``, oldest first, at
        most ``limit`` (the oldest ones: a resume continues where the client stopped)."""
        with self._lock:
            rows = self._db.execute("SELECT message FROM finals WHERE stream = ? AND seq > ? ORDER BY seq LIMIT ?",
                                    (stream, since, limit)).fetchall()
        return [r[0] for r in rows]

    def recent_finals(self, stream: str, limit: int) -> list[str]:
        """The wire messages of ``stream``'s newest ``limit`` stored finals, oldest first (a
        restarted stream's chapters start from them)."""
        with self._lock:
            rows = self._db.execute("SELECT message FROM finals WHERE stream = ? ORDER BY seq DESC LIMIT ?",
                                    (stream, limit)).fetchall()
        return [r[0] for r in reversed(rows)]

    def count_finals(self, stream: str) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM finals WHERE stream = ?", (stream,)).fetchone()[0]

    def prune(self, *, max_age_s: float | None, max_finals: int | None) -> int:
        """Drop finals older than ``max_age_s`` and all but the newest ``max_finals`` of each
        stream (None: no limit). Returns how many were dropped."""
        dropped = 0
        with self._lock:
            if max_age_s is not None:
                dropped += self._db.execute("DELETE FROM finals WHERE stored_at < ?",
                                            (self._clock() - max_age_s,)).rowcount
            if max_finals is not None:
                for (stream,) in self._db.execute("SELECT DISTINCT stream FROM finals").fetchall():
                    dropped += self._db.execute(
                        "DELETE FROM finals WHERE stream = ? AND seq <= (SELECT seq FROM finals WHERE stream = ? "
                        "ORDER BY seq DESC LIMIT 1 OFFSET ?)", (stream, stream, max_finals)).rowcount
            if max_age_s is not None:
                self._db.execute("DELETE FROM alerts WHERE updated_at < ?", (self._clock() - max_age_s,))
        return dropped

    # ------------------------------------------------------------------ alerts

    def put_alert(self, alert: Alert, message: str) -> None:
        """Keep an alert's latest step (its wire message); its acknowledgement stays."""
        with self._lock:
            self._db.execute(
                "INSERT INTO alerts (id, stream, message, updated_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET message = excluded.message, updated_at = excluded.updated_at",
                (alert.id, alert.stream, message, self._clock()))

    def ack_alert(self, alert_id: str, by: str, at_s: float, message: str) -> None:
        with self._lock:
            self._db.execute("UPDATE alerts SET acked_by = ?, acked_at = ?, acked_message = ? "
                             "WHERE id = ? AND acked_by IS NULL", (by, at_s, message, alert_id))

    def recent_alerts(self, limit: int) -> list[tuple[str, str, str | None, float | None, str | None]]:
        """``(id, message, acked_by, acked_at, acked_message)`` of the ``limit`` most recently
        changed alerts, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT id, message, acked_by, acked_at, acked_message FROM alerts "
                                    "ORDER BY updated_at DESC LIMIT ?", (limit,)).fetchall()
        return list(reversed(rows))

    # ------------------------------------------------------------------ caption numbers

    def reserve_seq(self, stream: str, block: int = SEQ_BLOCK) -> tuple[int, int]:
        """Reserve the next ``block`` caption numbers of ``stream``: returns ``[first, end)``,
        above every number reserved before (committed before any of them is used)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")  # read and write as one: another writer waits
            try:
                row = self._db.execute("SELECT reserved FROM seqs WHERE stream = ?", (stream,)).fetchone()
                first = 0 if row is None else int(row[0])
                end = first + block
                self._db.execute("INSERT INTO seqs VALUES (?, ?) ON CONFLICT(stream) DO UPDATE SET reserved = ?",
                                 (stream, end, end))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return first, end


class SeqAllocator(Iterator[int]):
    """A stream's caption numbers, reserved on disk a block at a time (the processor only calls
    ``next``). After a restart the numbers start at the end of the last reserved block."""

    def __init__(self, store: CaptionStore, stream: str, block: int = SEQ_BLOCK) -> None:
        self._store, self._stream, self._block = store, stream, block
        self._next, self._end = store.reserve_seq(stream, block)

    def __next__(self) -> int:
        if self._next >= self._end:
            self._next, self._end = self._store.reserve_seq(self._stream, self._block)
        n = self._next
        self._next += 1
        return n
