"""The append-only audit log: every state change, refusal and decision, with
who, when and why. The database refuses to rewrite it (migration 1's
triggers); here it is only appended to and read."""

from __future__ import annotations

import json
from typing import Any

from store.database import Database
from store.records import AuditEvent


class AuditLog:
    """Appends to and reads the audit log."""

    def __init__(self, database: Database) -> None:
        self._database = database

    def record(self, deploy_id: int | None, actor: str | None, action: str,
               detail: dict[str, Any] | None = None, source: str | None = None) -> None:
        """Append one event, dated now: inside the caller's transaction when
        one is open (so the event and the change it records commit together),
        else in one of its own."""
        with self._database.transaction():
            self._database.db.execute(
                "INSERT INTO audit (at, deploy_id, actor, action, detail, source) VALUES (?, ?, ?, ?, ?, ?)",
                [self._database.now(), deploy_id, actor, action, json.dumps(detail or {}, sort_keys=True), source],
            )

    def events(self, deploy_id: int | None = None) -> list[AuditEvent]:
        """The audit log, oldest first; only one deploy's when ``deploy_id`` is given."""
        where, params = ("WHERE deploy_id = ?", [deploy_id]) if deploy_id is not None else ("", [])
        return [
            AuditEvent(r["id"], r["at"], r["deploy_id"], r["actor"], r["action"], json.loads(r["detail"] or "{}"),
                       r["source"])
            for r in self._database.db.query(f"SELECT * FROM audit {where} ORDER BY id", params)
        ]
