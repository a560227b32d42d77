"""Alerts in the store: one row per alert occurrence, so repeats and HA
duplicates of the same alert land on the same row and are recognised."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Sequence
from typing import Any

from store.database import Database
from store.records import StoredAlert

CHANGES = ("new", "duplicate", "changed", "resolved", "louder", "quieter")
_CHUNK = 500  # values per IN (...) list: well under SQLite's limit on bound parameters
_UNKNOWN: Any = object()  # ``upsert`` looks the occurrence up itself


def episode_base(message_key: str | None) -> str | None:
    """The base of an episode's message key ``{base}-{N}`` (None: not such a key)."""
    base, _, episode = (message_key or "").rpartition("-")
    return base if base and episode.isdigit() else None


def _row(row: dict[str, Any]) -> StoredAlert:
    return StoredAlert(**{k: row[k] for k in StoredAlert.__dataclass_fields__})


# What a StoredAlert is read from (not the monitor's whole payload), in its
# fields' order: a delivery reads hundreds of rows, made straight from tuples.
_COLUMNS = ", ".join(StoredAlert.__dataclass_fields__)


def _change_between(existing: StoredAlert, fields: dict[str, Any], levels: Sequence[str]) -> str:
    """How an alert occurrence changed (one of :data:`CHANGES` but ``new``),
    judged with ``levels`` (loudest first)."""
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
    return "louder" if levels.index(fields["level"]) < levels.index(existing.level) else "quieter"


class Alerts:
    """The alert occurrences monitors sent, and which message shows each."""

    def __init__(self, database: Database) -> None:
        self._database = database
        self._db = database.db

    def find(self, source: str, fingerprint: str, starts_at: str | None) -> StoredAlert | None:
        """The occurrence of that alert that started at ``starts_at``, if recorded."""
        rows = list(self._db.query("SELECT * FROM alerts WHERE source = ? AND fingerprint = ? AND starts_at IS ?",
                                   [source, fingerprint, starts_at]))
        return _row(rows[0]) if rows else None

    def find_many(self, source: str, occurrences: Iterable[tuple[str, str | None]]
                  ) -> dict[tuple[str, str | None], StoredAlert]:
        """Of the occurrences ``(fingerprint, starts_at)`` of ``source``'s
        alerts, those recorded, by occurrence: one query per
        :data:`_CHUNK` fingerprints (a delivery's worth), not one per alert."""
        wanted = set(occurrences)
        fingerprints = sorted({fingerprint for fingerprint, _ in wanted})
        found: dict[tuple[str, str | None], StoredAlert] = {}
        for start in range(0, len(fingerprints), _CHUNK):
            chunk = fingerprints[start:start + _CHUNK]
            for row in self._db.conn.execute(
                    f"SELECT {_COLUMNS} FROM alerts WHERE source = ? "
                    f"AND fingerprint IN ({', '.join('?' for _ in chunk)})",
                    [source, *chunk]):
                alert = StoredAlert(*row)
                if (alert.fingerprint, alert.starts_at) in wanted:
                    found[(alert.fingerprint, alert.starts_at)] = alert
        return found

    def latest_firing(self, source: str, fingerprint: str) -> StoredAlert | None:
        """The newest occurrence of that alert that still fires, if any."""
        rows = list(self._db.query("SELECT * FROM alerts WHERE source = ? AND fingerprint = ? AND status = 'firing' "
                                   "ORDER BY id DESC LIMIT 1", [source, fingerprint]))
        return _row(rows[0]) if rows else None

    def upsert(self, fields: dict[str, Any], payload: dict[str, Any] | str, *, levels: Sequence[str],
               existing: StoredAlert | None = _UNKNOWN, at: str | None = None,
               events: list[tuple[Any, ...]] | None = None) -> tuple[StoredAlert, str]:
        """Record an alert occurrence (inside the caller's transaction, or one
        of its own) and say how it changed: new, duplicate (same status and
        level, or a stale firing of an occurrence that already resolved:
        nothing to tell), changed, resolved, louder or quieter. ``levels``
        ranks the alert levels, loudest first (the rules' business, not the
        store's). ``payload``: the monitor's own fields, or their JSON.
        ``existing``: the occurrence as the caller just read it in the same
        transaction (None: not recorded), to spare a second look. ``at``: the
        moment recorded (default: now; a delivery's alerts share one).
        ``events``: where to put the change's ``alert_events`` row, for the
        caller to write with :meth:`record_events` before its transaction
        ends (default: written here)."""
        if not isinstance(payload, str):
            payload = json.dumps(payload, default=str)
        with self._database.transaction():
            now = at or self._database.now()
            if existing is _UNKNOWN:
                existing = self.find(fields["source"], fields["fingerprint"], fields["starts_at"])
            if existing is None:
                columns = {**fields, "message_base": episode_base(fields.get("message_key")), "received_at": now,
                           "updated_at": now, "payload": payload}
                cursor = self._db.conn.execute(  # (inside the transaction above: no sqlite-utils autocommit)
                    f"INSERT INTO alerts ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})",
                    list(columns.values()))
                alert_id, change = cursor.lastrowid, "new"
                stored = _row({**columns, "id": alert_id})
            else:
                alert_id = existing.id
                change = _change_between(existing, fields, levels)
                if change == "duplicate":
                    return existing, change
                keep = ("deploy_id", "message_key")  # an alert stays where it was first posted
                updates = {k: v for k, v in fields.items() if k not in keep}
                self._db.conn.execute(
                    f"UPDATE alerts SET {', '.join(f'{k} = ?' for k in updates)}, updated_at = ?, payload = ? "
                    "WHERE id = ?",
                    [*updates.values(), now, payload, alert_id])
                stored = dataclasses.replace(existing, **{k: v for k, v in updates.items()
                                                          if k in StoredAlert.__dataclass_fields__})
            event = (alert_id, now, fields["status"], fields["level"], fields.get("value"))
            if events is None:
                self.record_events([event])
            else:
                events.append(event)
        return stored, change

    def record_events(self, events: list[tuple[Any, ...]]) -> None:
        """Write ``alert_events`` rows collected by :meth:`upsert` (one statement for all)."""
        self._db.conn.executemany("INSERT INTO alert_events (alert_id, at, status, level, value) VALUES (?, ?, ?, ?, ?)",
                                  events)

    def get(self, alert_id: int) -> StoredAlert:
        """The alert occurrence with that id (LookupError when there is none)."""
        return _row(self._database.row_by_id("alerts", alert_id, LookupError(f"no alert {alert_id}")))

    def with_message(self, message_key: str) -> list[StoredAlert]:
        """Every alert shown by one Slack message, oldest first."""
        return [StoredAlert(*row) for row in self._db.conn.execute(
            f"SELECT {_COLUMNS} FROM alerts WHERE message_key = ? ORDER BY id", [message_key])]

    def latest_episode(self, base: str) -> tuple[str, bool] | None:
        """The newest message key ``{base}-N`` and whether any of its alerts
        still fires (two index lookups)."""
        row = self._db.execute("SELECT message_key FROM alerts WHERE message_base = ? ORDER BY id DESC LIMIT 1",
                               [base]).fetchone()
        if row is None:
            return None
        firing = self._db.execute("SELECT 1 FROM alerts WHERE message_key = ? AND status = 'firing' LIMIT 1",
                                  [row[0]]).fetchone()
        return row[0], firing is not None

    def message_keys_of_deploy(self, deploy_id: int) -> list[str]:
        """The messages of the alerts tied to deploy ``deploy_id``."""
        return [row[0] for row in self._db.execute(
            "SELECT DISTINCT message_key FROM alerts WHERE deploy_id = ? AND message_key IS NOT NULL", [deploy_id])]

    def recent_threads(self, service: str | None, since: str) -> int:
        """How many alert messages of their own ``service`` opened since ``since``
        (a range of the ``alerts_own_threads`` index)."""
        row = self._db.execute(
            "SELECT count(DISTINCT message_key) FROM alerts WHERE deploy_id IS NULL AND service IS ? "
            "AND received_at >= ? AND message_key NOT LIKE 'digest-%'", [service, since]).fetchone()
        return row[0]
