"""Fire-and-forget work of the router's request path (a source's abort, a move's pin release)."""

from __future__ import annotations

import asyncio

_tasks: set[asyncio.Task] = set()


def background(coro) -> None:
    """Run ``coro`` without awaiting it, with a strong reference until it ends (so the task is not
    garbage-collected mid-flight)."""
    t = asyncio.ensure_future(coro)
    _tasks.add(t)
    t.add_done_callback(_tasks.discard)
