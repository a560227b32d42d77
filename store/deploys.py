"""Deploys and their approvals: the deploy aggregate (a deploy row with its
checklist items, approvals and engine reports), behind methods named after
what they mean.

Every state change is one transaction that first checks the current state,
checks the move against the state machine (:data:`store.status.TRANSITIONS`)
and appends an audit event, so a double click or a retried Slack request
finds the state already moved and changes nothing.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from store.audit import AuditLog
from store.database import Database
from store.errors import (
    AlreadyApproved,
    ChecklistIncomplete,
    DeployInFlight,
    DeployNotFound,
    DuplicateRequest,
    IllegalTransition,
    StateConflict,
)
from store.outbox import OutboxQueue, deploy_message_key
from store.records import Approval, ChecklistItem, Deploy, EngineReport
from store.status import ACTIVE_STATES, FINISHED_STATES, DeployStatus, is_legal


def approval_slots(kinds: list[str], required: int, override: bool) -> int:
    """How many of the approvals a deploy needs are filled by approvals of
    these ``kinds``: ``required`` normal ones (``approve`` or ``both``) and,
    when ``override``, one freeze-override approval (``override`` or
    ``both``) by another person. The deploy is approved when this reaches
    ``required + override``.

    A domain rule, kept here as a pure function because
    :meth:`Deploys.record_approval` decides with it, inside its transaction,
    whether an approval is the final one (and moves the deploy)."""
    normal, both, override_only = kinds.count("approve"), kinds.count("both"), kinds.count("override")
    if not override:
        return min(required, normal + both)
    if override_only:
        return 1 + min(required, normal + both)
    if both:  # one of them gives the override approval unless they are all needed as approvers
        return max(1 + min(required, normal + both - 1), min(required, normal + both))
    return min(required, normal)


class Deploys:
    """Deploy records: reading them, and every change of their state."""

    def __init__(self, database: Database, audit: AuditLog, outbox: OutboxQueue) -> None:
        self._database = database
        self._db = database.db
        self._audit = audit
        self._outbox = outbox

    def get(self, deploy_id: int) -> Deploy:
        """The deploy with that id, with its checklist and approvals.

        Raises:
            DeployNotFound: no deploy has that id.
        """
        return self._hydrate(self._database.row_by_id("deploys", deploy_id, DeployNotFound(f"no deploy #{deploy_id}")))

    def _hydrate(self, row: dict[str, Any]) -> Deploy:
        checklist = tuple(
            ChecklistItem(r["position"], r["label"], r["ticked_by"], r["ticked_at"])
            for r in self._db.query(
                "SELECT * FROM checklist_items WHERE deploy_id = ? ORDER BY position", [row["id"]]
            )
        )
        approvals = tuple(
            Approval(r["user_id"], r["approved_at"], r.get("counts_as") or "approve")
            for r in self._db.query(
                "SELECT * FROM approvals WHERE deploy_id = ? ORDER BY approved_at, rowid", [row["id"]]
            )
        )
        fields = {k: row[k] for k in Deploy.__dataclass_fields__ if k in row}
        fields["version_prefixed"] = bool(row["version_prefixed"])
        fields["migration"] = bool(row.get("migration"))
        fields["status"] = DeployStatus(row["status"])
        return Deploy(**fields, checklist=checklist, approvals=approvals)

    def in_flight(self, service: str, environment: str) -> Deploy | None:
        """The deploy occupying ``service`` on ``environment``, if any."""
        placeholders = ", ".join("?" for _ in ACTIVE_STATES)
        rows = list(self._db.query(
            f"SELECT * FROM deploys WHERE service = ? AND environment = ? AND status IN ({placeholders})",
            [service, environment, *ACTIVE_STATES],
        ))
        return self._hydrate(rows[0]) if rows else None

    def latest_successful(self, service: str, environment: str) -> Deploy | None:
        """The most recent deploy of ``service`` that succeeded on ``environment``:
        what is live there now."""
        rows = list(self._db.query(
            "SELECT * FROM deploys WHERE service = ? AND environment = ? AND status = ? "
            "ORDER BY finished_at DESC, id DESC LIMIT 1",
            [service, environment, DeployStatus.SUCCEEDED],
        ))
        return self._hydrate(rows[0]) if rows else None

    def has_succeeded(self, service: str, environment: str, version: str) -> bool:
        """Whether ``version`` of ``service`` ever succeeded on ``environment``."""
        row = self._db.execute(
            "SELECT 1 FROM deploys WHERE service = ? AND environment = ? AND version = ? "
            "AND status = ? LIMIT 1",
            [service, environment, version, DeployStatus.SUCCEEDED],
        ).fetchone()
        return row is not None

    def find_by_trigger(self, trigger_id: str) -> Deploy | None:
        """The deploy a Slack request (its trigger id) recorded, if any."""
        rows = list(self._db.query("SELECT * FROM deploys WHERE trigger_id = ?", [trigger_id]))
        return self._hydrate(rows[0]) if rows else None

    def in_states(self, statuses: tuple[DeployStatus, ...]) -> list[Deploy]:
        """Every deploy in one of ``statuses``, oldest first."""
        placeholders = ", ".join("?" for _ in statuses)
        rows = self._db.query(f"SELECT * FROM deploys WHERE status IN ({placeholders}) ORDER BY id", list(statuses))
        return [self._hydrate(r) for r in rows]

    # -- deploy lifecycle -------------------------------------------------------------

    def create(
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
        checking: bool = False,
        queued: bool = False,
    ) -> Deploy:
        """Record a new deploy request (``awaiting_approval``, or ``approved``
        straight away when the environment needs no approval). A request
        awaiting approval expires at ``expires_at``. ``override_reason``: it
        asks to deploy inside the freeze occurrences ``override_freeze``.

        ``checking``: its changes and artifacts are to be looked up before it
        may be approved or started (:meth:`record_lookup` ends that).
        ``queued``: another deploy occupies the service+environment, which
        queues: the request waits in line (``queued``), its approvals given
        meanwhile (complete: ``approved_at`` set) until its turn.

        Raises:
            DuplicateRequest: a deploy was already recorded for ``trigger_id``.
            DeployInFlight: another deploy occupies the service+environment.
        """
        now = self._database.now()
        status = DeployStatus.AWAITING_APPROVAL if needs_approval else DeployStatus.APPROVED
        if queued:
            status = DeployStatus.QUEUED
        try:
            with self._database.transaction():
                # Insert first and let the unique indexes (trigger id; one deploy in
                # flight) refuse a duplicate: no look-ups on the hot path, no race.
                cursor = self._db.execute(
                    "INSERT INTO deploys (service, environment, version, version_prefixed, status, requested_by, "
                    "requested_at, trigger_id, previous_version, approved_at, rollback_of, updated_at, expires_at, "
                    "migration, lookup_state, queued_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [service, environment, version, int(version_prefixed), status, requested_by, now,
                     trigger_id, previous_version, None if needs_approval else now, rollback_of, now,
                     expires_at if needs_approval else None, int(migration), "checking" if checking else None,
                     now if queued else None],
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
        return self.get(deploy_id)

    def record_lookup(self, deploy_id: int, changes: dict[str, Any] | None, *,
                      migration_checklist: list[str] | None = None, source: str | None = None) -> Deploy:
        """The lookups after a request are done: keep what it ships
        (``changes``), and with ``migration_checklist`` mark it as carrying
        a migration (the changes touched migration files), its checklist
        grown by those items not in it yet. Idempotent: a deploy no longer
        ``checking`` is returned as it is."""
        with self._database.transaction():
            row = self._db.execute("SELECT lookup_state, migration FROM deploys WHERE id = ?", [deploy_id]).fetchone()
            if row is None:
                raise DeployNotFound(f"no deploy #{deploy_id}")
            if row[0] != "checking":
                return self.get(deploy_id)
            self._db.execute("UPDATE deploys SET changes = ?, lookup_state = 'done', updated_at = ? WHERE id = ?",
                             [json.dumps(changes, sort_keys=True) if changes is not None else None,
                              self._database.now(), deploy_id])
            if migration_checklist is not None:
                self._db.execute("UPDATE deploys SET migration = 1 WHERE id = ?", [deploy_id])
                have = [r[0] for r in self._db.execute(
                    "SELECT label FROM checklist_items WHERE deploy_id = ? ORDER BY position", [deploy_id])]
                for offset, label in enumerate([item for item in migration_checklist if item not in have]):
                    self._db.execute("INSERT INTO checklist_items (deploy_id, position, label) VALUES (?, ?, ?)",
                                     [deploy_id, len(have) + offset, label])
            self._audit.record(deploy_id, None, "changes_looked_up",
                               {"commits": len((changes or {}).get("commits", [])),
                                "migration": migration_checklist is not None}, source)
        return self.get(deploy_id)

    def queued(self, service: str | None = None, environment: str | None = None) -> list[Deploy]:
        """Requests waiting in line, in queue order (of one service+environment when given)."""
        where, params = "status = ?", [str(DeployStatus.QUEUED)]
        if service is not None:
            where, params = where + " AND service = ?", [*params, service]
        if environment is not None:
            where, params = where + " AND environment = ?", [*params, environment]
        return [self._hydrate(row) for row in self._db.query(
            f"SELECT * FROM deploys WHERE {where} ORDER BY id", params)]

    def queue_position(self, deploy: Deploy) -> int | None:
        """Where a queued request stands in its line (1: next), None when not queued."""
        if deploy.status != DeployStatus.QUEUED:
            return None
        return self._db.execute(
            "SELECT count(*) FROM deploys WHERE status = ? AND service = ? AND environment = ? AND id <= ?",
            [str(DeployStatus.QUEUED), deploy.service, deploy.environment, deploy.id]).fetchone()[0]

    def checking(self) -> list[int]:
        """The deploys whose lookups have not finished (a restart resumes them)."""
        return [row[0] for row in self._db.execute(
            "SELECT id FROM deploys WHERE lookup_state = 'checking' ORDER BY id").fetchall()]

    def _record_override(self, deploy_id: int, requested_by: str, reason: str, freezes: list[dict[str, str]],
                         source: str | None) -> None:
        self._db.execute("UPDATE deploys SET override_reason = ?, override_freeze = ? WHERE id = ?",
                         [reason, json.dumps(freezes, sort_keys=True), deploy_id])
        self._audit.record(deploy_id, requested_by, "freeze_overridden", {"reason": reason, "freezes": freezes}, source)

    def _record_request(self, deploy_id: int, requested_by: str, service: str, environment: str, version: str,
                        checklist: list[str], needs_approval: bool, source: str | None) -> None:
        for position, label in enumerate(checklist):
            self._db.execute(
                "INSERT INTO checklist_items (deploy_id, position, label) VALUES (?, ?, ?)",
                [deploy_id, position, label],
            )
        self._audit.record(deploy_id, requested_by, "requested",
                           {"service": service, "environment": environment, "version": version}, source)
        if not needs_approval:
            self._audit.record(deploy_id, None, "approved", {"reason": "environment needs no approval"}, source)

    def attach_message(self, deploy_id: int, channel: str, message_ts: str, permalink: str | None) -> Deploy:
        """Remember where the deploy's Slack message is, to update it in place.

        Raises:
            DeployNotFound: no deploy has that id; nothing changed.
        """
        with self._database.transaction():
            self.status_of(deploy_id)
            self._db.execute(
                "UPDATE deploys SET channel = ?, message_ts = ?, permalink = ?, updated_at = ? WHERE id = ?",
                [channel, message_ts, permalink, self._database.now(), deploy_id],
            )
            # the outbox knows the deploy's message by this key, to reply in its thread
            self._outbox.remember_message(deploy_message_key(deploy_id), channel, message_ts)
        return self.get(deploy_id)

    def transition(
        self,
        deploy_id: int,
        *,
        allowed_from: tuple[DeployStatus, ...],
        to: DeployStatus,
        actor: str | None,
        action: str,
        reason: str | None = None,
        detail: dict[str, Any] | None = None,
        source: str | None = None,
    ) -> Deploy:
        """Move a deploy to state ``to`` if it is in one of ``allowed_from``
        and the move is an edge of :data:`store.status.TRANSITIONS`. Stamps
        ``approved_at``, ``started_at``, ``finished_at`` (only the first time a
        deploy finishes: a rollback never rewrites it) and ``rolled_back_at``.

        Raises:
            DeployNotFound: no deploy has that id.
            StateConflict: the deploy is in another state; nothing changed.
            IllegalTransition: the deploy is in one of ``allowed_from`` but
                may never move from there to ``to``; nothing changed.
        """
        with self._database.transaction():
            current = self.status_of(deploy_id)
            if current not in allowed_from:
                raise StateConflict(deploy_id, current, to)
            self._check_edge(deploy_id, current, to)
            now = self._database.now()
            stamps = {DeployStatus.APPROVED: "approved_at", DeployStatus.DEPLOYING: "started_at",
                      DeployStatus.ROLLED_BACK: "rolled_back_at"}
            extra = f", {stamps[to]} = :now" if to in stamps else ""
            if to in FINISHED_STATES:
                extra += ", finished_at = coalesce(finished_at, :now)"
            self._db.execute(
                f"UPDATE deploys SET status = :to, status_reason = :reason, updated_at = :now{extra} WHERE id = :id",
                {"to": str(to), "reason": reason, "now": now, "id": deploy_id},
            )
            self._audit.record(deploy_id, actor, action,
                               {"from": current, "to": to, "reason": reason, **(detail or {})}, source)
        return self.get(deploy_id)

    @staticmethod
    def _check_edge(deploy_id: int, current: str, wanted: str) -> None:
        """Raises IllegalTransition unless ``current`` → ``wanted`` is an edge of the state machine."""
        if not is_legal(current, wanted):
            raise IllegalTransition(deploy_id, current, wanted)

    def status_of(self, deploy_id: int) -> DeployStatus:
        """Only the deploy's state: one indexed read (state checks inside
        transactions; subscribers told of every change).

        Raises:
            DeployNotFound: no deploy has that id.
        """
        row = self._db.execute("SELECT status FROM deploys WHERE id = ?", [deploy_id]).fetchone()
        if row is None:
            raise DeployNotFound(f"no deploy #{deploy_id}")
        return DeployStatus(row[0])

    def set_checklist_item(self, deploy_id: int, position: int, ticked: bool, user: str,
                           source: str | None = None) -> Deploy:
        """Tick or untick one checklist item of a deploy awaiting approval.

        Raises:
            DeployNotFound, StateConflict: as for :meth:`transition`.
            LookupError: the deploy has no item at ``position``.
        """
        with self._database.transaction():
            current = self.status_of(deploy_id)
            if current not in (DeployStatus.AWAITING_APPROVAL, DeployStatus.QUEUED):
                raise StateConflict(deploy_id, current, DeployStatus.AWAITING_APPROVAL)
            row = self._db.execute(
                "SELECT label, ticked_by FROM checklist_items WHERE deploy_id = ? AND position = ?",
                [deploy_id, position],
            ).fetchone()
            if row is None:
                raise LookupError(f"deploy #{deploy_id} has no checklist item {position}")
            if (row[1] is not None) != ticked:  # only a real change is written and audited
                self._db.execute(
                    "UPDATE checklist_items SET ticked_by = ?, ticked_at = ? WHERE deploy_id = ? AND position = ?",
                    [user if ticked else None, self._database.now() if ticked else None, deploy_id, position],
                )
                self._audit.record(deploy_id, user, "checklist_ticked" if ticked else "checklist_unticked",
                                   {"item": row[0], "position": position}, source)
        return self.get(deploy_id)

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
            IllegalTransition: this would be the final approval, but the state
                machine has no move from awaiting approval to approved; nothing
                changed.
        """
        valid_since = valid_since or ""
        with self._database.transaction():
            current = self.status_of(deploy_id)
            if current not in (DeployStatus.AWAITING_APPROVAL, DeployStatus.QUEUED):
                raise StateConflict(deploy_id, current, DeployStatus.APPROVED)
            given = self._db.execute("SELECT approved_at FROM approvals WHERE deploy_id = ? AND user_id = ?",
                                     [deploy_id, user]).fetchone()
            if given is not None and given[0] >= valid_since:
                raise AlreadyApproved(f"{user} already approved deploy #{deploy_id}")
            kinds = [r[0] for r in self._db.execute(
                "SELECT counts_as FROM approvals WHERE deploy_id = ? AND approved_at >= ? AND user_id != ?",
                [deploy_id, valid_since, user])] + [counts_as]
            count = len(kinds) - 1
            override = self._db.execute("SELECT override_reason IS NOT NULL FROM deploys WHERE id = ?",
                                        [deploy_id]).fetchone()[0] == 1
            final = approval_slots(kinds, required, override) >= required + override
            if final:
                self._check_edge(deploy_id, current, DeployStatus.APPROVED)
                unticked = [r[0] for r in self._db.execute(
                    "SELECT label FROM checklist_items WHERE deploy_id = ? AND ticked_by IS NULL ORDER BY position",
                    [deploy_id])]
                if unticked:
                    raise ChecklistIncomplete(unticked)
            now = self._database.now()
            # a stale approval is given again: the row keeps one approval per person, now dated today
            self._db.execute("INSERT OR REPLACE INTO approvals (deploy_id, user_id, approved_at, counts_as) "
                             "VALUES (?, ?, ?, ?)", [deploy_id, user, now, counts_as])
            self._audit.record(deploy_id, user, "approval", {"count": count + 1, "required": required,
                                                             **({"renewed": given[0]} if given else {}),
                                                             **({"counts_as": counts_as} if override else {})}, source)
            if final and current == DeployStatus.QUEUED:  # ready: it starts when its turn comes
                self._db.execute("UPDATE deploys SET approved_at = ?, updated_at = ? WHERE id = ?",
                                 [now, now, deploy_id])
                self._audit.record(deploy_id, user, "approved", {"from": current, "to": current}, source)
            elif final:
                self._db.execute("UPDATE deploys SET status = ?, approved_at = ?, updated_at = ? WHERE id = ?",
                                 [str(DeployStatus.APPROVED), now, now, deploy_id])
                self._audit.record(deploy_id, user, "approved", {"from": current, "to": DeployStatus.APPROVED}, source)
        return self.get(deploy_id)

    def set_expiry(self, deploy_id: int, expires_at: str) -> Deploy:
        """When a request awaiting approval expires (callers audit why it changed).

        Raises:
            DeployNotFound: no deploy has that id; nothing changed.
        """
        with self._database.transaction():
            self.status_of(deploy_id)
            self._db.execute("UPDATE deploys SET expires_at = ?, updated_at = ? WHERE id = ?",
                             [expires_at, self._database.now(), deploy_id])
        return self.get(deploy_id)

    def mark_reminded(self, deploy_id: int, whom: list[str]) -> Deploy:
        """Note that the approvers of a waiting request were just reminded.

        Raises:
            DeployNotFound: no deploy has that id; nothing changed.
        """
        with self._database.transaction():
            self.status_of(deploy_id)
            now = self._database.now()
            self._db.execute("UPDATE deploys SET reminded_at = ?, updated_at = ? WHERE id = ?", [now, now, deploy_id])
            self._audit.record(deploy_id, None, "reminded", {"whom": whom})
        return self.get(deploy_id)

    def claim_notification(self, deploy_id: int, status: str) -> bool:
        """Whether the requester still has to be told that the deploy reached
        ``status`` (True once per status, however often or by however many
        Slipways this is asked, so a DM is never sent twice)."""
        with self._database.transaction():
            cursor = self._db.execute(
                "UPDATE deploys SET notified_status = ? WHERE id = ? AND coalesce(notified_status, '') != ?",
                [status, deploy_id, status])
            return cursor.rowcount == 1

    def record_engine_result(self, deploy_id: int, *, kind: str, summary: str, exit_code: int | None,
                             run_url: str | None, log_tail: str, reference: dict[str, Any]) -> Deploy:
        """Keep what the deploy engine reported (no state change); ``reference``
        is merged into what the engine remembered while it ran.

        Raises:
            DeployNotFound: no deploy has that id; nothing changed.
        """
        with self._database.transaction():
            self.status_of(deploy_id)
            row = self._db.execute("SELECT executor_ref FROM deploys WHERE id = ?", [deploy_id]).fetchone()
            merged = {**(json.loads(row[0]) if row and row[0] else {}), **reference}
            self._db.execute(
                "UPDATE deploys SET executor_kind = ?, engine_summary = ?, exit_code = ?, run_url = ?, log_tail = ?, "
                "executor_ref = ?, updated_at = ? WHERE id = ?",
                [kind, summary, exit_code, run_url, log_tail, json.dumps(merged, sort_keys=True), self._database.now(),
                 deploy_id],
            )
            self._audit.record(deploy_id, None, "engine_result", {"summary": summary, "exit_code": exit_code,
                                                                  "run_url": run_url})
        return self.get(deploy_id)

    def remember_reference(self, deploy_id: int, kind: str, reference: dict[str, Any]) -> None:
        """Merge what the engine said about itself (run id, pid) into the deploy,
        so a restarted Slipway can follow it up.

        Raises:
            DeployNotFound: no deploy has that id; nothing changed.
        """
        with self._database.transaction():
            row = self._db.execute("SELECT executor_ref FROM deploys WHERE id = ?", [deploy_id]).fetchone()
            if row is None:
                raise DeployNotFound(f"no deploy #{deploy_id}")
            merged = {**(json.loads(row[0]) if row[0] else {}), **reference}
            self._db.execute("UPDATE deploys SET executor_kind = ?, executor_ref = ?, updated_at = ? WHERE id = ?",
                             [kind, json.dumps(merged, sort_keys=True), self._database.now(), deploy_id])

    def record_verification(self, deploy_id: int, checks: list[dict[str, Any]]) -> Deploy:
        """Keep the result of every post-deploy check with the deploy.

        Raises:
            DeployNotFound: no deploy has that id; nothing changed.
        """
        with self._database.transaction():
            self.status_of(deploy_id)
            self._db.execute("UPDATE deploys SET verification = ?, updated_at = ? WHERE id = ?",
                             [json.dumps(checks), self._database.now(), deploy_id])
            self._audit.record(deploy_id, None, "verified", {"passed": all(c.get("passed") for c in checks),
                                                             "checks": len(checks)})
        return self.get(deploy_id)

    def record_engine_report(self, deploy_id: int, status: str, log_url: str | None, message: str | None,
                             source: str | None = None, *, stage: str | None = None) -> EngineReport:
        """Keep a report an engine sent back about a deploy (webhook callback),
        on its engine call ``stage`` (``step-2``…; None for a direct deploy's one call).

        Raises:
            DeployNotFound: no deploy has that id.
        """
        now = self._database.now()
        with self._database.transaction():
            self.status_of(deploy_id)
            self._db.execute("INSERT INTO engine_reports (deploy_id, at, status, log_url, message, stage) "
                             "VALUES (?, ?, ?, ?, ?, ?)",
                             [deploy_id, now, status, log_url, message, stage])
            details = {"status": status, "log_url": log_url, "message": message}
            self._audit.record(deploy_id, None, "engine_report",
                               details if stage is None else {**details, "stage": stage}, source)
        return EngineReport(deploy_id, now, status, log_url, message, stage)

    def engine_reports(self, deploy_id: int) -> list[EngineReport]:
        """What engines reported back about deploy ``deploy_id`` (on every
        engine call, see ``EngineReport.stage``), oldest first."""
        return [EngineReport(r["deploy_id"], r["at"], r["status"], r["log_url"], r["message"], r.get("stage"))
                for r in self._db.query("SELECT * FROM engine_reports WHERE deploy_id = ? ORDER BY id", [deploy_id])]

    def history(self, service: str, environment: str | None = None, limit: int = 10) -> list[Deploy]:
        """The most recent deploys of ``service`` (on ``environment``), newest first."""
        where, params = "service = ?", [service]
        if environment is not None:
            where, params = where + " AND environment = ?", params + [environment]
        rows = self._db.query(f"SELECT * FROM deploys WHERE {where} ORDER BY id DESC LIMIT ?", params + [limit])
        return [self._hydrate(r) for r in rows]

    def rollback_target(self, current: Deploy) -> Deploy | None:
        """The last deploy that succeeded on ``current``'s environment before
        it, with another version: what a rollback of ``current`` goes back to."""
        rows = list(self._db.query(
            "SELECT * FROM deploys WHERE service = ? AND environment = ? AND status = ? "
            "AND id < ? AND version != ? ORDER BY finished_at DESC, id DESC LIMIT 1",
            [current.service, current.environment, DeployStatus.SUCCEEDED, current.id, current.version],
        ))
        return self._hydrate(rows[0]) if rows else None

    def behind(self, service: str, environment: str, moment: str, window_seconds: float) -> Deploy | None:
        """The deploy of ``service`` to ``environment`` most likely behind
        something that started at ``moment`` (ISO): the latest one whose engine
        started before it and that finished no more than ``window_seconds``
        before it (or has not finished). A deploy later rolled back is judged
        by when it went live (its ``finished_at``), not by when it was undone."""
        rows = list(self._db.query(
            "SELECT * FROM deploys WHERE service = ? AND environment = ? AND started_at IS NOT NULL "
            "AND started_at <= ? AND (finished_at IS NULL OR "
            "(julianday(?) - julianday(finished_at)) * 86400.0 <= ?) ORDER BY started_at DESC, id DESC LIMIT 1",
            [service, environment, moment, moment, window_seconds],
        ))
        return self._hydrate(rows[0]) if rows else None
