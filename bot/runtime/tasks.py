"""Background work the bot starts after it has answered Slack.

Every task is kept (so it is not garbage-collected mid-flight), its failure
is logged with a traceback, and all of them are cancelled cleanly on
shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Coroutine, Iterator
from typing import Any

log = logging.getLogger(__name__)


class AckFirst:
    """Acks before follow-up work.

    Slack gives an ack 3 seconds; a follow-up post has no such deadline. The
    HTTP door counts the Slack requests it is answering, and background work
    waits (a bounded time, so it can never starve) until none is in progress
    before it starts. Without this, under a burst of clicks every ack queued
    behind the message updates and engine runs of the clicks before it on
    the one event loop (bench/ack_latency.py measured p99 several times the
    bare app's at 50 concurrent requests).
    """

    def __init__(self, max_wait: float = 1.0) -> None:
        self.max_wait = max_wait
        self._answering = 0
        self._quiet = asyncio.Event()
        self._quiet.set()

    @contextlib.contextmanager
    def answering(self) -> Iterator[None]:
        """Around answering one Slack request, until its response is ready.

        Work a click starts waits for that click's own response too: bolt
        sends it on its next 10 ms poll after ``ack()``, and letting the work
        run in that gap measurably delayed everyone's acks under load
        (approve p99 at 50 concurrent: ~1.1x the bare app's when waiting,
        ~5-7x when not; bench/ack_latency.py). It costs the engine's start
        ~10 ms (bench/execution_latency.py), nothing next to a deploy.
        """
        self._answering += 1
        self._quiet.clear()
        try:
            yield
        finally:
            self._answering -= 1
            if self._answering == 0:
                self._quiet.set()

    async def wait_turn(self) -> None:
        """Return once no ack is being worked on (or after ``max_wait``)."""
        if self._answering:
            try:
                await asyncio.wait_for(self._quiet.wait(), self.max_wait)
            except TimeoutError:
                pass


class BackgroundTasks:
    def __init__(self, ack_first: AckFirst | None = None) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self.ack_first = ack_first or AckFirst()

    def spawn(self, coroutine: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run ``coroutine`` in the background, after any acks in progress."""
        task = asyncio.create_task(self._after_acks(coroutine), name=name)
        self._tasks.add(task)
        self._idle.clear()
        task.add_done_callback(self._finished)
        # a task cancelled before its first step never ran ``coroutine``: close
        # it, or Python warns it was never awaited (a no-op once it has run)
        task.add_done_callback(lambda _: coroutine.close())
        return task

    async def _after_acks(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        try:
            await self.ack_first.wait_turn()
        except BaseException:
            coroutine.close()
            raise
        return await coroutine

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not self._tasks:
            self._idle.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("background task %s failed", task.get_name(), exc_info=task.exception())

    @property
    def pending(self) -> int:
        return len(self._tasks)

    async def wait_idle(self) -> None:
        """Return once no background work is left (tests; graceful shutdown)."""
        while self._tasks:
            await self._idle.wait()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def until_stopped() -> None:
    """Return when the process is asked to stop (SIGINT or SIGTERM): how
    ``slipway serve`` and ``slipway sandbox`` wait, before shutting down cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)

