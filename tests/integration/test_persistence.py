"""Nothing lost across kill -9: a real `streamcap run` keeps its finals in its caption store
(SQLite, server.data_dir) before it broadcasts them; after kill -9 and a restart on the same data
folder, a client that resumes with `?since=` its last seq gets every final it had not seen, then
live captions, with no gap and no duplicate, and the caption numbers go on above the old ones."""

from __future__ import annotations

import asyncio
import signal
import sqlite3

import aiohttp
import pytest

from streamcap.core.types import CaptionState
from streamcap.outputs.wire import CaptionMsg, ErrorMsg
from tests.helpers.cli import base_url, start_run, stop_run
from tests.helpers.wsclient import WireClient

pytestmark = pytest.mark.integration

SOURCE = "cam=synthetic:shapes?seed=5&fps=10&size=320x240&scene_s=2"


def _ws(url: str, query: str) -> str:
    return url.replace("http://", "ws://", 1) + f"/ws?{query}"


def _stored(data_dir) -> list[tuple[int, str]]:
    db = sqlite3.connect(data_dir / "streamcap.sqlite3")
    try:
        return db.execute("SELECT seq, message FROM finals WHERE stream = 'cam' ORDER BY seq").fetchall()
    finally:
        db.close()


async def _run(data_dir) -> tuple[asyncio.subprocess.Process, str]:
    proc = await start_run("--port", "0", "--source", SOURCE, "--data-dir", str(data_dir), "--no-speech")
    return proc, await base_url(proc, "cam")


async def test_kill_9_then_restart_resumes_by_since_with_every_final_and_seq_going_on(tmp_path):
    data = tmp_path / "data"
    proc, url = await _run(data)
    try:
        async with WireClient(_ws(url, "streams=cam")) as client:
            await client.wait_for(lambda: len([c for c in client.of(CaptionMsg, "cam")
                                               if c.state is CaptionState.FINAL]) >= 3 or None,
                                  60, "three finals before the kill")
            seen = list(client.of(CaptionMsg, "cam"))
            proc.send_signal(signal.SIGKILL)  # mid-stream, the client still attached
            await asyncio.wait_for(proc.wait(), 10)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == -signal.SIGKILL
    stored = _stored(data)
    stored_seqs = [s for s, _ in stored]
    got_finals = [c.seq for c in seen if c.state is CaptionState.FINAL]
    # every final a client received was on disk before it went out
    assert set(got_finals) <= set(stored_seqs), (got_finals, stored_seqs)
    last_seen = max(c.seq for c in seen)  # partials count: a client resumes from its last message

    proc, url = await _run(data)
    try:
        # one client resumes from the last message it got; another lost its connection earlier,
        # after the first final, and resumes from there
        early = got_finals[0]
        async with (WireClient(_ws(url, f"streams=cam&since=cam:{last_seen}")) as client,
                    WireClient(_ws(url, f"streams=cam&since={early}")) as late):
            for c_ in (client, late):
                await c_.wait_for(lambda c_=c_: [c for c in c_.of(CaptionMsg, "cam")
                                                 if c.state is CaptionState.FINAL and c.seq > stored_seqs[-1]] or None,
                                  60, "a live final after the restart")
            after = [c for c in client.of(CaptionMsg, "cam") if c.state is CaptionState.FINAL]
            late_finals = [c for c in late.of(CaptionMsg, "cam") if c.state is CaptionState.FINAL]
            assert not client.of(ErrorMsg) and not late.of(ErrorMsg)
            # the chapters go on from the stored finals: they count every final from before the kill
            async with aiohttp.ClientSession() as http, http.get(f"{url}/v1/streams/cam/chapters") as resp:
                assert resp.status == 200
                chapters = (await resp.json())["chapters"]
            assert sum(ch["captions"] for ch in chapters) >= len(stored_seqs), chapters
    finally:
        await stop_run(proc)
    missed = [s for s in stored_seqs if s > last_seen]  # stored, not seen before the kill
    seqs = [c.seq for c in after]
    # first every stored final the client had not seen, in order, then live ones: no gap, no duplicate
    assert seqs[: len(missed)] == missed
    assert seqs == sorted(set(seqs)), seqs
    assert all(s > last_seen for s in seqs)
    live = seqs[len(missed):]
    assert live and min(live) > max(stored_seqs + [last_seen])  # the numbers go on above the old ones
    # the replayed finals are the stored messages themselves
    replayed = {c.seq: c.text for c in after[: len(missed)]}
    for seq, message in stored:
        if seq in replayed:
            assert f'"text":"{replayed[seq]}"' in message.replace(": ", ":")
    # the late client gets every stored final after its own since (two or more: it missed them), then live
    late_seqs = [c.seq for c in late_finals]
    late_missed = [x for x in stored_seqs if x > early]
    assert len(late_missed) >= 2 and late_seqs[: len(late_missed)] == late_missed
    assert late_seqs == sorted(set(late_seqs)) and late_seqs[len(late_missed):] == live[: len(late_seqs) - len(late_missed)]
    # what was stored after the restart continues the same store
    assert [s for s, _ in _stored(data)][: len(stored_seqs)] == stored_seqs
