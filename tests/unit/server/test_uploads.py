"""The upload folder: new files are this process's, stale ones of dead processes are removed at
start-up, this process's own at exit, and other live processes' files are left alone."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from streamcap.server.uploads import UploadFolder, default_upload_dir


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=30)
    return proc.pid


def test_new_files_are_private_and_named_after_this_process(tmp_path):
    folder = UploadFolder(tmp_path / "uploads")
    a, b = folder.new_file(), folder.new_file()
    assert a != b and a.parent == b.parent == tmp_path / "uploads"
    assert a.name.startswith(f"clip-{os.getpid()}-") and a.suffix == ".video"
    assert stat.S_IMODE(a.stat().st_mode) == 0o600
    assert stat.S_IMODE(folder.path.stat().st_mode) == 0o700


def test_stale_files_of_dead_processes_go_and_live_ones_stay(tmp_path):
    folder = UploadFolder(tmp_path)
    dead = tmp_path / f"clip-{_dead_pid()}-abc.video"
    alive_other = tmp_path / "clip-1-abc.video"  # pid 1 always runs
    mine = folder.new_file()
    unrelated = tmp_path / "notes.txt"
    for path in (dead, alive_other, unrelated):
        path.write_bytes(b"x")
    assert folder.remove_stale() == 1
    assert not dead.exists() and alive_other.exists() and mine.exists() and unrelated.exists()
    assert folder.remove_own() == 1
    assert not mine.exists() and alive_other.exists() and unrelated.exists()


def test_the_default_folder_is_streamcaps_own(tmp_path):
    path = default_upload_dir()
    assert path.name == "uploads" and path.parent.name.startswith("streamcap-")
    assert UploadFolder().path == path
    assert UploadFolder(tmp_path / "nothing-yet").remove_stale() == 0  # a missing folder is empty


def test_a_folder_others_can_write_is_refused(tmp_path):
    shared = tmp_path / "uploads"
    shared.mkdir()
    shared.chmod(0o777)  # as if another user had made it first in a shared temp folder
    with pytest.raises(PermissionError, match="not private"):
        UploadFolder(shared).new_file()
    assert list(shared.iterdir()) == []
