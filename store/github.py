"""GitHub writes (deployments, their statuses, releases) as durable rows,
queued in the transaction of the deploy change that calls for them and sent
in order by a worker (``bot/changes/deployments.py``): a restart loses none,
and none is sent twice once recorded as sent."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from store.database import Database, stamp

PENDING, SENT, FAILED = "pending", "sent", "failed"


@dataclass(frozen=True)
class GitHubWrite:
    id: int
    deploy_id: int
    kind: str  # "deployment", "status" or "release"
    payload: dict[str, Any]
    attempts: int
    next_attempt_at: str | None


class GitHubWrites:
    """The github_writes and github_deployments tables."""

    def __init__(self, database: Database) -> None:
        self._database = database

    def enqueue(self, deploy_id: int, kind: str, payload: dict[str, Any], *, once_key: str | None = None) -> bool:
        """Queue a write (once per ``once_key`` and deploy, when given: False
        if one was already queued)."""
        with self._database.transaction():
            if once_key is not None:
                found = self._database.db.execute(
                    "SELECT 1 FROM github_writes WHERE deploy_id = ? AND json_extract(payload, '$.once') = ?",
                    [deploy_id, once_key]).fetchone()
                if found:
                    return False
                payload = {**payload, "once": once_key}
            self._database.db.execute(
                "INSERT INTO github_writes (deploy_id, kind, payload, state, attempts, created_at) "
                "VALUES (?, ?, ?, 'pending', 0, ?)",
                [deploy_id, kind, json.dumps(payload, sort_keys=True), self._database.now()])
            return True

    def due(self, now: datetime, limit: int = 50) -> list[GitHubWrite]:
        """Pending writes whose time has come, oldest first; a deploy's writes
        after one of its own that must wait are left for later (order per deploy)."""
        rows = self._database.db.execute(
            "SELECT id, deploy_id, kind, payload, attempts, next_attempt_at FROM github_writes "
            "WHERE state = 'pending' ORDER BY id LIMIT ?", [limit * 4]).fetchall()
        due, blocked = [], set()
        for row_id, deploy_id, kind, payload, attempts, next_at in rows:
            if deploy_id in blocked:
                continue
            if next_at is not None and next_at > stamp(now):
                blocked.add(deploy_id)
                continue
            due.append(GitHubWrite(row_id, deploy_id, kind, json.loads(payload), attempts, next_at))
            blocked.add(deploy_id)  # one at a time per deploy: the next goes after this one is settled
            if len(due) >= limit:
                break
        return due

    def next_attempt(self) -> str | None:
        """When the earliest write waiting for a retry may be tried (None: none
        waits). A pending write never tried is due at once, or waits behind an
        earlier one of its deploy that is itself waiting for a retry."""
        row = self._database.db.execute(
            "SELECT min(next_attempt_at) FROM github_writes WHERE state = 'pending' "
            "AND next_attempt_at IS NOT NULL").fetchone()
        return row[0] if row and row[0] is not None else None

    def pending_count(self) -> int:
        return self._database.db.execute("SELECT count(*) FROM github_writes WHERE state = 'pending'").fetchone()[0]

    def mark_sent(self, write_id: int, result: dict[str, Any] | None = None) -> None:
        with self._database.transaction():
            self._database.db.execute(
                "UPDATE github_writes SET state = 'sent', sent_at = ?, result = ?, attempts = attempts + 1 "
                "WHERE id = ?", [self._database.now(), json.dumps(result or {}), write_id])

    def mark_retry(self, write_id: int, error: str, next_attempt: datetime) -> None:
        with self._database.transaction():
            self._database.db.execute(
                "UPDATE github_writes SET attempts = attempts + 1, last_error = ?, next_attempt_at = ? WHERE id = ?",
                [error, stamp(next_attempt), write_id])

    def mark_failed(self, write_id: int, error: str) -> None:
        with self._database.transaction():
            self._database.db.execute(
                "UPDATE github_writes SET state = 'failed', attempts = attempts + 1, last_error = ? WHERE id = ?",
                [error, write_id])

    def fail_pending(self, deploy_id: int, error: str) -> int:
        """Give up every write still pending for ``deploy_id`` (its deployment could not be made)."""
        with self._database.transaction():
            return self._database.db.execute(
                "UPDATE github_writes SET state = 'failed', last_error = ? WHERE deploy_id = ? AND state = 'pending'",
                [error, deploy_id]).rowcount

    def refused(self, deploy_id: int) -> bool:
        """Whether a write of ``deploy_id`` was already given up (and its thread told)."""
        return self._database.db.execute(
            "SELECT 1 FROM github_writes WHERE deploy_id = ? AND state = 'failed' LIMIT 1", [deploy_id]).fetchone() \
            is not None

    def writes(self, deploy_id: int) -> list[dict[str, Any]]:
        """Every write of ``deploy_id`` as stored (for tests and /deploy show)."""
        return [dict(row) for row in self._database.db.query(
            "SELECT * FROM github_writes WHERE deploy_id = ? ORDER BY id", [deploy_id])]

    def remember_deployment(self, deploy_id: int, repository: str, github_id: int) -> None:
        with self._database.transaction():
            self._database.db.execute(
                "INSERT OR IGNORE INTO github_deployments (deploy_id, repository, github_id, created_at) "
                "VALUES (?, ?, ?, ?)", [deploy_id, repository, github_id, self._database.now()])

    def deployment_of(self, deploy_id: int) -> int | None:
        row = self._database.db.execute(
            "SELECT github_id FROM github_deployments WHERE deploy_id = ?", [deploy_id]).fetchone()
        return row[0] if row else None
