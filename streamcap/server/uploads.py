"""Where uploads being captioned live: one folder streamcap owns, cleaned at start-up and exit.

``POST /v1/captions`` stores the posted video as a file for the pipeline to read. Each file is
``clip-<pid>-<random>.video`` in :func:`default_upload_dir` (``streamcap-<uid>/uploads`` in the
system temp folder, mode 0700) or ``ingest.upload_dir``; a folder that another user owns or
that others can write (and, for the default, its ``streamcap-<uid>`` parent) is refused. A request removes its own file when it
ends; :meth:`UploadFolder.remove_stale` (at start-up) removes the files of processes that no
longer run — a ``kill -9`` during an upload leaves nothing behind for good — and
:meth:`UploadFolder.remove_own` (at exit) those of this process. Other live processes' files are
never touched, so several servers may share the folder.

File-system work: call these methods off the event loop (``asyncio.to_thread``).
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

_NAME = re.compile(r"clip-(\d+)-[A-Za-z0-9_-]+\.video")


def default_upload_dir() -> Path:
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    return Path(tempfile.gettempdir()) / f"streamcap-{uid}" / "uploads"


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user's process
        return True
    return True


class UploadFolder:
    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else default_upload_dir()

    def new_file(self) -> Path:
        """A new empty file for one upload (the folder is made, 0700, when missing)."""
        if self.path == default_upload_dir():  # made here 0700 too, whatever the umask
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._check_private()
        while True:
            candidate = self.path / f"clip-{os.getpid()}-{secrets.token_urlsafe(9)}.video"
            try:
                fd = os.open(candidate, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            except FileExistsError:
                continue
            os.close(fd)
            return candidate

    def _check_private(self) -> None:
        """Refuse a folder someone else could have made or can write (a shared temp folder where
        another user created ``streamcap-<uid>`` first): uploads are the clients' videos."""
        if not hasattr(os, "getuid"):
            return
        folders = [self.path]
        if self.path == default_upload_dir():
            folders.append(self.path.parent)  # streamcap-<uid>: whoever owns it can swap uploads/
        if any(info.st_uid != os.getuid() or info.st_mode & 0o022 for info in map(os.stat, folders)):
            raise PermissionError(f"the upload folder {self.path} is not private to this user "
                                  "(owned by another user or writable by others); set ingest.upload_dir")

    def _ours(self) -> list[tuple[Path, int]]:
        if not self.path.is_dir():
            return []
        found = []
        for entry in self.path.iterdir():
            match = _NAME.fullmatch(entry.name)
            if match is not None:
                found.append((entry, int(match[1])))
        return found

    def remove_stale(self) -> int:
        """Remove the upload files of processes that no longer run; returns how many."""
        removed = 0
        for path, pid in self._ours():
            if not _alive(pid):
                path.unlink(missing_ok=True)
                removed += 1
        if removed:
            log.info("removed %d upload file(s) left by stopped processes in %s", removed, self.path)
        return removed

    def remove_own(self) -> int:
        """Remove this process's upload files (at exit); returns how many."""
        removed = 0
        for path, pid in self._ours():
            if pid == os.getpid():
                path.unlink(missing_ok=True)
                removed += 1
        return removed
