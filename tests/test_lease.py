"""The lease that makes one process the owner of a database: the
repository's atomic acquire, renew and release on a clock the tests move,
the keeper's heartbeat, and the database files' permissions."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.runtime.lease import OWNER, STANDBY, LeaseKeeper, holder_is_gone, process_holder
from store import Store, schema
from tests.conftest import Clock

LATEST = len(schema.MIGRATIONS)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "slipway.db"


def opened(db: Path, clock: Clock) -> Store:
    """A process's view of the database, as ``slipway serve`` opens it: not migrated."""
    return Store.open(db, clock, migrate=False)


def version(db: Path) -> int | None:
    with sqlite3.connect(db) as conn:
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'schema_migrations'").fetchone():
            return None
        return conn.execute("SELECT max(version) FROM schema_migrations").fetchone()[0]


def old_database(db: Path, up_to: int) -> None:
    """A database migrated up to ``up_to`` only (an older Slipway's)."""
    old = Store.open(db, migrate=False)
    old.db["schema_migrations"].create({"version": int, "applied_at": str}, pk="version")
    for number, migration in enumerate(schema.MIGRATIONS[:up_to], start=1):
        migration(old.db)
        old.db["schema_migrations"].insert({"version": number, "applied_at": "2026-11-01T00:00:00.000+00:00"})
    old.close()


# -- the repository -----------------------------------------------------------------


def test_the_first_process_takes_the_lease_and_migrates_a_new_file(db: Path, clock: Clock) -> None:
    store = opened(db, clock)
    assert version(db) is None and store.lease.current() is None  # opening migrated nothing
    taken = store.lease.acquire("a", 20)
    assert taken is not None and taken.holder == "a"
    assert taken.acquired_at == taken.heartbeat_at == "2026-11-23T12:00:00.000+00:00"
    assert taken.expires_at == "2026-11-23T12:00:20.000+00:00"
    assert version(db) == LATEST
    assert store.lease.current() == taken
    store.close()


def test_a_held_lease_is_refused_until_it_expires_and_then_the_old_holder_cannot_renew(db: Path,
                                                                                        clock: Clock) -> None:
    a, b = opened(db, clock), opened(db, clock)
    assert a.lease.acquire("a", 20) is not None
    assert b.lease.acquire("b", 20) is None
    assert b.lease.held_by_another("b").holder == "a" and a.lease.held_by_another("a") is None

    clock.advance(seconds=19.999)
    assert b.lease.acquire("b", 20) is None  # not yet
    clock.advance(seconds=0.001)
    assert b.lease.held_by_another("b") is None
    taken = b.lease.acquire("b", 20)
    assert taken is not None and taken.holder == "b" and taken.expires_at == "2026-11-23T12:00:40.000+00:00"

    assert a.lease.renew("a", 20) is None  # another took it: the old owner must stop
    assert a.lease.release("a") is False  # and cannot free what is not its own
    assert b.lease.current().holder == "b"
    a.close(), b.close()


def test_renewing_moves_the_expiry_and_keeps_when_it_was_taken(db: Path, clock: Clock) -> None:
    store = opened(db, clock)
    store.lease.acquire("a", 20)
    clock.advance(seconds=5)
    renewed = store.lease.renew("a", 20)
    assert renewed.acquired_at == "2026-11-23T12:00:00.000+00:00"
    assert renewed.heartbeat_at == "2026-11-23T12:00:05.000+00:00"
    assert renewed.expires_at == "2026-11-23T12:00:25.000+00:00"
    # expired, but nobody took it: it is still this holder's
    clock.advance(seconds=60)
    assert store.lease.renew("a", 20).expires_at == "2026-11-23T12:01:25.000+00:00"
    # taking it again as its holder keeps the moment it was first taken
    assert store.lease.acquire("a", 20).acquired_at == "2026-11-23T12:00:00.000+00:00"
    store.close()


def test_a_released_lease_is_taken_at_once(db: Path, clock: Clock) -> None:
    a, b = opened(db, clock), opened(db, clock)
    a.lease.acquire("a", 20)
    assert b.lease.release("b") is False
    assert a.lease.release("a") is True
    assert a.lease.current() is None and a.lease.renew("a", 20) is None
    assert b.lease.acquire("b", 20).holder == "b"
    a.close(), b.close()


def test_a_holder_known_dead_is_replaced_before_its_lease_expires(db: Path, clock: Clock) -> None:
    a, b = opened(db, clock), opened(db, clock)
    a.lease.acquire("a", 20)
    assert b.lease.acquire("b", 20, replacing="someone else") is None  # only the named holder is replaced
    assert b.lease.acquire("b", 20, replacing="a").holder == "b"
    a.close(), b.close()


def test_a_standby_migrates_nothing_only_the_owner_does(db: Path, clock: Clock) -> None:
    old_database(db, up_to=10)  # the lease exists from migration 10
    owner = opened(db, clock)
    owner.db.execute("INSERT INTO lease VALUES ('slipway', 'older', ?, ?, ?)",
                     ["2026-11-23T12:00:00.000+00:00"] * 2 + ["2026-11-23T12:00:20.000+00:00"])
    owner.db.conn.commit()
    standby = opened(db, clock)
    assert standby.lease.acquire("new", 20) is None
    assert version(db) == 10  # the schema is the owner's business
    clock.advance(seconds=21)
    assert standby.lease.acquire("new", 20) is not None
    assert version(db) == LATEST
    owner.close(), standby.close()


def test_two_first_starts_at_once_migrate_once_and_one_owns(db: Path, clock: Clock) -> None:
    start = threading.Barrier(4)
    won: dict[str, bool] = {}

    def serve(holder: str) -> None:
        store = opened(db, clock)  # each thread its own connection, as each process has
        start.wait()
        won[holder] = store.lease.acquire(holder, 20) is not None
        store.close()

    threads = [threading.Thread(target=serve, args=(f"p{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(won.values()) == [False, False, False, True]
    with sqlite3.connect(db) as conn:
        versions = [row[0] for row in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]
    assert versions == list(range(1, LATEST + 1))


def test_migrating_at_open_is_one_transaction_so_two_opens_at_once_migrate_once(db: Path) -> None:
    start = threading.Barrier(3)
    errors: list[BaseException] = []

    def open_it() -> None:
        start.wait()
        try:
            Store.open(db).close()
        except BaseException as exc:  # noqa: BLE001 — collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == [] and version(db) == LATEST


# -- the database files ----------------------------------------------------------------


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The usual umask, under which the files used to be 0644."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_database_and_its_wal_and_shm_are_created_readable_by_their_owner_only(db: Path, umask_022) -> None:
    store = Store.open(db)
    store.audit.record(None, "U0DAVE", "something")  # the -wal has content, the -shm is mapped
    files = [db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")]
    assert all(path.exists() for path in files)
    assert {path.name: oct(mode(path)) for path in files} == {path.name: "0o600" for path in files}
    store.close()


def test_an_existing_database_keeps_the_mode_it_was_given(db: Path, umask_022) -> None:
    Store.open(db).close()
    db.chmod(0o640)  # an operator's choice (a backup group, say)
    Store.open(db).close()
    assert mode(db) == 0o640


# -- the keeper (asyncio) -------------------------------------------------------------------


class Gate:
    """A sleep that returns only when the test opens it: a heartbeat held still."""

    def __init__(self) -> None:
        self.opened = asyncio.Event()

    async def __call__(self, seconds: float) -> None:
        await self.opened.wait()
        self.opened.clear()


async def test_a_keeper_that_stops_heartbeating_loses_the_lease_to_the_standby(db: Path, clock: Clock) -> None:
    silent = Gate()
    a = await LeaseKeeper(db, seconds=20, holder="a", clock=clock, is_gone=lambda _: False, sleep=silent).open()
    b = await LeaseKeeper(db, seconds=20, holder="b", clock=clock, is_gone=lambda _: False, poll=0.01).open()
    try:
        assert await a.try_acquire() is True and a.role == OWNER and a.standing() == {"role": "owner"}
        assert version(db) == LATEST
        assert await b.try_acquire() is False
        assert b.standing() == {"role": STANDBY, "owner": "a", "owner_until": "2026-11-23T12:00:20.000+00:00"}

        waiting = asyncio.create_task(b.acquire())
        clock.advance(seconds=20)  # a's heartbeat is held: its lease expires
        await asyncio.wait_for(waiting, 10)
        assert b.role == OWNER

        silent.opened.set()  # a's heartbeat wakes, renews, and finds the lease b's
        await asyncio.wait_for(a.lost.wait(), 10)
        assert a.role == "lost" and a.standing() == {"role": "lost"}
        assert not b.lost.is_set()
    finally:
        await a.close()
        await b.release()
        await b.close()
    after = Store.open(db, migrate=False)
    assert after.lease.current() is None  # b released it
    after.close()


async def test_a_keeper_whose_renewals_fail_longer_than_the_expiry_gives_up(db: Path, clock: Clock) -> None:
    readings = iter([0.0, 19.0, 20.0])  # the heartbeat's clock: at its start, then after each failed renewal
    attempts: list[str] = []

    def locked(holder: str, seconds: float) -> None:
        attempts.append(holder)
        raise sqlite3.OperationalError("database is locked")

    a = await LeaseKeeper(db, seconds=20, holder="a", clock=clock, sleep=lambda _: asyncio.sleep(0),
                          monotonic=lambda: next(readings)).open()
    a.store.lease.renew = locked  # every renewal fails, as on a database locked for good
    try:
        assert await a.try_acquire()
        await asyncio.wait_for(a.lost.wait(), 10)
        # the failure 19 s after the last renewal was retried (the lease may still be its own);
        # the one at 20 s, the lease's length, was not
        assert attempts == ["a", "a"] and a.role == "lost"
    finally:
        await a.close()


async def test_a_keeper_takes_over_at_once_from_a_holder_that_no_longer_runs(db: Path, clock: Clock) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    holder = process_holder(dead.pid)
    dead.kill()
    dead.wait()
    old = Store.open(db, clock)
    old.lease.acquire(holder, 3600)
    old.close()
    keeper = await LeaseKeeper(db, clock=clock).open()
    try:
        assert await keeper.try_acquire() is True  # without waiting an hour
    finally:
        await keeper.release()
        await keeper.close()


def test_only_a_process_of_this_machine_that_no_longer_runs_is_gone() -> None:
    assert holder_is_gone(process_holder()) is False  # this one
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        alive = process_holder(child.pid)
        assert holder_is_gone(alive) is False
    finally:
        child.kill()
        child.wait()
    assert holder_is_gone(alive) is True
    host, pid, started, machine = alive.split("/")
    assert holder_is_gone(f"{host}/{os.getpid()}/{started}/{machine}") is True  # that pid, another process
    assert holder_is_gone(f"{host}/{pid}/{started}/0123456789ab") is False  # another machine: waited out
    assert holder_is_gone(f"{host}/{pid}/{started}/") is False  # a machine that could not tell
    assert holder_is_gone("not a holder") is False
