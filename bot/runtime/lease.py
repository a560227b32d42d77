"""One ``slipway serve`` per database: the asyncio side of the lease.

A process starts as a **standby**: it answers ``GET /healthz`` (503, role
standby) and nothing else, migrates nothing, runs no worker and touches no
deploy. It reads the lease row (``store.lease``) every ``poll`` seconds and
takes the lease once nobody holds it, it has expired, or its holder is a
process of this machine that no longer exists (killed: no need to wait for
the expiry). Taking it migrates the schema in the same transaction; the
process is then the **owner** and starts the workers.

The owner renews the lease every ``heartbeat`` seconds. If a renewal finds
the lease taken by another process (this one stopped heartbeating for longer
than the expiry: a frozen VM, a stalled event loop), or no renewal got
through for longer than the expiry, the lease is **lost**: :attr:`lost` is
set, and ``slipway serve`` stops every worker at once and exits 1, for its
supervisor to start it again as a standby. On SIGTERM the owner drains, stops
its workers, then releases the lease, and a standby takes over at once.

The lease's database work runs in a thread of its own, on a connection of
its own: a standby waiting on a locked database never holds the event loop,
and the heartbeat does not wait behind the owner's other database work.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import sqlite3
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

from bot.durations import format_duration
from store import Clock, LeaseHolder, Store, utc_now

log = logging.getLogger(__name__)

OWNER = "owner"
STANDBY = "standby"
LOST = "lost"

DEFAULT_SECONDS = 20.0  # the lease's expiry: how long a silent owner keeps a standby waiting

# What a standby still answers: its own health and metrics, never Slack's or an engine's requests.
STANDBY_PATHS = frozenset({"/healthz", "/metrics"})

T = TypeVar("T")


def _proc_stat(pid: int | str) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state first), or None when there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def _machine() -> str:
    """What tells this kernel's process table apart (boot id and pid
    namespace), shortened; empty where it cannot be known (not Linux): a
    holder's pid is then never looked up, its lease only expires."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""
    return hashlib.sha256(f"{boot} {namespace}".encode()).hexdigest()[:12]


def process_holder(pid: int | None = None) -> str:
    """A process (this one by default) as a lease holder:
    ``host/pid/start/machine``, readable in a log line, and precise enough to
    tell later whether that process still runs (:func:`holder_is_gone`)."""
    pid = os.getpid() if pid is None else pid
    stat = _proc_stat(pid)
    started = stat[19] if stat else f"{time.time():.0f}"  # field 22, the start time in clock ticks
    return f"{socket.gethostname()}/{pid}/{started}/{_machine()}"


def holder_is_gone(holder: str) -> bool:
    """True only when ``holder`` is known dead: a process of this very
    machine (same boot, same pid namespace) whose pid no longer runs, is a
    zombie, or is another process now (started at another moment). Anything
    uncertain (another host, another container, not Linux) is False: that
    lease is waited out."""
    try:
        _host, pid, started, machine = holder.split("/")
    except ValueError:
        return False
    if not machine or machine != _machine() or not pid.isdigit():
        return False
    stat = _proc_stat(pid)
    return stat is None or stat[0] in ("Z", "X") or stat[19] != started


class LeaseKeeper:
    """Holds the database's lease for this process: waits as a standby until
    it can take it, then keeps it with a heartbeat.

    ``seconds``: the lease's expiry; ``heartbeat``: how often the owner
    renews it (default a quarter of ``seconds``); ``poll``: how often a
    standby looks (default the heartbeat, at most one second). ``clock``
    dates the lease rows (tests move it to expire a lease); ``is_gone``
    says whether a holder is known dead (:func:`holder_is_gone`).
    """

    def __init__(self, path: str | Path, *, seconds: float = DEFAULT_SECONDS, heartbeat: float | None = None,
                 poll: float | None = None, holder: str | None = None, clock: Clock = utc_now,
                 is_gone: Callable[[str], bool] = holder_is_gone,
                 monotonic: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.path = str(path)
        self.seconds = seconds
        self.heartbeat = heartbeat if heartbeat is not None else seconds / 4
        self.poll = poll if poll is not None else min(1.0, self.heartbeat)
        self.holder = holder or process_holder()
        self.clock = clock
        self.is_gone = is_gone
        self.monotonic = monotonic
        self.sleep = sleep
        self.role = STANDBY
        self.owner: LeaseHolder | None = None  # who holds the lease while this process waits
        self.lost = asyncio.Event()  # set when the lease was lost: stop every worker now
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="slipway-lease")
        self._store: Store | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._taking = False  # an acquire is (or was, when cancelled) on its way in the lease's thread

    async def _call(self, work: Callable[[], T]) -> T:
        """Run ``work`` in the lease's thread (its connection belongs to that thread)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, work)

    async def open(self) -> LeaseKeeper:
        """Open the lease's own connection to the database (creating the file
        when missing), without migrating anything."""
        self._store = await self._call(lambda: Store.open(self.path, self.clock, migrate=False))
        return self

    @property
    def store(self) -> Store:
        if self._store is None:
            raise RuntimeError("LeaseKeeper.open() first")
        return self._store

    def standing(self) -> dict[str, Any]:
        """This process's role, for ``GET /healthz``; a standby also names
        who owns the database and until when."""
        if self.role == STANDBY and self.owner is not None:
            return {"role": STANDBY, "owner": self.owner.holder, "owner_until": self.owner.expires_at}
        return {"role": self.role}

    async def acquire(self) -> None:
        """Return once this process owns the database (its schema migrated),
        waiting as a standby as long as it takes; the lease is then kept
        with a heartbeat until :meth:`release`."""
        while not await self.try_acquire():
            await self.sleep(self.poll)

    async def try_acquire(self) -> bool:
        """Look once: take the lease if it is there for the taking (True),
        else stay a standby, saying who owns the database (False)."""
        if self.role != STANDBY:
            return self.role == OWNER
        store = self.store
        held = await self._call(lambda: store.lease.held_by_another(self.holder))
        replacing = held.holder if held is not None and self.is_gone(held.holder) else None
        if held is None or replacing is not None:
            # set until the answer is in: a wait cancelled meanwhile (SIGTERM) leaves the
            # thread to finish, perhaps taking the lease, which release() then gives back
            self._taking = True
            try:
                taken = await self._call(lambda: store.lease.acquire(self.holder, self.seconds, replacing=replacing))
            except sqlite3.OperationalError as exc:  # locked beyond the busy timeout: look again
                log.warning("could not take the lease on %s yet (%s); trying again", self.path, exc)
                taken = None
            self._taking = False
            if taken is not None:
                self._owned(replacing)
                return True
            held = await self._call(store.lease.current)
        if held is not None and (self.owner is None or held.holder != self.owner.holder):
            log.warning("standby: %s is owned by %s (lease until %s); this process waits to take over, and "
                        "until then runs no worker and answers 503", self.path, held.holder, held.expires_at,
                        extra={"role": STANDBY, "owner": held.holder})
        self.owner = held
        return False

    def _owned(self, replacing: str | None) -> None:
        self.role, self.owner = OWNER, None
        how = f", taken from {replacing}, which no longer runs" if replacing else ""
        log.info("this process (%s) owns %s%s: lease %s, renewed every %s", self.holder, self.path, how,
                 format_duration(self.seconds), format_duration(self.heartbeat), extra={"role": OWNER})
        self._heartbeat = asyncio.create_task(self._keep(), name="lease-heartbeat")

    async def _keep(self) -> None:
        store, renewed_at = self.store, self.monotonic()
        while True:
            await self.sleep(self.heartbeat)
            try:
                renewed = await self._call(lambda: store.lease.renew(self.holder, self.seconds))
            except sqlite3.Error as exc:
                silent = self.monotonic() - renewed_at
                if silent < self.seconds:
                    log.warning("could not renew the lease on %s (%s); trying again", self.path, exc)
                    continue
                self._lose(f"no renewal got through for {format_duration(silent)} ({exc}); "
                           "another process may have taken it")
                return
            if renewed is None:
                taker = await self._call(store.lease.current)
                self._lose(f"{taker.holder if taker else 'nobody'} holds it now")
                return
            renewed_at = self.monotonic()

    def _lose(self, why: str) -> None:
        self.role = LOST
        self.lost.set()
        log.critical("LOST THE LEASE on %s: %s. Stopping every worker now and exiting; restarted, this process "
                     "waits as a standby", self.path, why, extra={"role": LOST})

    async def release(self) -> None:
        """Stop the heartbeat and give the lease up (when still held), so a
        standby takes over at once. Call it after the workers have stopped."""
        await self._stop_heartbeat()
        if self.role == OWNER or self._taking:
            released = await self._call(lambda: self.store.lease.release(self.holder))
            self.role = STANDBY
            if released:
                log.info("released the lease on %s: a standby may take over", self.path)

    async def _stop_heartbeat(self) -> None:
        task, self._heartbeat = self._heartbeat, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def close(self) -> None:
        """Stop the heartbeat (without releasing) and close the lease's connection."""
        await self._stop_heartbeat()
        if self._store is not None:
            store, self._store = self._store, None
            await self._call(store.close)
        self._executor.shutdown(wait=False)


def owner_only(keeper: LeaseKeeper) -> Callable[..., Awaitable[web.StreamResponse]]:
    """An aiohttp middleware: until this process owns the database, every
    request but the health check and the metrics is answered 503 (Slack and
    engines retry), with a JSON error saying why."""

    @web.middleware
    async def middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                         ) -> web.StreamResponse:
        if keeper.role != OWNER and request.path not in STANDBY_PATHS:
            return web.json_response(
                {"error": "this Slipway is a standby: another process owns the database; this one takes over "
                          "when that one stops (see GET /healthz)", **keeper.standing()},
                status=503, headers={"Retry-After": str(max(1, round(keeper.poll)))})
        return await handler(request)

    return middleware
