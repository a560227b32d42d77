"""Locks and blocked versions: what keeps deploys off a service and
environment (a lock, for a while or until lifted) or one version off an
environment (after it was rolled back there, until someone unblocks it)."""

from __future__ import annotations

from store.audit import AuditLog
from store.database import Database
from store.records import BlockedVersion, Lock

ALL_ENVIRONMENTS = "*"  # a lock's environment when it locks every environment of the service


class Locks:
    """Locks on services and environments, and versions blocked after a rollback."""

    def __init__(self, database: Database, audit: AuditLog) -> None:
        self._database = database
        self._db = database.db
        self._audit = audit

    def stopping(self, service: str, environment: str) -> list[Lock]:
        """Locks that stop deploys of ``service`` to ``environment``, unexpired."""
        now = self._database.now()
        rows = self._db.query(
            "SELECT * FROM locks WHERE service = ? AND environment IN (?, ?) AND (until IS NULL OR until > ?)",
            [service, environment, ALL_ENVIRONMENTS, now],
        )
        return [Lock(**row) for row in rows]

    def all(self, service: str | None = None) -> list[Lock]:
        """Every unexpired lock (of ``service``, when given)."""
        now = self._database.now()
        where, params = ("AND service = ?", [service]) if service is not None else ("", [])
        return [Lock(**row) for row in self._db.query(
            f"SELECT * FROM locks WHERE (until IS NULL OR until > ?) {where} ORDER BY service, environment",
            [now, *params])]

    def acquire(self, service: str, environment: str, user: str, reason: str,
                until: str | None = None, source: str | None = None, keep_existing: bool = False,
                deploy_id: int | None = None) -> Lock | None:
        """Lock ``service`` on ``environment`` (``"*"``: all of them), replacing
        an existing lock of the same scope, or, with ``keep_existing``, leaving
        it be (and returning None). ``deploy_id``: the deploy that placed it."""
        lock = Lock(service, environment, user, self._database.now(), reason, until)
        with self._database.transaction():
            verb = "INSERT OR IGNORE" if keep_existing else "INSERT OR REPLACE"
            cursor = self._db.execute(
                f"{verb} INTO locks (service, environment, locked_by, locked_at, reason, until) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [lock.service, lock.environment, lock.locked_by, lock.locked_at, lock.reason, lock.until],
            )
            if cursor.rowcount == 0:
                return None
            self._audit.record(deploy_id, user, "locked", {"service": service, "environment": environment,
                                                           "reason": reason, "until": until}, source)
        return lock

    def expire(self) -> list[Lock]:
        """Remove the locks whose time is up and return them, each once
        (however many Slipways ask), so each expiry is announced once."""
        now = self._database.now()
        # asked before every deploy request and click: take the write lock only when there is something to expire
        due = self._db.execute("SELECT 1 FROM locks WHERE until IS NOT NULL AND until <= ? LIMIT 1", [now]).fetchone()
        if due is None:
            return []
        with self._database.transaction():
            expired = [Lock(**row) for row in self._db.query(
                "SELECT * FROM locks WHERE until IS NOT NULL AND until <= ? ORDER BY until", [now])]
            for lock in expired:
                self._db.execute("DELETE FROM locks WHERE service = ? AND environment = ?",
                                 [lock.service, lock.environment])
                self._audit.record(None, None, "lock_expired",
                                   {"service": lock.service, "environment": lock.environment, "reason": lock.reason,
                                    "locked_by": lock.locked_by, "until": lock.until})
        return expired

    def release(self, service: str, environment: str | None, user: str,
                source: str | None = None) -> list[Lock]:
        """Remove the lock on ``service`` for ``environment`` (``None``: every
        lock of the service) and return what was removed."""
        with self._database.transaction():
            if environment is None:
                rows = list(self._db.query("SELECT * FROM locks WHERE service = ?", [service]))
                self._db.execute("DELETE FROM locks WHERE service = ?", [service])
            else:
                rows = list(self._db.query("SELECT * FROM locks WHERE service = ? AND environment = ?",
                                           [service, environment]))
                self._db.execute("DELETE FROM locks WHERE service = ? AND environment = ?", [service, environment])
            released = [Lock(**row) for row in rows]
            if released:
                self._audit.record(None, user, "unlocked", {"service": service,
                                                            "environment": environment or ALL_ENVIRONMENTS,
                                                            "released": len(released)}, source)
        return released

    # -- versions blocked after a rollback --------------------------------------------

    def block_version(self, service: str, environment: str, version: str, user: str, reason: str,
                      rollback_id: int | None = None, source: str | None = None) -> BlockedVersion:
        """Keep ``version`` of ``service`` off ``environment`` until it is unblocked."""
        block = BlockedVersion(service, environment, version, user, self._database.now(), reason, rollback_id)
        with self._database.transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO blocked_versions (service, environment, version, blocked_by, blocked_at, "
                "reason, rollback_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [block.service, block.environment, block.version, block.blocked_by, block.blocked_at, block.reason,
                 block.rollback_id])
            self._audit.record(rollback_id, user, "version_blocked", {"service": service, "environment": environment,
                                                                      "version": version, "reason": reason}, source)
        return block

    def blocked(self, service: str, environment: str, version: str) -> BlockedVersion | None:
        """The block that keeps ``version`` off ``environment``, if any."""
        rows = list(self._db.query("SELECT * FROM blocked_versions WHERE service = ? AND environment = ? "
                                   "AND version = ?", [service, environment, version]))
        return BlockedVersion(**rows[0]) if rows else None

    def all_blocks(self, service: str | None = None) -> list[BlockedVersion]:
        """Every blocked version (of ``service``, when given)."""
        where, params = ("WHERE service = ?", [service]) if service is not None else ("", [])
        return [BlockedVersion(**row) for row in self._db.query(
            f"SELECT * FROM blocked_versions {where} ORDER BY service, environment, blocked_at", params)]

    def unblock_version(self, service: str, version: str, environment: str | None, user: str,
                        source: str | None = None) -> list[BlockedVersion]:
        """Lift the block of ``version`` on ``environment`` (``None``: on every
        environment) and return what was lifted."""
        where, params = "service = ? AND version = ?", [service, version]
        if environment is not None:
            where, params = where + " AND environment = ?", params + [environment]
        with self._database.transaction():
            lifted = [BlockedVersion(**row) for row in self._db.query(
                f"SELECT * FROM blocked_versions WHERE {where} ORDER BY environment", params)]
            self._db.execute(f"DELETE FROM blocked_versions WHERE {where}", params)
            for block in lifted:
                self._audit.record(block.rollback_id, user, "version_unblocked",
                                   {"service": service, "environment": block.environment, "version": version}, source)
        return lifted
