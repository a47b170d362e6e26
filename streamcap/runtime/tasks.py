"""Small helpers for the async shell's background tasks."""

from __future__ import annotations

import asyncio
import logging


async def cancel_and_wait(task: asyncio.Task | None, log: logging.Logger, what: str) -> None:
    """Cancel ``task`` (None: nothing) and wait for it to end; an error it ended with is logged
    as ``what`` ended with an error. A cancellation of the caller itself still propagates."""
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        if asyncio.current_task().cancelling():
            raise
    except Exception:
        log.exception("%s ended with an error", what)
