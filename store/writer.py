"""Store work off the event loop: one writer thread with a SQLite
connection of its own, fed by a queue, each result handed back as a future.

The event loop serves Slack's acks; SQLite work that can take tens of
milliseconds (an alert storm's deliveries: hundreds of rows each) must not
hold it. The pattern is Datasette's (``Database.execute_write_fn``): a
single thread owns a write connection and runs the functions it is given
one at a time, in order; the caller awaits a future the thread resolves.

A function run here gets the thread's own :class:`Store` (never the event
loop's: a sqlite3 connection belongs to the thread that opened it) and does
what it would do on the loop's, opening its transaction as usual; what it
returns is committed by the time the future resolves, so the caller can
tell others (e.g. the outbox worker, through the event bus) at once.

Two connections now write to one file:

- Both are in WAL mode: a reader never waits for a writer, nor a writer for
  a reader.
- Every write transaction begins with ``BEGIN IMMEDIATE``
  (``Database.transaction``), taking SQLite's write lock before it reads
  what it decides on; around it each connection takes its turn
  (:class:`WriteTurn`), handed over at once inside the process and to the
  event loop first, so the loop's writes (a click, a deploy's state) wait
  at most for the rest of the one transaction the thread is in. The thread
  keeps each transaction short (one alert delivery) and works out what it
  can before it begins.
- Checkpoints (copying the WAL back into the database, with fsyncs) are
  this thread's, outside its turn; neither connection runs one inside a
  commit (see ``_connect``).
- Other processes on the same file (a standby Slipway, ``sqlite3`` in a
  shell) still meet SQLite's own lock and busy timeout.

What stays on the event loop is what awaits, reads (WAL: never blocked),
and the loop's own writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from store import Store

log = logging.getLogger(__name__)

T = TypeVar("T")
SWITCH_INTERVAL = 0.001  # seconds (see StoreWriter.submit)
CHECKPOINT_EVERY = 0.25  # seconds between two WAL checkpoints (when anything was written)


@dataclass
class _Work(Generic[T]):
    function: Callable[[Store], T]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[T]


_STOP = object()


class WriteTurn:
    """Whose turn it is to write, between the event loop's connection and
    the writer thread's (one process, one database file).

    SQLite's write lock is neither fair nor quick to hand over: a connection
    that finds it taken polls it, sleeping 1, 2, 5, 10, 15, 20, 25… ms
    between tries. A thread writing transaction after transaction (a storm's
    deliveries, queued) retakes it within microseconds of each commit, so the
    loop's connection kept missing it and the loop slept for tens, then
    hundreds, of milliseconds. Inside one process the turn is a lock handed
    over at once; and before each of its transactions the writer lets a
    waiting loop go first. So the loop waits for at most the rest of one
    delivery's transaction (which, while the loop waits, has the GIL to
    itself). Other processes still meet SQLite's own lock and busy timeout.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition()
        self._loop_waiting = 0
        self.loop_waits = Durations()  # how long the loop's connection waited for its turn
        self.writer_holds = Durations()  # how long each of the writer's transactions held the turn

    @contextlib.contextmanager
    def loop(self) -> Iterator[None]:
        """The event loop's connection writes (taken first when both wait)."""
        if self._lock.acquire(blocking=False):  # the usual case: nobody writing
            self.loop_waits.note(0.0)
        else:
            with self._changed:
                self._loop_waiting += 1
            began = time.perf_counter()
            try:
                self._lock.acquire()
            finally:
                with self._changed:
                    self._loop_waiting -= 1
                    self._changed.notify_all()
            self.loop_waits.note(time.perf_counter() - began)
        try:
            yield
        finally:
            self._lock.release()

    @contextlib.contextmanager
    def writer(self) -> Iterator[None]:
        """The writer thread writes, once the loop is not waiting to."""
        with self._changed:
            self._changed.wait_for(lambda: self._loop_waiting == 0)
        with self._lock:
            began = time.perf_counter()
            try:
                yield
            finally:
                self.writer_holds.note(time.perf_counter() - began)


class Durations:
    """How many, how long in all, the longest, and the most recent ones
    (for a benchmark's percentiles), of something timed."""

    def __init__(self, keep: int = 10_000) -> None:
        self.count = 0
        self.total = 0.0
        self.longest = 0.0
        self.recent: deque[float] = deque(maxlen=keep)

    def note(self, seconds: float) -> None:
        self.count += 1
        self.total += seconds
        self.longest = max(self.longest, seconds)
        self.recent.append(seconds)


class WriterClosed(RuntimeError):
    """Work was sent to a :class:`StoreWriter` after it was closed."""


class StoreWriter:
    """One thread, one connection to ``store``'s database file (dated by its
    clock), running the functions sent with :meth:`submit` one at a time;
    ``store``'s own write transactions take turns with it (:class:`WriteTurn`)."""

    def __init__(self, store: Store, *, name: str = "slipway-store-writer") -> None:
        if store.path is None:
            raise ValueError("a store writer needs a database file (this store is in memory)")
        self.path = store.path
        self.clock = store.database.clock
        self.turn = WriteTurn()
        store.database.write_turn = self.turn.loop
        self._loop_store = store
        self._loop_autocheckpoint: int | None = None
        self._queue: queue.SimpleQueue[_Work[Any] | object] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._started = False
        self._closed = False

    def submit(self, function: Callable[[Store], T]) -> asyncio.Future[T]:
        """Queue ``function(store)`` for the thread; a future of what it
        returns (or raises), resolved on the calling event loop.

        Raises:
            WriterClosed: :meth:`close` was called.
        """
        if self._closed:
            raise WriterClosed("the store writer is closed")
        if not self._started:
            # This thread and the event loop share the GIL. A thread that gave it
            # up (the loop does at every socket read and write) waits up to the
            # switch interval, 5 ms by default, to get it back from a thread
            # that is computing; many such waits made every ack slow while a
            # storm was recorded. A shorter interval hands it back sooner.
            if sys.getswitchinterval() > SWITCH_INTERVAL:
                sys.setswitchinterval(SWITCH_INTERVAL)
            # From now on the thread checkpoints the WAL for both connections (see _connect).
            conn = self._loop_store.db.conn
            self._loop_autocheckpoint = conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
            conn.execute("PRAGMA wal_autocheckpoint = 0")
            self._thread.start()
            self._started = True
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Work(function, loop, future))
        return future

    async def run(self, function: Callable[[Store], T]) -> T:
        """``function(store)`` run in the thread; its result. Cancelling the
        caller does not undo the work: it still runs and commits."""
        return await asyncio.shield(self.submit(function))

    async def close(self) -> None:
        """Let the thread finish what was queued, then close its connection."""
        if self._closed:
            return
        self._closed = True
        if self._started:
            self._queue.put(_STOP)
            await asyncio.to_thread(self._thread.join)
            with contextlib.suppress(sqlite3.ProgrammingError):  # the loop's store may be closed already
                self._loop_store.db.conn.execute(f"PRAGMA wal_autocheckpoint = {int(self._loop_autocheckpoint or 1000)}")

    # -- the thread -----------------------------------------------------------------------

    def _connect(self) -> Store:
        # opened here, in the thread that will use it (sqlite3 connections are
        # bound to their thread); WAL, pragmas and busy timeout as the loop's
        # store has them. The loop's store owns the schema: nothing to migrate.
        store = Store.open(self.path, self.clock, migrate=False)
        store.database.write_turn = self.turn.writer
        # SQLite copies the WAL back into the database (with fsyncs: tens of
        # milliseconds) inside whichever commit finds the WAL longer than 1000
        # pages: on the loop's connection that holds the loop, in this thread
        # it holds the turn the loop may be waiting for. So neither connection
        # checkpoints by itself: this thread does, every CHECKPOINT_EVERY,
        # outside its turn (a PASSIVE checkpoint makes no writer wait).
        store.db.conn.execute("PRAGMA wal_autocheckpoint = 0")
        return store

    def _checkpoint(self, store: Store) -> None:
        try:
            store.db.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as exc:  # e.g. busy: the next one will do
            log.warning("store writer: WAL checkpoint failed: %s", exc)

    def _serve(self) -> None:
        store: Store | None = None
        failure: BaseException | None = None
        try:
            store = self._connect()
        except Exception as exc:  # noqa: BLE001 — every caller is told, below
            log.exception("the store writer cannot open %s", self.path)
            failure = exc
        checkpointed = time.monotonic()
        while True:
            try:
                work = self._queue.get(timeout=CHECKPOINT_EVERY)
            except queue.Empty:  # quiet: the loop's own writes are checkpointed meanwhile
                if store is not None:
                    self._checkpoint(store)
                checkpointed = time.monotonic()
                continue
            if work is _STOP:
                break
            assert isinstance(work, _Work)
            if failure is not None:
                self._deliver(work, None, failure)
                continue
            assert store is not None
            try:
                result = work.function(store)
            except BaseException as exc:  # noqa: BLE001 — handed to the caller, who decides
                self._deliver(work, None, exc)
            else:
                self._deliver(work, result, None)
            if time.monotonic() - checkpointed >= CHECKPOINT_EVERY:
                self._checkpoint(store)
                checkpointed = time.monotonic()
        if store is not None:
            self._checkpoint(store)
            store.close()

    @staticmethod
    def _deliver(work: _Work[Any], result: Any, error: BaseException | None) -> None:
        def settle() -> None:
            if work.future.cancelled():
                return
            if error is not None:
                work.future.set_exception(error)
            else:
                work.future.set_result(result)
        try:
            work.loop.call_soon_threadsafe(settle)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            log.warning("store writer: the event loop closed before a result could be handed back")
