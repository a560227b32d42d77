"""The one object that owns the SQLite connection, the clock the store
dates rows with, and transactions. Every repository is built over it."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import sqlite_utils

from store.schema import MIGRATIONS
from store.schema import migrate as apply_migrations

Clock = Callable[[], datetime]


def stamp(moment: datetime) -> str:
    """How the store writes a moment: UTC, milliseconds. Times compared as
    strings in SQL (expiry, stale approvals) must all be written this way."""
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds")


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def _create_private(path: Path) -> None:
    """Create an empty database file readable and writable by its owner only
    (0600), whatever the umask: it holds command output and the audit log.
    SQLite gives the ``-wal`` and ``-shm`` files it makes next to it the main
    file's mode. An existing file keeps the mode it has."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    os.close(descriptor)


class Database:
    """A connection to Slipway's SQLite file, its clock and its transactions.

    ``db`` is the sqlite-utils view of the connection, for the repositories
    (and for tests and benchmarks that look at rows directly).
    """

    def __init__(self, db: sqlite_utils.Database, clock: Clock = utc_now) -> None:
        self.db = db
        self.clock = clock
        # Taken around every write transaction: by default nothing; with a
        # store writer thread, the turn it shares with this connection (store/writer.py).
        self.write_turn: Callable[[], contextlib.AbstractContextManager[None]] = contextlib.nullcontext

    @classmethod
    def open(cls, path: str | Path, clock: Clock = utc_now, *, migrate: bool = True) -> Database:
        """Open the database at ``path``, creating it when missing (readable
        by its owner only), and with ``migrate`` bring its schema up to date.

        ``slipway serve`` passes ``migrate=False``: only the process that
        holds the lease may migrate, and it does so as it takes the lease
        (``store.lease``); a standby changes nothing.
        """
        if str(path) != ":memory:":
            _create_private(Path(path))
        conn = sqlite3.connect(str(path), timeout=10)
        db = sqlite_utils.Database(conn)
        if str(path) != ":memory:":
            db.enable_wal()
        db.execute("PRAGMA foreign_keys = ON")
        db.execute("PRAGMA synchronous = NORMAL")  # safe with WAL; a crash loses no committed transaction
        database = cls(db, clock)
        if migrate:
            database.migrate()
        return database

    def migrate(self) -> int:
        """Apply every migration not yet applied, all in one write
        transaction (BEGIN IMMEDIATE), so two processes opening a new file at
        once migrate it once: the second waits, then finds nothing to do.
        Returns the schema version."""
        try:
            if self.schema_version() == len(MIGRATIONS):
                return len(MIGRATIONS)  # the usual case: a second connection takes no write lock
        except sqlite3.OperationalError:  # a new file: no schema_migrations yet
            pass
        with self.transaction():
            return apply_migrations(self.db, self.now())

    @property
    def path(self) -> str | None:
        """The database file, for a second connection of its own (None: in memory)."""
        row = self.db.execute("PRAGMA database_list").fetchone()
        return row[2] or None

    def close(self) -> None:
        self.db.close()

    def schema_version(self) -> int | None:
        """The number of the last migration applied (None: the database has no schema)."""
        return self.db.execute("SELECT max(version) FROM schema_migrations").fetchone()[0]

    def row_by_id(self, table: str, row_id: int, missing: Exception) -> dict[str, Any]:
        """The row of ``table`` whose ``id`` is ``row_id``; raises ``missing`` when there is none."""
        rows = list(self.db.query(f"SELECT * FROM {table} WHERE id = ?", [row_id]))
        if not rows:
            raise missing
        return rows[0]

    def now(self) -> str:
        """The clock's present moment, stamped as the store writes moments."""
        return stamp(self.clock())

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One transaction; inside an open one, part of it (so a caller can
        make several of the store's writes one atomic change)."""
        if self.db.conn.in_transaction:
            yield
            return
        # BEGIN IMMEDIATE takes the write lock before the state is read, so
        # the check-then-write below cannot interleave with another writer.
        with self.write_turn():
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self.db.conn.rollback()
                raise
            else:
                self.db.conn.commit()
