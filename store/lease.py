"""The lease: which ``slipway serve`` process owns the database.

Slipway runs as one active process per database. The owner holds a lease
(a row: holder, when taken, last heartbeat, expiry) and renews it; any other
process on the same file is a standby that only reads the row until the
lease is released or expires. Every change is one BEGIN IMMEDIATE
transaction that compares holder and expiry before it writes, so two
processes can never both take it. Moments come from the database's clock
(tests expire a lease by moving it).

Only the owner migrates: :meth:`Lease.acquire` brings the schema up to date
in the very transaction that takes the lease. On a new file (no lease table
yet) the first process to start takes the lease and migrates; one starting
at the same moment waits for that write lock, then finds the lease held.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from store.database import Database, stamp
from store.schema import migrate as apply_migrations

LEASE = "slipway"  # the name of the one lease (the table's primary key)


@dataclass(frozen=True)
class LeaseHolder:
    """Who holds the lease, since when and until when (ISO timestamps, as the store writes them)."""

    holder: str
    acquired_at: str
    heartbeat_at: str
    expires_at: str


class Lease:
    """The database's one lease: read, taken, renewed and released atomically."""

    def __init__(self, database: Database) -> None:
        self._database = database
        self._db = database.db

    def current(self) -> LeaseHolder | None:
        """Who holds the lease (expired or not); None when nobody does, or
        when the schema predates the lease (a new file)."""
        if not self._db["lease"].exists():
            return None
        rows = list(self._db.query("SELECT holder, acquired_at, heartbeat_at, expires_at FROM lease WHERE name = ?",
                                   [LEASE]))
        return LeaseHolder(**rows[0]) if rows else None

    def held_by_another(self, holder: str) -> LeaseHolder | None:
        """The lease when someone other than ``holder`` holds it and it has
        not expired (None: ``holder`` could take it now). A read: no lock."""
        current = self.current()
        if current is None or current.holder == holder or current.expires_at <= self._database.now():
            return None
        return current

    def acquire(self, holder: str, seconds: float, *, replacing: str | None = None) -> LeaseHolder | None:
        """Take the lease for ``seconds`` when nobody holds it, it has expired
        or it is ``holder``'s already; and, in the same transaction, apply
        every migration not yet applied (only an owner migrates).
        ``replacing``: a holder known to be dead (a process of this machine
        that no longer exists) whose lease is taken before it expires.

        Returns the lease taken, or None when another process holds it.

        Raises:
            sqlite3.OperationalError: the database stayed locked (by another
                writer) beyond the connection's busy timeout; try again later.
        """
        with self._database.transaction():
            current = self.current()
            now = self._database.clock()
            if (current is not None and current.holder not in (holder, replacing)
                    and current.expires_at > stamp(now)):
                return None
            apply_migrations(self._db, stamp(now))  # the lease table is migration 10's
            taken = LeaseHolder(holder, stamp(now), stamp(now), stamp(now + timedelta(seconds=seconds)))
            if current is not None and current.holder == holder:
                taken = LeaseHolder(holder, current.acquired_at, taken.heartbeat_at, taken.expires_at)
            self._db.execute(
                "INSERT OR REPLACE INTO lease (name, holder, acquired_at, heartbeat_at, expires_at) "
                "VALUES (?, ?, ?, ?, ?)", [LEASE, taken.holder, taken.acquired_at, taken.heartbeat_at, taken.expires_at])
            return taken

    def renew(self, holder: str, seconds: float) -> LeaseHolder | None:
        """Extend ``holder``'s lease to ``seconds`` from now (a heartbeat).
        Returns None when the lease is no longer ``holder``'s: another
        process took it (it had expired) or it was released. A lease that
        expired but that nobody took is still ``holder``'s, and is renewed.

        Raises:
            sqlite3.OperationalError: the database stayed locked beyond the
                busy timeout (the lease may still be ``holder``'s).
        """
        with self._database.transaction():
            now = self._database.clock()
            cursor = self._db.execute(
                "UPDATE lease SET heartbeat_at = ?, expires_at = ? WHERE name = ? AND holder = ?",
                [stamp(now), stamp(now + timedelta(seconds=seconds)), LEASE, holder])
            if cursor.rowcount != 1:
                return None
            return self.current()

    def release(self, holder: str) -> bool:
        """Give the lease up, so a standby takes over at once instead of at
        its expiry. False when it was not ``holder``'s (nothing changes)."""
        with self._database.transaction():
            if not self._db["lease"].exists():
                return False
            cursor = self._db.execute("DELETE FROM lease WHERE name = ? AND holder = ?", [LEASE, holder])
            return cursor.rowcount == 1
