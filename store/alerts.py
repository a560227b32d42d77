"""Alerts in the store: one row per alert occurrence, so repeats and HA
duplicates of the same alert land on the same row and are recognised."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from store import Store

CHANGES = ("new", "duplicate", "changed", "resolved", "louder", "quieter")


@dataclass(frozen=True)
class StoredAlert:
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


def _row(row: dict[str, Any]) -> StoredAlert:
    return StoredAlert(**{k: row[k] for k in StoredAlert.__dataclass_fields__})


def find(store: Store, source: str, fingerprint: str, starts_at: str | None) -> StoredAlert | None:
    rows = list(store.db.query("SELECT * FROM alerts WHERE source = ? AND fingerprint = ? AND starts_at IS ?",
                               [source, fingerprint, starts_at]))
    return _row(rows[0]) if rows else None


def latest_firing(store: Store, source: str, fingerprint: str) -> StoredAlert | None:
    rows = list(store.db.query("SELECT * FROM alerts WHERE source = ? AND fingerprint = ? AND status = 'firing' "
                               "ORDER BY id DESC LIMIT 1", [source, fingerprint]))
    return _row(rows[0]) if rows else None


def upsert(store: Store, fields: dict[str, Any], payload: dict[str, Any]) -> tuple[StoredAlert, str]:
    """Record an alert occurrence (inside the caller's transaction) and say
    how it changed: new, duplicate (same status and level, or a stale firing
    of an occurrence that already resolved: nothing to tell), resolved,
    louder or quieter."""
    now = store._now()
    existing = find(store, fields["source"], fields["fingerprint"], fields["starts_at"])
    if existing is None:
        columns = {**fields, "received_at": now, "updated_at": now, "payload": json.dumps(payload, default=str)}
        cursor = store.db.execute(
            f"INSERT INTO alerts ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})",
            list(columns.values()))
        alert_id, change = cursor.lastrowid, "new"
    else:
        alert_id = existing.id
        change = _change(existing, fields)
        if change == "duplicate":
            return existing, change
        keep = ("deploy_id", "message_key")  # an alert stays where it was first posted
        updates = {k: v for k, v in fields.items() if k not in keep}
        store.db.execute(
            f"UPDATE alerts SET {', '.join(f'{k} = ?' for k in updates)}, updated_at = ?, payload = ? WHERE id = ?",
            [*updates.values(), now, json.dumps(payload, default=str), alert_id])
    store.db.execute("INSERT INTO alert_events (alert_id, at, status, level, value) VALUES (?, ?, ?, ?, ?)",
                     [alert_id, now, fields["status"], fields["level"], fields.get("value")])
    return get(store, alert_id), change


def _change(existing: StoredAlert, fields: dict[str, Any]) -> str:
    from bot.alerts.rules import LEVELS

    if fields["status"] != existing.status:
        if fields["status"] == "firing":
            # The same occurrence (same start) cannot fire again once it ended: a
            # new firing has a new start. This is a stale notification, e.g. an
            # Alertmanager HA peer's "firing" arriving after the other's "resolved".
            return "duplicate"
        return "resolved"
    if fields["level"] == existing.level:
        # same state; a new value still changes what the message shows
        return "changed" if fields.get("value") != existing.value else "duplicate"
    return "louder" if LEVELS.index(fields["level"]) < LEVELS.index(existing.level) else "quieter"


def get(store: Store, alert_id: int) -> StoredAlert:
    return _row(next(store.db.query("SELECT * FROM alerts WHERE id = ?", [alert_id])))


def with_message(store: Store, message_key: str) -> list[StoredAlert]:
    """Every alert shown by one Slack message, oldest first."""
    return [_row(r) for r in store.db.query("SELECT * FROM alerts WHERE message_key = ? ORDER BY id", [message_key])]


def latest_episode(store: Store, base: str) -> tuple[str, bool] | None:
    """The newest message key ``{base}-N`` and whether any of its alerts
    still fires."""
    row = store.db.execute(
        "SELECT message_key FROM alerts WHERE message_key LIKE ? ESCAPE '\\' ORDER BY id DESC LIMIT 1",
        [base.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "-%"]).fetchone()
    if row is None:
        return None
    firing = store.db.execute("SELECT 1 FROM alerts WHERE message_key = ? AND status = 'firing' LIMIT 1",
                              [row[0]]).fetchone()
    return row[0], firing is not None


def message_keys_of_deploy(store: Store, deploy_id: int) -> list[str]:
    """The messages of the alerts tied to deploy ``deploy_id``."""
    return [row[0] for row in store.db.execute(
        "SELECT DISTINCT message_key FROM alerts WHERE deploy_id = ? AND message_key IS NOT NULL", [deploy_id])]


def next_line_number(store: Store) -> int:
    """A fresh number for a thread line's message key."""
    return store.db.execute("SELECT count(*) + 1 FROM outbox").fetchone()[0]


def recent_threads(store: Store, service: str | None, since: str) -> int:
    """How many alert messages of their own ``service`` opened since ``since``."""
    row = store.db.execute(
        "SELECT count(DISTINCT message_key) FROM alerts WHERE deploy_id IS NULL AND service IS ? "
        "AND received_at >= ? AND message_key NOT LIKE 'digest-%'", [service, since]).fetchone()
    return row[0]
