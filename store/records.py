"""The records the store hands out: frozen dataclasses, one per kind of row
(a deploy with its checklist and approvals, a lock, an audit event, an
alert, an outbox item…). Plain data: the repositories read and write them."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from store.status import ACTIVE_STATES, DeployStatus


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


@dataclass(frozen=True)
class Deploy:
    """One deploy record, with its checklist and approvals."""

    id: int
    service: str
    environment: str
    version: str
    version_prefixed: bool
    status: DeployStatus
    status_reason: str | None
    requested_by: str
    requested_at: str
    previous_version: str | None
    approved_at: str | None
    started_at: str | None
    finished_at: str | None  # when it ended (for a deploy later rolled back: when it went live); never rewritten
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
    rolled_back_at: str | None = None  # when a later rollback undid it
    changes: str | None = None  # JSON: the change set being shipped (bot.changes.model.ChangeSet.as_record)
    lookup_state: str | None = None  # "checking": changes and artifacts being looked up; "done"; None: no lookup
    queued_at: str | None = None  # when it joined its service and environment's queue
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
    def change_set(self) -> dict[str, Any] | None:
        """The changes looked up for this deploy (None: none looked up)."""
        return json.loads(self.changes) if self.changes else None

    @property
    def checking(self) -> bool:
        """Its changes and artifacts are still being looked up: it may be
        neither approved nor started yet."""
        return self.lookup_state == "checking"

    @property
    def held(self) -> bool:
        """It may be neither approved nor started: its lookups are not done. A
        rollback is never held (it is looked up, but does not wait)."""
        return self.checking and self.rollback_of is None

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
    stage: str | None = None  # the engine call it answers (``step-2``…); None: a direct deploy's one call

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


@dataclass(frozen=True)
class StoredAlert:
    """One alert occurrence a monitor sent (repeats and HA duplicates land on it)."""

    id: int
    source: str
    fingerprint: str
    status: str
    name: str
    service: str | None
    environment: str | None
    metric: str | None
    value: float | None
    baseline: float | None
    severity: str | None
    level: str
    starts_at: str | None
    deploy_id: int | None
    message_key: str | None
    summary: str
    url: str | None
    received_at: str


@dataclass(frozen=True)
class OutboxItem:
    """One queued Slack call (a post or an edit of a message)."""

    id: int
    message_key: str
    op: str  # post | update | dm (channel: a user id) | publish (App Home; channel: a user id)
    channel: str
    thread_key: str | None
    text: str
    blocks: list[dict[str, Any]] | None
    state: str
    attempts: int
    next_attempt_at: str | None
    created_at: str
    sent_at: str | None
    last_error: str | None
    view: str | None = None  # drawn when sent (``kind:argument``), instead of ``text``/``blocks``


@dataclass(frozen=True)
class Delivery:
    """An outbox item the worker may send now, with the Slack coordinates it needs."""

    item: OutboxItem
    # post: the parent's ts (None: not a reply, or the parent will never be
    # posted and the reply goes to the channel instead). update: the ts of
    # the message to edit.
    ts: str | None
    # update: the channel Slack answered the post with (an id even when the
    # post named the channel "#deploys"); post: the item's channel.
    slack_channel: str
    orphaned: bool = False  # a reply whose parent failed or was never queued


@dataclass(frozen=True)
class DeployTimes:
    """What the DORA figures need of one deploy that ran (ISO timestamps).

    ``went_live_at`` is when it succeeded: its ``finished_at``, which a
    later rollback leaves as it was (the rollback is ``rolled_back_at``).
    ``None`` for a failed deploy.
    """

    id: int
    service: str
    environment: str
    status: DeployStatus
    rollback_of: int | None
    requested_at: str
    finished_at: str
    went_live_at: str | None
    # a staged rollout aborted before full traffic: when the stage it was aborted at began
    # (the stable version served throughout, so the outage ends at the abort, ``finished_at``)
    aborted_from: str | None = None
