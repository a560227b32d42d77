"""Slipway's SQLite store: repositories, one per aggregate, over one
database object, behind methods named after what they mean.

=========================  ====================================================
``store.database``         :class:`Database`: the connection, the clock (``now``,
                           :func:`stamp`) and ``transaction()``
``store.status``           :class:`DeployStatus` and the state machine's one
                           table of moves, :data:`~store.status.TRANSITIONS`
``store.deploys``          :class:`Deploys`: deploys, their checklist, approvals
                           and engine reports; :func:`approval_slots`
``store.locks``            :class:`Locks`: locks and versions blocked after a
                           rollback
``store.audit``            :class:`AuditLog`: the append-only audit log
``store.alerts``           :class:`Alerts`: alert occurrences from monitors
``store.outbox``           :class:`OutboxQueue`: Slack messages waiting to be sent
``store.lease``            :class:`Lease`: which process owns the database (and
                           alone migrates it)
``store.read_models``      :class:`ReadModels`: the views' set-based reads
``store.records``          the frozen dataclasses the repositories hand out
``store.errors``           the named errors, all :class:`StoreError`
``store.schema``           versioned migrations
=========================  ====================================================

:class:`Store` puts them together on one connection: ``store.deploys``,
``store.locks``, ``store.audit``, ``store.alerts``, ``store.outbox``,
``store.lease`` and ``store.reads``. A repository writes in a transaction of its own, or joins
the one a caller opened with ``store.transaction()``, so several writes
(of one repository or several) can be one atomic change.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import sqlite_utils

from store.alerts import Alerts
from store.audit import AuditLog
from store.database import Clock, Database, stamp, utc_now
from store.deploys import Deploys, approval_slots
from store.errors import *  # noqa: F403 — every named error is part of the store's interface
from store.github import GitHubWrites
from store.intents import Intents
from store.lease import Lease, LeaseHolder
from store.locks import ALL_ENVIRONMENTS, Locks
from store.outbox import OutboxQueue, deploy_message_key
from store.read_models import ReadModels
from store.rollouts import Rollout, Rollouts, Stage
from store.records import (
    Approval,
    AuditEvent,
    BlockedVersion,
    ChecklistItem,
    Delivery,
    Deploy,
    DeployTimes,
    EngineReport,
    Lock,
    OutboxItem,
    StoredAlert,
)
from store.status import DeployStatus
from store.tokens import ApiTokens

__all__ = [
    "ALL_ENVIRONMENTS", "AlreadyApproved", "Alerts", "Approval", "AuditEvent", "AuditLog", "BlockedVersion",
    "ChecklistIncomplete", "ChecklistItem", "Clock", "Database", "Delivery", "Deploy", "DeployInFlight",
    "DeployNotFound", "DeployStatus", "DeployTimes", "Deploys", "DuplicateRequest", "EngineReport",
    "IllegalTransition", "Lease", "LeaseHolder", "Lock", "Locks", "OutboxItem", "OutboxQueue", "GitHubWrites", "ReadModels", "Rollout", "Rollouts", "Stage", "StateConflict", "Store",
    "StoreError", "StoredAlert", "UnknownMessage", "approval_slots", "deploy_message_key", "stamp", "utc_now",
]


class Store:
    """The one door to Slipway's SQLite database: its repositories, sharing
    one connection and one clock."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self.audit = AuditLog(database)
        self.outbox = OutboxQueue(database)
        self.deploys = Deploys(database, self.audit, self.outbox)
        self.locks = Locks(database, self.audit)
        self.alerts = Alerts(database)
        self.reads = ReadModels(database)
        self.intents = Intents(database)
        self.lease = Lease(database)
        self.rollouts = Rollouts(database)
        self.github = GitHubWrites(database)
        self.tokens = ApiTokens(database)  # /api/v1's bearer tokens (their hashes)

    @classmethod
    def open(cls, path: str | Path, clock: Clock = utc_now, *, migrate: bool = True) -> Store:
        """Open the database at ``path`` (created 0600 when missing), migrating
        it as needed; ``migrate=False`` leaves the schema to whoever takes
        the lease (``store.lease.acquire``), as ``slipway serve`` does."""
        return cls(Database.open(path, clock, migrate=migrate))

    @property
    def path(self) -> str | None:
        """The database file, for a second connection of its own (None: in memory)."""
        return self.database.path

    @property
    def db(self) -> sqlite_utils.Database:
        """The connection, for the few readers that need SQL of their own
        (health and metrics probes, tests, benchmarks)."""
        return self.database.db

    def transaction(self) -> contextlib.AbstractContextManager[None]:
        """One transaction; inside an open one, part of it (so a caller can
        make several of the store's writes one atomic change)."""
        return self.database.transaction()

    def close(self) -> None:
        self.database.close()
