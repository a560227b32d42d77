"""Slipway's SQLite store: deploys, checklist ticks, approvals, locks and an
append-only audit log, behind functions named after what they mean.

Every state change is one transaction that first checks the current state
and appends an audit event, so a double click or a retried Slack request
finds the state already moved and changes nothing.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import sqlite_utils

from store.schema import ACTIVE_STATES, FINISHED_STATES, migrate

Clock = Callable[[], datetime]


def stamp(moment: datetime) -> str:
    """How the store writes a moment: UTC, milliseconds. Times compared as
    strings in SQL (expiry, stale approvals) must all be written this way."""
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds")


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


class StoreError(Exception):
    """Base of the store's named errors."""


class DeployNotFound(StoreError, LookupError):
    """No deploy has that id."""


class StateConflict(StoreError):
    """The deploy is not in a state that allows the change asked for.

    ``current`` is the state it was found in.
    """

    def __init__(self, deploy_id: int, current: str, wanted: str) -> None:
        super().__init__(f"deploy {deploy_id} is {current}, cannot become {wanted}")
        self.deploy_id = deploy_id
        self.current = current
        self.wanted = wanted


class DeployInFlight(StoreError):
    """Another deploy already occupies that service and environment."""

    def __init__(self, existing: "Deploy") -> None:
        super().__init__(f"deploy {existing.id} is {existing.status}")
        self.existing = existing


class DuplicateRequest(StoreError):
    """This Slack request (same trigger id) was already recorded."""

    def __init__(self, existing: "Deploy") -> None:
        super().__init__(f"already recorded as deploy {existing.id}")
        self.existing = existing


class AlreadyApproved(StoreError):
    """That person's approval is already counted."""


class ChecklistIncomplete(StoreError):
    """The approval would be the final one but items are still unticked."""

    def __init__(self, unticked: list[str]) -> None:
        super().__init__(f"{len(unticked)} checklist item(s) unticked")
        self.unticked = unticked


@dataclass(frozen=True)
class ChecklistItem:
    position: int
    label: str
    ticked_by: str | None
    ticked_at: str | None

    @property
    def ticked(self) -> bool:
        return self.ticked_by is not None


@dataclass(frozen=True)
class Approval:
    user_id: str
    approved_at: str
    counts_as: str = "approve"  # what the giver's roles let it count as: approve | override | both


def approval_slots(kinds: list[str], required: int, override: bool) -> int:
    """How many of the approvals a deploy needs are filled by approvals of
    these ``kinds``: ``required`` normal ones (``approve`` or ``both``) and,
    when ``override``, one freeze-override approval (``override`` or
    ``both``) by another person. The deploy is approved when this reaches
    ``required + override``."""
    normal, both, override_only = kinds.count("approve"), kinds.count("both"), kinds.count("override")
    if not override:
        return min(required, normal + both)
    if override_only:
        return 1 + min(required, normal + both)
    if both:  # one of them gives the override approval unless they are all needed as approvers
        return max(1 + min(required, normal + both - 1), min(required, normal + both))
    return min(required, normal)


@dataclass(frozen=True)
class Deploy:
    """One deploy record, with its checklist and approvals."""

    id: int
    service: str
    environment: str
    version: str
    version_prefixed: bool
    status: str
    status_reason: str | None
    requested_by: str
    requested_at: str
    previous_version: str | None
    approved_at: str | None
    started_at: str | None
    finished_at: str | None
    rollback_of: int | None
    channel: str | None
    message_ts: str | None
    permalink: str | None
    executor_kind: str | None = None
    executor_ref: str | None = None  # JSON: what a restarted Slipway needs to follow the engine up
    exit_code: int | None = None
    run_url: str | None = None
    engine_summary: str | None = None
    log_tail: str | None = None
    verification: str | None = None  # JSON list of check results
    expires_at: str | None = None  # a request awaiting approval expires then
    reminded_at: str | None = None
    migration: bool = False  # carries a database migration
    notified_status: str | None = None  # the last status its requester was sent a DM about
    override_reason: str | None = None  # set: a request to deploy inside a freeze, and why
    override_freeze: str | None = None  # JSON list of the freeze occurrences it overrides
    checklist: tuple[ChecklistItem, ...] = ()
    approvals: tuple[Approval, ...] = ()

    @property
    def reference(self) -> dict[str, Any]:
        return json.loads(self.executor_ref) if self.executor_ref else {}

    @property
    def overridden_freezes(self) -> list[dict[str, str]]:
        """The freeze occurrences this deploy may run in (``--override``):
        each with ``key``, ``reason``, ``schedule``, ``from`` and ``until``."""
        return json.loads(self.override_freeze) if self.override_freeze else []

    @property
    def checks(self) -> list[dict[str, Any]]:
        return json.loads(self.verification) if self.verification else []

    @property
    def duration_seconds(self) -> float | None:
        """From the engine's start to the end (None until both are known)."""
        if not (self.started_at and self.finished_at):
            return None
        return (datetime.fromisoformat(self.finished_at) - datetime.fromisoformat(self.started_at)).total_seconds()

    @property
    def display_version(self) -> str:
        return ("v" if self.version_prefixed else "") + self.version

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_STATES

    @property
    def approvers(self) -> list[str]:
        return [a.user_id for a in self.approvals]

    @property
    def unticked(self) -> list[str]:
        return [item.label for item in self.checklist if not item.ticked]


@dataclass(frozen=True)
class EngineReport:
    deploy_id: int
    at: str
    status: str  # running | succeeded | failed
    log_url: str | None
    message: str | None

    @property
    def terminal(self) -> bool:
        return self.status in ("succeeded", "failed")


@dataclass(frozen=True)
class Lock:
    service: str
    environment: str  # "*" locks every environment of the service
    locked_by: str
    locked_at: str
    reason: str
    until: str | None = None


@dataclass(frozen=True)
class BlockedVersion:
    """A version kept off an environment (after it was rolled back there)."""

    service: str
    environment: str
    version: str
    blocked_by: str
    blocked_at: str
    reason: str
    rollback_id: int | None = None


@dataclass(frozen=True)
class AuditEvent:
    id: int
    at: str
    deploy_id: int | None
    actor: str | None
    action: str
    detail: dict[str, Any] = field(default_factory=dict)
    source: str | None = None


ALL_ENVIRONMENTS = "*"


def deploy_message_key(deploy_id: int) -> str:
    """The outbox's name for a deploy's message."""
    return f"deploy-{deploy_id}"


class Store:
    """The one door to Slipway's SQLite database."""

    def __init__(self, db: sqlite_utils.Database, clock: Clock = utc_now) -> None:
        self.db = db
        self.clock = clock

    @classmethod
    def open(cls, path: str | Path, clock: Clock = utc_now) -> "Store":
        """Open (creating and migrating as needed) the database at ``path``."""
        conn = sqlite3.connect(str(path), timeout=10)
        db = sqlite_utils.Database(conn)
        if str(path) != ":memory:":
            db.enable_wal()
        db.execute("PRAGMA foreign_keys = ON")
        db.execute("PRAGMA synchronous = NORMAL")  # safe with WAL; a crash loses no committed transaction
        store = cls(db, clock)
        migrate(db, store._now())
        return store

    @property
    def path(self) -> str | None:
        """The database file, for a second connection of its own (None: in memory)."""
        row = self.db.execute("PRAGMA database_list").fetchone()
        return row[2] or None

    def close(self) -> None:
        self.db.close()

    def _now(self) -> str:
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
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.conn.rollback()
            raise
        else:
            self.db.conn.commit()

    def _audit(self, deploy_id: int | None, actor: str | None, action: str,
               detail: dict[str, Any] | None = None, source: str | None = None) -> None:
        self.db.execute(
            "INSERT INTO audit (at, deploy_id, actor, action, detail, source) VALUES (?, ?, ?, ?, ?, ?)",
            [self._now(), deploy_id, actor, action, json.dumps(detail or {}, sort_keys=True), source],
        )

    # -- reading ------------------------------------------------------------------

    def get_deploy(self, deploy_id: int) -> Deploy:
        """The deploy with that id, with its checklist and approvals.

        Raises:
            DeployNotFound: no deploy has that id.
        """
        rows = list(self.db.query("SELECT * FROM deploys WHERE id = ?", [deploy_id]))
        if not rows:
            raise DeployNotFound(f"no deploy #{deploy_id}")
        return self._hydrate(rows[0])

    def _hydrate(self, row: dict[str, Any]) -> Deploy:
        checklist = tuple(
            ChecklistItem(r["position"], r["label"], r["ticked_by"], r["ticked_at"])
            for r in self.db.query(
                "SELECT * FROM checklist_items WHERE deploy_id = ? ORDER BY position", [row["id"]]
            )
        )
        approvals = tuple(
            Approval(r["user_id"], r["approved_at"], r.get("counts_as") or "approve")
            for r in self.db.query(
                "SELECT * FROM approvals WHERE deploy_id = ? ORDER BY approved_at, rowid", [row["id"]]
            )
        )
        fields = {k: row[k] for k in Deploy.__dataclass_fields__ if k in row}
        fields["version_prefixed"] = bool(row["version_prefixed"])
        fields["migration"] = bool(row.get("migration"))
        return Deploy(**fields, checklist=checklist, approvals=approvals)

    def in_flight(self, service: str, environment: str) -> Deploy | None:
        """The deploy occupying ``service`` on ``environment``, if any."""
        placeholders = ", ".join("?" for _ in ACTIVE_STATES)
        rows = list(self.db.query(
            f"SELECT * FROM deploys WHERE service = ? AND environment = ? AND status IN ({placeholders})",
            [service, environment, *ACTIVE_STATES],
        ))
        return self._hydrate(rows[0]) if rows else None

    def latest_successful(self, service: str, environment: str) -> Deploy | None:
        """The most recent deploy of ``service`` that succeeded on ``environment``:
        what is live there now."""
        rows = list(self.db.query(
            "SELECT * FROM deploys WHERE service = ? AND environment = ? AND status = 'succeeded' "
            "ORDER BY finished_at DESC, id DESC LIMIT 1",
            [service, environment],
        ))
        return self._hydrate(rows[0]) if rows else None

    def has_succeeded(self, service: str, environment: str, version: str) -> bool:
        """Whether ``version`` of ``service`` ever succeeded on ``environment``."""
        row = self.db.execute(
            "SELECT 1 FROM deploys WHERE service = ? AND environment = ? AND version = ? "
            "AND status = 'succeeded' LIMIT 1",
            [service, environment, version],
        ).fetchone()
        return row is not None

    def find_by_trigger(self, trigger_id: str) -> Deploy | None:
        rows = list(self.db.query("SELECT * FROM deploys WHERE trigger_id = ?", [trigger_id]))
        return self._hydrate(rows[0]) if rows else None

    def deploys_in(self, statuses: tuple[str, ...]) -> list[Deploy]:
        placeholders = ", ".join("?" for _ in statuses)
        rows = self.db.query(f"SELECT * FROM deploys WHERE status IN ({placeholders}) ORDER BY id", list(statuses))
        return [self._hydrate(r) for r in rows]

    def audit_events(self, deploy_id: int | None = None) -> list[AuditEvent]:
        """The audit log, oldest first; only one deploy's when ``deploy_id`` is given."""
        where, params = ("WHERE deploy_id = ?", [deploy_id]) if deploy_id is not None else ("", [])
        return [
            AuditEvent(r["id"], r["at"], r["deploy_id"], r["actor"], r["action"], json.loads(r["detail"] or "{}"), r["source"])
            for r in self.db.query(f"SELECT * FROM audit {where} ORDER BY id", params)
        ]

    # -- deploy lifecycle -------------------------------------------------------------

    def create_deploy(
        self,
        *,
        service: str,
        environment: str,
        version: str,
        version_prefixed: bool,
        requested_by: str,
        previous_version: str | None,
        checklist: list[str],
        needs_approval: bool,
        trigger_id: str | None = None,
        rollback_of: int | None = None,
        source: str | None = None,
        expires_at: str | None = None,
        migration: bool = False,
        override_reason: str | None = None,
        override_freeze: list[dict[str, str]] | None = None,
    ) -> Deploy:
        """Record a new deploy request (``awaiting_approval``, or ``approved``
        straight away when the environment needs no approval). A request
        awaiting approval expires at ``expires_at``. ``override_reason``: it
        asks to deploy inside the freeze occurrences ``override_freeze``.

        Raises:
            DuplicateRequest: a deploy was already recorded for ``trigger_id``.
            DeployInFlight: another deploy occupies the service+environment.
        """
        now = self._now()
        status = "awaiting_approval" if needs_approval else "approved"
        try:
            with self.transaction():
                # Insert first and let the unique indexes (trigger id; one deploy in
                # flight) refuse a duplicate: no look-ups on the hot path, no race.
                cursor = self.db.execute(
                    "INSERT INTO deploys (service, environment, version, version_prefixed, status, requested_by, "
                    "requested_at, trigger_id, previous_version, approved_at, rollback_of, updated_at, expires_at, "
                    "migration) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [service, environment, version, int(version_prefixed), status, requested_by, now,
                     trigger_id, previous_version, None if needs_approval else now, rollback_of, now,
                     expires_at if needs_approval else None, int(migration)],
                )
                deploy_id = cursor.lastrowid
                self._record_request(deploy_id, requested_by, service, environment, version, checklist,
                                     needs_approval, source)
                if override_reason is not None:
                    self._record_override(deploy_id, requested_by, override_reason, override_freeze or [], source)
        except sqlite3.IntegrityError:
            if trigger_id and (existing := self.find_by_trigger(trigger_id)):
                raise DuplicateRequest(existing) from None
            if existing := self.in_flight(service, environment):
                raise DeployInFlight(existing) from None
            raise
        return self.get_deploy(deploy_id)

    def _record_override(self, deploy_id: int, requested_by: str, reason: str, freezes: list[dict[str, str]],
                         source: str | None) -> None:
        self.db.execute("UPDATE deploys SET override_reason = ?, override_freeze = ? WHERE id = ?",
                        [reason, json.dumps(freezes, sort_keys=True), deploy_id])
        self._audit(deploy_id, requested_by, "freeze_overridden", {"reason": reason, "freezes": freezes}, source)

    def _record_request(self, deploy_id: int, requested_by: str, service: str, environment: str, version: str,
                        checklist: list[str], needs_approval: bool, source: str | None) -> None:
        for position, label in enumerate(checklist):
            self.db.execute(
                "INSERT INTO checklist_items (deploy_id, position, label) VALUES (?, ?, ?)",
                [deploy_id, position, label],
            )
        self._audit(deploy_id, requested_by, "requested",
                    {"service": service, "environment": environment, "version": version}, source)
        if not needs_approval:
            self._audit(deploy_id, None, "approved", {"reason": "environment needs no approval"}, source)

    def attach_message(self, deploy_id: int, channel: str, message_ts: str, permalink: str | None) -> Deploy:
        """Remember where the deploy's Slack message is, to update it in place."""
        with self.transaction():
            self.db.execute(
                "UPDATE deploys SET channel = ?, message_ts = ?, permalink = ?, updated_at = ? WHERE id = ?",
                [channel, message_ts, permalink, self._now(), deploy_id],
            )
            # the outbox knows the deploy's message by this key, to reply in its thread
            self.db.execute("INSERT OR REPLACE INTO slack_messages (key, channel, ts) VALUES (?, ?, ?)",
                            [deploy_message_key(deploy_id), channel, message_ts])
        return self.get_deploy(deploy_id)

    def transition(
        self,
        deploy_id: int,
        *,
        allowed_from: tuple[str, ...],
        to: str,
        actor: str | None,
        action: str,
        reason: str | None = None,
        detail: dict[str, Any] | None = None,
        source: str | None = None,
    ) -> Deploy:
        """Move a deploy to state ``to`` if it is in one of ``allowed_from``.

        Raises:
            DeployNotFound: no deploy has that id.
            StateConflict: the deploy is in another state; nothing changed.
        """
        with self.transaction():
            current = self.status_of(deploy_id)
            if current not in allowed_from:
                raise StateConflict(deploy_id, current, to)
            now = self._now()
            stamps = {"approved": "approved_at", "deploying": "started_at"}
            extra = f", {stamps[to]} = :now" if to in stamps else ""
            if to in FINISHED_STATES:
                extra += ", finished_at = :now"
            self.db.execute(
                f"UPDATE deploys SET status = :to, status_reason = :reason, updated_at = :now{extra} WHERE id = :id",
                {"to": to, "reason": reason, "now": now, "id": deploy_id},
            )
            self._audit(deploy_id, actor, action, {"from": current, "to": to, "reason": reason, **(detail or {})}, source)
        return self.get_deploy(deploy_id)

    def status_of(self, deploy_id: int) -> str:
        """Only the deploy's state: one indexed read (state checks inside
        transactions; listeners called on every change).

        Raises:
            DeployNotFound: no deploy has that id.
        """
        row = self.db.execute("SELECT status FROM deploys WHERE id = ?", [deploy_id]).fetchone()
        if row is None:
            raise DeployNotFound(f"no deploy #{deploy_id}")
        return row[0]

    def set_checklist_item(self, deploy_id: int, position: int, ticked: bool, user: str,
                           source: str | None = None) -> Deploy:
        """Tick or untick one checklist item of a deploy awaiting approval.

        Raises:
            DeployNotFound, StateConflict: as for :meth:`transition`.
            LookupError: the deploy has no item at ``position``.
        """
        with self.transaction():
            current = self.status_of(deploy_id)
            if current != "awaiting_approval":
                raise StateConflict(deploy_id, current, "awaiting_approval")
            row = self.db.execute(
                "SELECT label, ticked_by FROM checklist_items WHERE deploy_id = ? AND position = ?",
                [deploy_id, position],
            ).fetchone()
            if row is None:
                raise LookupError(f"deploy #{deploy_id} has no checklist item {position}")
            if (row[1] is not None) != ticked:  # only a real change is written and audited
                self.db.execute(
                    "UPDATE checklist_items SET ticked_by = ?, ticked_at = ? WHERE deploy_id = ? AND position = ?",
                    [user if ticked else None, self._now() if ticked else None, deploy_id, position],
                )
                self._audit(deploy_id, user, "checklist_ticked" if ticked else "checklist_unticked",
                            {"item": row[0], "position": position}, source)
        return self.get_deploy(deploy_id)

    def record_approval(self, deploy_id: int, user: str, *, required: int, valid_since: str | None = None,
                        counts_as: str = "approve", source: str | None = None) -> Deploy:
        """Count ``user``'s approval; the ``required``-th one moves the deploy
        to ``approved`` in the same transaction. Approvals given before
        ``valid_since`` are stale: they do not count, and their giver may
        approve again. ``counts_as``: what the giver's roles let the approval
        count as (see :func:`approval_slots`); a deploy that overrides a
        freeze also needs one override approval.

        Raises:
            DeployNotFound, StateConflict: as for :meth:`transition`.
            AlreadyApproved: ``user`` has already approved this deploy.
            ChecklistIncomplete: this would be the final approval, but some
                checklist items are unticked; the approval is not counted.
        """
        valid_since = valid_since or ""
        with self.transaction():
            current = self.status_of(deploy_id)
            if current != "awaiting_approval":
                raise StateConflict(deploy_id, current, "approved")
            given = self.db.execute("SELECT approved_at FROM approvals WHERE deploy_id = ? AND user_id = ?",
                                    [deploy_id, user]).fetchone()
            if given is not None and given[0] >= valid_since:
                raise AlreadyApproved(f"{user} already approved deploy #{deploy_id}")
            kinds = [r[0] for r in self.db.execute(
                "SELECT counts_as FROM approvals WHERE deploy_id = ? AND approved_at >= ? AND user_id != ?",
                [deploy_id, valid_since, user])] + [counts_as]
            count = len(kinds) - 1
            override = self.db.execute("SELECT override_reason IS NOT NULL FROM deploys WHERE id = ?",
                                       [deploy_id]).fetchone()[0] == 1
            final = approval_slots(kinds, required, override) >= required + override
            if final:
                unticked = [r[0] for r in self.db.execute(
                    "SELECT label FROM checklist_items WHERE deploy_id = ? AND ticked_by IS NULL ORDER BY position",
                    [deploy_id])]
                if unticked:
                    raise ChecklistIncomplete(unticked)
            now = self._now()
            # a stale approval is given again: the row keeps one approval per person, now dated today
            self.db.execute("INSERT OR REPLACE INTO approvals (deploy_id, user_id, approved_at, counts_as) "
                            "VALUES (?, ?, ?, ?)", [deploy_id, user, now, counts_as])
            self._audit(deploy_id, user, "approval", {"count": count + 1, "required": required,
                                                      **({"renewed": given[0]} if given else {}),
                                                      **({"counts_as": counts_as} if override else {})}, source)
            if final:
                self.db.execute(
                    "UPDATE deploys SET status = 'approved', approved_at = ?, updated_at = ? WHERE id = ?",
                    [now, now, deploy_id],
                )
                self._audit(deploy_id, user, "approved", {"from": "awaiting_approval", "to": "approved"}, source)
        return self.get_deploy(deploy_id)

    def set_expiry(self, deploy_id: int, expires_at: str) -> Deploy:
        """When a request awaiting approval expires (callers audit why it changed)."""
        with self.transaction():
            self.db.execute("UPDATE deploys SET expires_at = ?, updated_at = ? WHERE id = ?",
                            [expires_at, self._now(), deploy_id])
        return self.get_deploy(deploy_id)

    def mark_reminded(self, deploy_id: int, whom: list[str]) -> Deploy:
        """Note that the approvers of a waiting request were just reminded."""
        with self.transaction():
            now = self._now()
            self.db.execute("UPDATE deploys SET reminded_at = ?, updated_at = ? WHERE id = ?", [now, now, deploy_id])
            self._audit(deploy_id, None, "reminded", {"whom": whom})
        return self.get_deploy(deploy_id)

    def claim_notification(self, deploy_id: int, status: str) -> bool:
        """Whether the requester still has to be told that the deploy reached
        ``status`` (True once per status, however often or by however many
        Slipways this is asked, so a DM is never sent twice)."""
        with self.transaction():
            cursor = self.db.execute(
                "UPDATE deploys SET notified_status = ? WHERE id = ? AND coalesce(notified_status, '') != ?",
                [status, deploy_id, status])
            return cursor.rowcount == 1

    def record_engine_result(self, deploy_id: int, *, kind: str, summary: str, exit_code: int | None,
                             run_url: str | None, log_tail: str, reference: dict[str, Any]) -> Deploy:
        """Keep what the deploy engine reported (no state change); ``reference``
        is merged into what the engine remembered while it ran."""
        with self.transaction():
            row = self.db.execute("SELECT executor_ref FROM deploys WHERE id = ?", [deploy_id]).fetchone()
            merged = {**(json.loads(row[0]) if row and row[0] else {}), **reference}
            self.db.execute(
                "UPDATE deploys SET executor_kind = ?, engine_summary = ?, exit_code = ?, run_url = ?, log_tail = ?, "
                "executor_ref = ?, updated_at = ? WHERE id = ?",
                [kind, summary, exit_code, run_url, log_tail, json.dumps(merged, sort_keys=True), self._now(),
                 deploy_id],
            )
            self._audit(deploy_id, None, "engine_result", {"summary": summary, "exit_code": exit_code,
                                                            "run_url": run_url})
        return self.get_deploy(deploy_id)

    def remember_reference(self, deploy_id: int, kind: str, reference: dict[str, Any]) -> None:
        """Merge what the engine said about itself (run id, pid) into the deploy,
        so a restarted Slipway can follow it up."""
        with self.transaction():
            row = self.db.execute("SELECT executor_ref FROM deploys WHERE id = ?", [deploy_id]).fetchone()
            if row is None:
                raise DeployNotFound(f"no deploy #{deploy_id}")
            merged = {**(json.loads(row[0]) if row[0] else {}), **reference}
            self.db.execute("UPDATE deploys SET executor_kind = ?, executor_ref = ?, updated_at = ? WHERE id = ?",
                            [kind, json.dumps(merged, sort_keys=True), self._now(), deploy_id])

    def record_verification(self, deploy_id: int, checks: list[dict[str, Any]]) -> Deploy:
        """Keep the result of every post-deploy check with the deploy."""
        with self.transaction():
            self.db.execute("UPDATE deploys SET verification = ?, updated_at = ? WHERE id = ?",
                            [json.dumps(checks), self._now(), deploy_id])
            self._audit(deploy_id, None, "verified", {"passed": all(c.get("passed") for c in checks),
                                                       "checks": len(checks)})
        return self.get_deploy(deploy_id)

    def record_engine_report(self, deploy_id: int, status: str, log_url: str | None, message: str | None,
                             source: str | None = None) -> EngineReport:
        """Keep a report an engine sent back about a deploy (webhook callback).

        Raises:
            DeployNotFound: no deploy has that id.
        """
        now = self._now()
        with self.transaction():
            self.status_of(deploy_id)
            self.db.execute("INSERT INTO engine_reports (deploy_id, at, status, log_url, message) VALUES (?, ?, ?, ?, ?)",
                            [deploy_id, now, status, log_url, message])
            self._audit(deploy_id, None, "engine_report", {"status": status, "log_url": log_url,
                                                            "message": message}, source)
        return EngineReport(deploy_id, now, status, log_url, message)

    def engine_reports(self, deploy_id: int) -> list[EngineReport]:
        return [EngineReport(r["deploy_id"], r["at"], r["status"], r["log_url"], r["message"])
                for r in self.db.query("SELECT * FROM engine_reports WHERE deploy_id = ? ORDER BY id", [deploy_id])]

    def history(self, service: str, environment: str | None = None, limit: int = 10) -> list[Deploy]:
        """The most recent deploys of ``service`` (on ``environment``), newest first."""
        where, params = "service = ?", [service]
        if environment is not None:
            where, params = where + " AND environment = ?", params + [environment]
        rows = self.db.query(f"SELECT * FROM deploys WHERE {where} ORDER BY id DESC LIMIT ?", params + [limit])
        return [self._hydrate(r) for r in rows]

    def rollback_target(self, current: Deploy) -> Deploy | None:
        """The last deploy that succeeded on ``current``'s environment before
        it, with another version: what a rollback of ``current`` goes back to."""
        rows = list(self.db.query(
            "SELECT * FROM deploys WHERE service = ? AND environment = ? AND status = 'succeeded' "
            "AND id < ? AND version != ? ORDER BY finished_at DESC, id DESC LIMIT 1",
            [current.service, current.environment, current.id, current.version],
        ))
        return self._hydrate(rows[0]) if rows else None

    def deploy_behind(self, service: str, environment: str, moment: str, window_seconds: float) -> Deploy | None:
        """The deploy of ``service`` to ``environment`` most likely behind
        something that started at ``moment`` (ISO): the latest one whose engine
        started before it and that finished no more than ``window_seconds``
        before it (or has not finished)."""
        rows = list(self.db.query(
            "SELECT * FROM deploys WHERE service = ? AND environment = ? AND started_at IS NOT NULL "
            "AND started_at <= ? AND (finished_at IS NULL OR "
            "(julianday(?) - julianday(finished_at)) * 86400.0 <= ?) ORDER BY started_at DESC, id DESC LIMIT 1",
            [service, environment, moment, moment, window_seconds],
        ))
        return self._hydrate(rows[0]) if rows else None

    def record_event(self, deploy_id: int | None, actor: str | None, action: str,
                     detail: dict[str, Any] | None = None, source: str | None = None) -> None:
        """Append an event that changes no state (e.g. a refused click)."""
        with self.transaction():
            self._audit(deploy_id, actor, action, detail, source)

    # -- locks ------------------------------------------------------------------------

    def locks_for(self, service: str, environment: str) -> list[Lock]:
        """Locks that stop deploys of ``service`` to ``environment``, unexpired."""
        now = self._now()
        rows = self.db.query(
            "SELECT * FROM locks WHERE service = ? AND environment IN (?, ?) AND (until IS NULL OR until > ?)",
            [service, environment, ALL_ENVIRONMENTS, now],
        )
        return [Lock(**row) for row in rows]

    def all_locks(self, service: str | None = None) -> list[Lock]:
        """Every unexpired lock (of ``service``, when given)."""
        now = self._now()
        where, params = ("AND service = ?", [service]) if service is not None else ("", [])
        return [Lock(**row) for row in self.db.query(
            f"SELECT * FROM locks WHERE (until IS NULL OR until > ?) {where} ORDER BY service, environment",
            [now, *params])]

    def acquire_lock(self, service: str, environment: str, user: str, reason: str,
                     until: str | None = None, source: str | None = None, keep_existing: bool = False,
                     deploy_id: int | None = None) -> Lock | None:
        """Lock ``service`` on ``environment`` (``"*"``: all of them), replacing
        an existing lock of the same scope, or, with ``keep_existing``, leaving
        it be (and returning None). ``deploy_id``: the deploy that placed it."""
        lock = Lock(service, environment, user, self._now(), reason, until)
        with self.transaction():
            verb = "INSERT OR IGNORE" if keep_existing else "INSERT OR REPLACE"
            cursor = self.db.execute(
                f"{verb} INTO locks (service, environment, locked_by, locked_at, reason, until) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [lock.service, lock.environment, lock.locked_by, lock.locked_at, lock.reason, lock.until],
            )
            if cursor.rowcount == 0:
                return None
            self._audit(deploy_id, user, "locked", {"service": service, "environment": environment,
                                                     "reason": reason, "until": until}, source)
        return lock

    def expire_locks(self) -> list[Lock]:
        """Remove the locks whose time is up and return them, each once
        (however many Slipways ask), so each expiry is announced once."""
        now = self._now()
        # asked before every deploy request and click: take the write lock only when there is something to expire
        if self.db.execute("SELECT 1 FROM locks WHERE until IS NOT NULL AND until <= ? LIMIT 1", [now]).fetchone() is None:
            return []
        with self.transaction():
            expired = [Lock(**row) for row in self.db.query(
                "SELECT * FROM locks WHERE until IS NOT NULL AND until <= ? ORDER BY until", [now])]
            for lock in expired:
                self.db.execute("DELETE FROM locks WHERE service = ? AND environment = ?",
                                [lock.service, lock.environment])
                self._audit(None, None, "lock_expired", {"service": lock.service, "environment": lock.environment,
                                                         "reason": lock.reason, "locked_by": lock.locked_by,
                                                         "until": lock.until})
        return expired

    def release_locks(self, service: str, environment: str | None, user: str,
                      source: str | None = None) -> list[Lock]:
        """Remove the lock on ``service`` for ``environment`` (``None``: every
        lock of the service) and return what was removed."""
        with self.transaction():
            if environment is None:
                rows = list(self.db.query("SELECT * FROM locks WHERE service = ?", [service]))
                self.db.execute("DELETE FROM locks WHERE service = ?", [service])
            else:
                rows = list(self.db.query("SELECT * FROM locks WHERE service = ? AND environment = ?",
                                          [service, environment]))
                self.db.execute("DELETE FROM locks WHERE service = ? AND environment = ?", [service, environment])
            released = [Lock(**row) for row in rows]
            if released:
                self._audit(None, user, "unlocked", {"service": service, "environment": environment or "*",
                                                      "released": len(released)}, source)
        return released

    # -- versions blocked after a rollback --------------------------------------------

    def block_version(self, service: str, environment: str, version: str, user: str, reason: str,
                      rollback_id: int | None = None, source: str | None = None) -> BlockedVersion:
        """Keep ``version`` of ``service`` off ``environment`` until it is unblocked."""
        block = BlockedVersion(service, environment, version, user, self._now(), reason, rollback_id)
        with self.transaction():
            self.db.execute(
                "INSERT OR REPLACE INTO blocked_versions (service, environment, version, blocked_by, blocked_at, "
                "reason, rollback_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [block.service, block.environment, block.version, block.blocked_by, block.blocked_at, block.reason,
                 block.rollback_id])
            self._audit(rollback_id, user, "version_blocked", {"service": service, "environment": environment,
                                                               "version": version, "reason": reason}, source)
        return block

    def blocked(self, service: str, environment: str, version: str) -> BlockedVersion | None:
        """The block that keeps ``version`` off ``environment``, if any."""
        rows = list(self.db.query("SELECT * FROM blocked_versions WHERE service = ? AND environment = ? "
                                  "AND version = ?", [service, environment, version]))
        return BlockedVersion(**rows[0]) if rows else None

    def all_blocks(self, service: str | None = None) -> list[BlockedVersion]:
        where, params = ("WHERE service = ?", [service]) if service is not None else ("", [])
        return [BlockedVersion(**row) for row in self.db.query(
            f"SELECT * FROM blocked_versions {where} ORDER BY service, environment, blocked_at", params)]

    def unblock_version(self, service: str, version: str, environment: str | None, user: str,
                        source: str | None = None) -> list[BlockedVersion]:
        """Lift the block of ``version`` on ``environment`` (``None``: on every
        environment) and return what was lifted."""
        where, params = "service = ? AND version = ?", [service, version]
        if environment is not None:
            where, params = where + " AND environment = ?", params + [environment]
        with self.transaction():
            lifted = [BlockedVersion(**row) for row in self.db.query(
                f"SELECT * FROM blocked_versions WHERE {where} ORDER BY environment", params)]
            self.db.execute(f"DELETE FROM blocked_versions WHERE {where}", params)
            for block in lifted:
                self._audit(block.rollback_id, user, "version_unblocked",
                            {"service": service, "environment": block.environment, "version": version}, source)
        return lifted
