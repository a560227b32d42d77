"""How long the event loop was held: a task that sleeps a short interval
and notes how late it woke.

Every Slack ack, webhook answer and outbox call of a Slipway runs on one
event loop; whatever holds it (a long SQLite transaction, a big body being
parsed) makes all of them wait. A sleep of ``interval`` that wakes ``lag``
seconds late was held up that long, and so was anything that arrived
meanwhile. The figures go to ``GET /metrics``
(``slipway_event_loop_lag_seconds``, ``slipway_event_loop_stall_max_seconds``).

It costs one wake-up per ``interval`` (10 ms: about 100 a second, a few
microseconds each). A stall shorter than the interval can fall between two
wake-ups and go unseen; one longer than it never does.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable

INTERVAL = 0.01  # seconds between wake-ups
WINDOW = 60.0  # the "recent" of longest_recent(), in seconds


class LoopMonitor:
    """Measures the event loop's stalls while started; ``on_lag`` is told
    each wake-up's lateness (seconds)."""

    def __init__(self, on_lag: Callable[[float], None] | None = None, *, interval: float = INTERVAL,
                 window: float = WINDOW, clock: Callable[[], float] = time.monotonic) -> None:
        self.on_lag = on_lag
        self.interval = interval
        self.window = window
        self.clock = clock
        self.longest = 0.0  # since started
        self._seconds: deque[tuple[int, float]] = deque()  # (whole second, longest lag in it), oldest first
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start watching the running loop (again, after :meth:`close`); a no-op when watching."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._watch(), name="slipway-loop-monitor")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def longest_recent(self) -> float:
        """The longest stall seen in the last ``window`` seconds (0 when none)."""
        horizon = self.clock() - self.window
        return max((lag for second, lag in self._seconds if second >= horizon), default=0.0)

    def note(self, lag: float) -> None:
        """Record one wake-up that came ``lag`` seconds late."""
        now = self.clock()
        self.longest = max(self.longest, lag)
        second = int(now)
        if self._seconds and self._seconds[-1][0] == second:
            self._seconds[-1] = (second, max(self._seconds[-1][1], lag))
        else:
            self._seconds.append((second, lag))
            while self._seconds and self._seconds[0][0] < now - self.window - 1:
                self._seconds.popleft()
        if self.on_lag is not None:
            self.on_lag(lag)

    async def _watch(self) -> None:
        while True:
            before = self.clock()
            await asyncio.sleep(self.interval)
            self.note(max(0.0, self.clock() - before - self.interval))
