"""Read-only queries behind the views (`/deploy status`, App Home, `/deploy
stats`): a few set-based queries per view, never one per service and
environment, because a view is answered inside Slack's 3-second ack.

Deploys read here are *light*: without their checklist and approvals, which
no view shows (reading them would cost two more queries per deploy).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from store import Deploy, Store
from store.schema import ACTIVE_STATES

# The states of a deploy whose engine ran to an end. Cancelled, rejected and
# expired requests never reached the engine.
RAN_STATES = ("succeeded", "failed", "rolled_back")


@dataclass(frozen=True)
class DeployTimes:
    """What the DORA figures need of one deploy that ran (ISO timestamps).

    ``went_live_at`` is when it succeeded: its ``finished_at`` while it is
    ``succeeded``, but for a ``rolled_back`` deploy the store moved
    ``finished_at`` to the moment it was undone, so the original success is
    read from the audit log. ``None`` for a failed deploy.
    """

    id: int
    service: str
    environment: str
    status: str
    rollback_of: int | None
    requested_at: str
    finished_at: str
    went_live_at: str | None


def _light(row: dict[str, Any]) -> Deploy:
    fields = {}
    for name, spec in Deploy.__dataclass_fields__.items():
        if name in row and name not in ("checklist", "approvals"):
            # SQLite keeps booleans as integers; the dataclass says which are booleans
            fields[name] = bool(row[name]) if spec.type == "bool" else row[name]
    return Deploy(**fields)


def _placeholders(values: Iterable[Any]) -> str:
    return ", ".join("?" for _ in values)


def live_deploys(store: Store, services: list[str], environments: list[str]) -> dict[tuple[str, str], Deploy]:
    """What runs where: per (service, environment), the latest deploy that
    succeeded there (a rollback deploy included), as ``Store.latest_successful``
    chooses it.

    The latest by id is the latest by ``finished_at``: with one deploy in
    flight per service and environment, a pair's deploys run one after the
    other, so they finish in the order they were recorded. ``max(id)`` is
    answered from the (service, environment, status) index without reading
    the pair's history (ordering by ``finished_at`` read all of it: ~300 ms
    for 50 services with 100,000 deploys).
    """
    ids = []
    for service in services:
        for environment in environments:
            latest = store.db.execute(
                "SELECT max(id) FROM deploys WHERE service = ? AND environment = ? AND status = 'succeeded'",
                [service, environment]).fetchone()[0]
            if latest is not None:
                ids.append(latest)
    if not ids:
        return {}
    rows = store.db.query(f"SELECT * FROM deploys WHERE id IN ({_placeholders(ids)})", ids)
    return {(row["service"], row["environment"]): _light(row) for row in rows}


def deploys_in_flight(store: Store, services: list[str]) -> dict[tuple[str, str], Deploy]:
    """Per (service, environment), the deploy occupying it (at most one: a
    unique index guarantees it)."""
    if not services:
        return {}
    rows = store.db.query(
        f"SELECT * FROM deploys WHERE status IN ({_placeholders(ACTIVE_STATES)}) "
        f"AND service IN ({_placeholders(services)})",
        [*ACTIVE_STATES, *services],
    )
    return {(row["service"], row["environment"]): _light(row) for row in rows}


def recent_deploys(store: Store, limit: int) -> list[Deploy]:
    """The last ``limit`` deploys recorded, newest first."""
    return [_light(row) for row in store.db.query("SELECT * FROM deploys ORDER BY id DESC LIMIT ?", [limit])]


def deploys_finished_since(store: Store, since: str, service: str | None = None) -> list[DeployTimes]:
    """Every deploy that ran and finished at or after ``since`` (ISO), oldest
    first: all a DORA window starting at ``since`` can need, because every
    moment it measures (success, failure, restoration) is at or before the
    deploy's ``finished_at``."""
    where, params = f"status IN ({_placeholders(RAN_STATES)}) AND finished_at >= ?", [*RAN_STATES, since]
    if service is not None:
        where, params = where + " AND service = ?", params + [service]
    # plain tuples, not sqlite-utils' dicts: a year of a busy team's deploys is ~100,000 rows, read in the ack
    rows = store.db.execute(
        "SELECT id, service, environment, status, rollback_of, requested_at, finished_at FROM deploys "
        f"WHERE {where} ORDER BY finished_at, id", params).fetchall()
    records = [DeployTimes(*row, went_live_at=row[6] if row[3] == "succeeded" else None) for row in rows]
    undone = _success_moments(store, [record.id for record in records if record.status == "rolled_back"])
    # a rolled-back deploy whose success left no audit trace is dated by its undoing: late, never lost
    return [replace(record, went_live_at=undone.get(record.id, record.finished_at))
            if record.status == "rolled_back" else record for record in records]


def _success_moments(store: Store, deploy_ids: list[int]) -> dict[int, str]:
    """When each deploy first became ``succeeded``, from the audit log."""
    moments: dict[int, str] = {}
    for start in range(0, len(deploy_ids), 500):  # well under SQLite's limit on bound parameters
        chunk = deploy_ids[start:start + 500]
        moments.update(store.db.execute(
            f"SELECT deploy_id, min(at) FROM audit WHERE deploy_id IN ({_placeholders(chunk)}) "
            "AND json_extract(detail, '$.to') = 'succeeded' GROUP BY deploy_id", chunk).fetchall())
    return moments
