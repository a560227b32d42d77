"""Intents: work a change decided on, recorded with that change and done
later, so a crash between the decision and the work loses neither.

An automatic rollback, for one: the alert that calls for it and the intent
to roll back commit together; the rollback settles the intent in its own
transaction; a Slipway that starts finds the intents still pending and
carries them out.
"""

from __future__ import annotations

from dataclasses import dataclass

from store.database import Database

AUTO_ROLLBACK = "auto_rollback"


@dataclass(frozen=True)
class Intent:
    id: int
    kind: str
    deploy_id: int
    created_at: str


class Intents:
    """The intents table: what is still to be done."""

    def __init__(self, database: Database) -> None:
        self._database = database

    def add(self, kind: str, deploy_id: int) -> bool:
        """Record that ``kind`` is to be done for ``deploy_id`` (once: False
        when the same intent is already pending)."""
        with self._database.transaction():
            cursor = self._database.db.execute(
                "INSERT OR IGNORE INTO intents (kind, deploy_id, created_at) VALUES (?, ?, ?)",
                [kind, deploy_id, self._database.now()])
            return cursor.rowcount == 1

    def pending(self, kind: str) -> list[Intent]:
        """The intents of ``kind`` not yet settled, oldest first."""
        rows = self._database.db.execute(
            "SELECT id, kind, deploy_id, created_at FROM intents WHERE kind = ? AND settled_at IS NULL ORDER BY id",
            [kind]).fetchall()
        return [Intent(*row) for row in rows]

    def settle(self, kind: str, deploy_id: int, outcome: str) -> bool:
        """Mark the pending intent done, with what came of it; False when none was pending."""
        with self._database.transaction():
            cursor = self._database.db.execute(
                "UPDATE intents SET settled_at = ?, outcome = ? WHERE kind = ? AND deploy_id = ? "
                "AND settled_at IS NULL", [self._database.now(), outcome, kind, deploy_id])
            return cursor.rowcount == 1
