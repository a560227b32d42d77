"""Versioned schema migrations.

Each migration is applied once, in order, inside a transaction, and its
number is recorded in ``schema_migrations``. Never edit a migration that has
shipped: add the next one.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlite_utils

# The states as the shipped migrations knew them, spelled out: a migration is
# history and must write the same SQL whatever store/status.py says later.
_ACTIVE_AT_M1 = ("awaiting_approval", "approved", "deploying", "verifying")
_FINISHED_AT_M6 = ("succeeded", "failed", "rejected", "cancelled", "rolled_back", "expired")


def _m1_foundation(db: sqlite_utils.Database) -> None:
    db["deploys"].create(
        {
            "id": int,
            "service": str,
            "environment": str,
            "version": str,
            "version_prefixed": int,
            "status": str,
            "status_reason": str,
            "requested_by": str,
            "requested_at": str,
            "trigger_id": str,
            "previous_version": str,
            "approved_at": str,
            "started_at": str,
            "finished_at": str,
            "rollback_of": int,
            "channel": str,
            "message_ts": str,
            "permalink": str,
            "updated_at": str,
        },
        pk="id",
        not_null={"service", "environment", "version", "status", "requested_by", "requested_at"},
        foreign_keys=[("rollback_of", "deploys", "id")],
    )
    db["deploys"].create_index(["service", "environment", "status"])
    db["deploys"].create_index(["trigger_id"], unique=True)
    # The database itself guarantees one deploy in flight per service and
    # environment, whatever races the event loop or a second process brings.
    states = ", ".join(f"'{s}'" for s in _ACTIVE_AT_M1)
    db.execute(
        "CREATE UNIQUE INDEX one_deploy_in_flight ON deploys(service, environment) "
        f"WHERE status IN ({states})"
    )
    db["checklist_items"].create(
        {"deploy_id": int, "position": int, "label": str, "ticked_by": str, "ticked_at": str},
        pk=("deploy_id", "position"),
        not_null={"label"},
        foreign_keys=[("deploy_id", "deploys", "id")],
    )
    db["approvals"].create(
        {"deploy_id": int, "user_id": str, "approved_at": str},
        pk=("deploy_id", "user_id"),
        foreign_keys=[("deploy_id", "deploys", "id")],
    )
    db["locks"].create(
        {"service": str, "environment": str, "locked_by": str, "locked_at": str, "reason": str, "until": str},
        pk=("service", "environment"),
    )
    db["audit"].create(
        {"id": int, "at": str, "deploy_id": int, "actor": str, "action": str, "detail": str, "source": str},
        pk="id",
        not_null={"at", "action"},
    )
    db["audit"].create_index(["deploy_id"])
    # Append-only: history is evidence, so the database refuses to rewrite it.
    for verb in ("UPDATE", "DELETE"):
        db.execute(
            f"CREATE TRIGGER audit_no_{verb.lower()} BEFORE {verb} ON audit "
            "BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END"
        )


def _m2_execution(db: sqlite_utils.Database) -> None:
    deploys = db["deploys"]
    for column, kind in [("executor_kind", str), ("executor_ref", str), ("exit_code", int), ("run_url", str),
                         ("engine_summary", str), ("log_tail", str), ("verification", str)]:
        deploys.add_column(column, kind)
    # What engines report back (webhook callbacks), kept before anyone is
    # woken, so a report that arrives during a restart is not lost.
    db["engine_reports"].create(
        {"id": int, "deploy_id": int, "at": str, "status": str, "log_url": str, "message": str},
        pk="id",
        not_null={"deploy_id", "at", "status"},
        foreign_keys=[("deploy_id", "deploys", "id")],
    )
    db["engine_reports"].create_index(["deploy_id"])


def _m3_alerts_and_outbox(db: sqlite_utils.Database) -> None:
    # One row per alert occurrence a monitor sent (its fingerprint and start
    # identify it: repeats and HA duplicates land on the same row).
    db["alerts"].create(
        {"id": int, "source": str, "fingerprint": str, "group_key": str, "status": str, "name": str,
         "service": str, "environment": str, "metric": str, "value": float, "baseline": float,
         "severity": str, "level": str, "starts_at": str, "ends_at": str, "received_at": str,
         "updated_at": str, "deploy_id": int, "message_key": str, "summary": str, "url": str, "payload": str},
        pk="id",
        not_null={"source", "fingerprint", "status", "received_at"},
        foreign_keys=[("deploy_id", "deploys", "id")],
    )
    db["alerts"].create_index(["source", "fingerprint", "starts_at"], unique=True)
    db["alerts"].create_index(["service", "environment", "status"])
    db["alert_events"].create(
        {"id": int, "alert_id": int, "at": str, "status": str, "level": str, "value": float},
        pk="id",
        foreign_keys=[("alert_id", "alerts", "id")],
    )
    # The durable outbox: every Slack message an alert causes is written here
    # in the same transaction as the alert, then delivered (paced per channel,
    # retried, resumed after a restart) by bot/slack/outbox.py.
    db["outbox"].create(
        {"id": int, "message_key": str, "op": str, "channel": str, "thread_key": str, "text": str,
         "blocks": str, "state": str, "attempts": int, "next_attempt_at": str, "created_at": str,
         "sent_at": str, "last_error": str},
        pk="id",
        not_null={"message_key", "op", "state", "created_at"},
    )
    db["outbox"].create_index(["state", "next_attempt_at"])
    db["outbox"].create_index(["message_key"])
    # Where each logical message ended up in Slack.
    db["slack_messages"].create({"key": str, "channel": str, "ts": str}, pk="key")


def _m4_alert_message_index(db: sqlite_utils.Database) -> None:
    # Every new alert asks whether its message still has a firing alert, and
    # every render lists a message's alerts: without this index each asked by
    # scanning the whole table (bench/alert_storm.py: most of the ingest time,
    # growing with every alert ever stored).
    db["alerts"].create_index(["message_key", "status"])


def _m5_roles_overrides_and_blocks(db: sqlite_utils.Database) -> None:
    deploys = db["deploys"]
    deploys.add_column("override_reason", str)  # why a request asked to deploy inside a freeze
    deploys.add_column("override_freeze", str)  # JSON list of the freeze occurrences it overrides
    # what the giver's roles let an approval count as: approve | override | both
    db["approvals"].add_column("counts_as", str, not_null_default="approve")
    # A version rolled back on an environment stays off it until someone unblocks it.
    db["blocked_versions"].create(
        {"service": str, "environment": str, "version": str, "blocked_by": str, "blocked_at": str,
         "reason": str, "rollback_id": int},
        pk=("service", "environment", "version"),
        not_null={"blocked_by", "blocked_at", "reason"},
    )


def _m6_stale_requests_and_migrations(db: sqlite_utils.Database) -> None:
    deploys = db["deploys"]
    deploys.add_column("expires_at", str)  # a request awaiting approval expires then (NULL: never)
    deploys.add_column("reminded_at", str)  # the last reminder to its approvers
    deploys.add_column("migration", int, not_null_default=0)  # it carries a database migration
    deploys.add_column("notified_status", str)  # the last status its requester was sent a DM about
    # Deploys that ended before direct messages existed are old news: never DM them when they are next redrawn.
    finished = ", ".join(f"'{state}'" for state in _FINISHED_AT_M6)
    db.execute(f"UPDATE deploys SET notified_status = status WHERE status IN ({finished})")


def _m7_alerts_by_deploy(db: sqlite_utils.Database) -> None:
    # When a deploy is rolled back, the alert messages tied to it are redrawn
    # (their Rollback button no longer applies): found by deploy, not by scanning.
    db["alerts"].create_index(["deploy_id"])


def _m8_rolled_back_at(db: sqlite_utils.Database) -> None:
    # A rollback used to overwrite the undone deploy's finished_at, changing
    # its duration, its alerts' "… after it reached production" and the DORA
    # figures after the fact. The moment it was undone gets a column of its
    # own; finished_at goes back to when it went live, read from the audit
    # event that moved it to succeeded (kept as it was when there is none).
    db["deploys"].add_column("rolled_back_at", str)
    db.execute("UPDATE deploys SET rolled_back_at = finished_at WHERE status = 'rolled_back'")
    db.execute(
        "UPDATE deploys SET finished_at = coalesce((SELECT min(audit.at) FROM audit WHERE audit.deploy_id = deploys.id "
        "AND json_extract(audit.detail, '$.to') = 'succeeded'), finished_at) WHERE status = 'rolled_back'")


def _m9_slack_views(db: sqlite_utils.Database) -> None:
    """Every Slack write goes through the outbox: an item may name a view
    (``deploy:12``, ``home:U0ALICE``) drawn from the stored state when it is
    sent, instead of carrying its text; a posted message keeps its permalink."""
    db["outbox"].add_column("view", str)
    db["slack_messages"].add_column("permalink", str)
    # work decided with a change and done after it (store/intents.py): one pending per kind and deploy
    db["intents"].create({"id": int, "kind": str, "deploy_id": int, "created_at": str, "settled_at": str,
                          "outcome": str}, pk="id", not_null={"kind", "deploy_id", "created_at"})
    db.execute("CREATE UNIQUE INDEX one_pending_intent ON intents(kind, deploy_id) WHERE settled_at IS NULL")


def _m10_lease(db: sqlite_utils.Database) -> None:
    """Issue 11: one instance owns the database (a lease with holder, heartbeat and expiry)."""
    # One row at most: which `slipway serve` process owns the database (runs
    # the workers) and until when (store/lease.py). A standby reads it before
    # it may migrate anything, so whatever the schema's version: never change
    # this table's columns, in this migration or a later one.
    db["lease"].create(
        {"name": str, "holder": str, "acquired_at": str, "heartbeat_at": str, "expires_at": str},
        pk="name",
        not_null={"holder", "acquired_at", "heartbeat_at", "expires_at"},
    )


def _m11_alert_relay_indexes(db: sqlite_utils.Database) -> None:
    """Issue 11: the alert relay's queries, indexed and per batch."""
    # A message key is ``{base}-{episode}``. Which episode a new alert joins
    # was found with ``message_key LIKE 'base-%'``: a scan of every alert
    # ever stored, for every new alert (bench/alert_storm.py: quadratic in
    # the storm). The base gets a column of its own, found through an index
    # (whose rowid order is the newest-first the relay asks for).
    db["alerts"].add_column("message_base", str)
    keys = [row[0] for row in db.execute("SELECT DISTINCT message_key FROM alerts WHERE message_key IS NOT NULL")]
    for key in keys:
        base, _, episode = key.rpartition("-")
        if base and episode.isdigit():
            db.execute("UPDATE alerts SET message_base = ? WHERE message_key = ?", [base, key])
    db["alerts"].create_index(["message_base"])
    # How many threads of its own a service opened lately (the storm digest's
    # threshold): only alerts tied to no deploy count, so only they are indexed.
    db.execute("CREATE INDEX alerts_own_threads ON alerts(service, received_at, message_key) "
               "WHERE deploy_id IS NULL")


def _m12_progressive_delivery(db: sqlite_utils.Database) -> None:
    """Issue 12: rollouts in stages (canary steps, blue-green phases, the
    bake), each stage's measurements, and a deploy that is baking still
    occupies its service and environment."""
    db.execute("DROP INDEX one_deploy_in_flight")
    states = ", ".join(f"'{s}'" for s in (*_ACTIVE_AT_M1, "baking"))
    db.execute(
        "CREATE UNIQUE INDEX one_deploy_in_flight ON deploys(service, environment) "
        f"WHERE status IN ({states})"
    )
    # One row per staged deploy: its plan's shape, who paused it, an abort
    # asked for, the baselines measured before full traffic (for the bake).
    db["rollouts"].create(
        {"deploy_id": int, "strategy": str, "on_failure": str, "created_at": str, "paused_at": str,
         "paused_by": str, "pause_reason": str, "abort_requested_at": str, "abort_requested_by": str,
         "abort_reason": str, "baselines": str, "outcome": str, "ended_at": str},
        pk="deploy_id", not_null={"strategy", "on_failure", "created_at"},
        foreign_keys=[("deploy_id", "deploys", "id")],
    )
    db["rollout_stages"].create(
        {"deploy_id": int, "position": int, "kind": str, "weight": int, "phase": str, "pause_seconds": float,
         "analysis": str, "state": str, "started_at": str, "watch_started_at": str, "ends_at": str,
         "remaining": float, "ended_at": str, "decision": str, "promoted_by": str, "promoted_at": str},
        pk=("deploy_id", "position"), not_null={"kind", "state", "pause_seconds", "analysis"},
        foreign_keys=[("deploy_id", "rollouts", "deploy_id")],
    )
    db["measurements"].create(
        {"id": int, "deploy_id": int, "position": int, "check_name": str, "at": str, "value": float,
         "baseline": float, "verdict": str, "detail": str},
        pk="id", not_null={"deploy_id", "position", "check_name", "at", "verdict"},
        foreign_keys=[("deploy_id", "rollouts", "deploy_id")],
    )
    db["measurements"].create_index(["deploy_id", "position"])
    # a staged deploy calls its engine once per step: which call a webhook report answers
    # (``step-2``, ``phase-switch``, ``abort``; NULL for a direct deploy's one call)
    db["engine_reports"].add_column("stage", str)


def _m13_changes_and_github(db: sqlite_utils.Database) -> None:
    """Issue 13: what a deploy ships (its changes, looked up after the ack),
    and GitHub writes (deployments, their statuses, releases) as durable rows."""
    # JSON of the change set (commits, pull requests, compare link, migration files), and
    # where its lookups stand: 'checking' (not yet approvable nor startable), 'done', or NULL
    # (the service has no changes source nor artifact check)
    db["deploys"].add_column("changes", str)
    db["deploys"].add_column("lookup_state", str)
    # one row per GitHub write, in order per deploy; sent by a worker, retried with backoff
    db["github_writes"].create(
        {"id": int, "deploy_id": int, "kind": str, "payload": str, "state": str, "attempts": int,
         "next_attempt_at": str, "created_at": str, "sent_at": str, "last_error": str, "result": str},
        pk="id", not_null={"deploy_id", "kind", "payload", "state", "attempts", "created_at"},
        defaults={"state": "pending", "attempts": 0},
        foreign_keys=[("deploy_id", "deploys", "id")],
    )
    db["github_writes"].create_index(["state", "id"])
    # a watched stage asks, per measurement, when each check was last measured and how often it
    # failed: answered from this index however long the stage has run (bench/rollouts.py --history)
    db.execute("CREATE INDEX measurements_by_check ON measurements(deploy_id, position, check_name, at)")
    # the GitHub deployment that mirrors a Slipway deploy
    db["github_deployments"].create(
        {"deploy_id": int, "repository": str, "github_id": int, "created_at": str},
        pk="deploy_id", not_null={"repository", "github_id", "created_at"},
        foreign_keys=[("deploy_id", "deploys", "id")],
    )


def _m14_many_teams(db: sqlite_utils.Database) -> None:
    """Issue 14: API tokens (their hashes, never the tokens) and a deploy queue."""
    db["api_tokens"].create(
        {"id": int, "name": str, "token_hash": str, "scopes": str, "created_at": str, "expires_at": str,
         "revoked_at": str, "last_used_at": str},
        pk="id", not_null={"name", "token_hash", "scopes", "created_at"},
    )
    db["api_tokens"].create_index(["token_hash"], unique=True)
    db["api_tokens"].create_index(["name"], unique=True)
    # a queued request's place in line (its id orders the queue; queued_at is when it joined)
    db["deploys"].add_column("queued_at", str)
    db["deploys"].create_index(["service", "environment", "queued_at"])


MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [
    _m1_foundation, _m2_execution, _m3_alerts_and_outbox, _m4_alert_message_index,
    _m5_roles_overrides_and_blocks, _m6_stale_requests_and_migrations, _m7_alerts_by_deploy,
    _m8_rolled_back_at, _m9_slack_views, _m10_lease, _m11_alert_relay_indexes, _m12_progressive_delivery,
    _m13_changes_and_github, _m14_many_teams]


def migrate(db: sqlite_utils.Database, now: str) -> int:
    """Apply every migration not yet applied; return the schema version."""
    if "schema_migrations" not in db.table_names():
        db["schema_migrations"].create({"version": int, "applied_at": str}, pk="version")
    applied = {row["version"] for row in db["schema_migrations"].rows}
    for number, migration in enumerate(MIGRATIONS, start=1):
        if number in applied:
            continue
        with db.atomic():
            migration(db)
            db["schema_migrations"].insert({"version": number, "applied_at": now})
    return len(MIGRATIONS)
