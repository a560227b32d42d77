"""Read-only queries behind the views (`/deploy status`, App Home, `/deploy
stats`, the gauges of `/metrics`): a few set-based queries per view, never
one per service and environment, because a view is answered inside Slack's
3-second ack.

Deploys read here are *light*: without their checklist and approvals, which
no view shows (reading them would cost two more queries per deploy).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from store.database import Database
from store.records import Deploy, DeployTimes
from store.status import ACTIVE_STATES, RAN_STATES, DeployStatus

# the states in which a deploy went live: its finished_at is that moment
_WENT_LIVE = (DeployStatus.SUCCEEDED, DeployStatus.ROLLED_BACK)
# a stored status to its member, a dict look-up per row (finished_since reads ~100,000 rows in an ack)
_STATUS = {status.value: status for status in DeployStatus}


def _light(row: dict[str, Any]) -> Deploy:
    fields = {}
    for name, spec in Deploy.__dataclass_fields__.items():
        if name in row and name not in ("checklist", "approvals"):
            # SQLite keeps booleans as integers; the dataclass says which are booleans
            fields[name] = bool(row[name]) if spec.type == "bool" else row[name]
    fields["status"] = _STATUS[fields["status"]]
    return Deploy(**fields)


def _placeholders(values: Iterable[Any]) -> str:
    return ", ".join("?" for _ in values)


class ReadModels:
    """What the views read, in few queries."""

    def __init__(self, database: Database) -> None:
        self._db = database.db

    def live(self, services: list[str], environments: list[str]) -> dict[tuple[str, str], Deploy]:
        """What runs where: per (service, environment), the latest deploy that
        succeeded there (a rollback deploy included), as
        :meth:`store.deploys.Deploys.latest_successful` chooses it.

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
                latest = self._db.execute(
                    "SELECT max(id) FROM deploys WHERE service = ? AND environment = ? AND status = ?",
                    [service, environment, DeployStatus.SUCCEEDED]).fetchone()[0]
                if latest is not None:
                    ids.append(latest)
        if not ids:
            return {}
        rows = self._db.query(f"SELECT * FROM deploys WHERE id IN ({_placeholders(ids)})", ids)
        return {(row["service"], row["environment"]): _light(row) for row in rows}

    def in_flight(self, services: list[str]) -> dict[tuple[str, str], Deploy]:
        """Per (service, environment), the deploy occupying it (at most one: a
        unique index guarantees it)."""
        if not services:
            return {}
        rows = self._db.query(
            f"SELECT * FROM deploys WHERE status IN ({_placeholders(ACTIVE_STATES)}) "
            f"AND service IN ({_placeholders(services)})",
            [*ACTIVE_STATES, *services],
        )
        return {(row["service"], row["environment"]): _light(row) for row in rows}

    def recent(self, limit: int) -> list[Deploy]:
        """The last ``limit`` deploys recorded, newest first."""
        return [_light(row) for row in self._db.query("SELECT * FROM deploys ORDER BY id DESC LIMIT ?", [limit])]

    def matching(self, *, service: str | None = None, environment: str | None = None,
                 status: str | None = None, before: int | None = None, limit: int = 50) -> list[int]:
        """The ids of the last ``limit`` deploys matching every filter given
        (and below id ``before``, for the next page), newest first
        (``GET /api/v1/deploys``)."""
        where, params = ["1 = 1"], []
        for column, value in (("service", service), ("environment", environment), ("status", status)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if before is not None:
            where.append("id < ?")
            params.append(before)
        rows = self._db.execute(f"SELECT id FROM deploys WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT ?",
                                [*params, limit]).fetchall()
        return [row[0] for row in rows]

    def finished_since(self, since: str, service: str | None = None) -> list[DeployTimes]:
        """Every deploy that ran and finished at or after ``since`` (ISO), oldest
        first: all a DORA window starting at ``since`` can need, because every
        moment it measures (success, failure, restoration) is at or before the
        deploy's ``finished_at`` (a rollback never moves it)."""
        where, params = f"status IN ({_placeholders(RAN_STATES)}) AND finished_at >= ?", [*RAN_STATES, since]
        if service is not None:
            where, params = where + " AND service = ?", params + [service]
        # plain tuples, not sqlite-utils' dicts: a year of a busy team's deploys is ~100,000 rows, read in the ack
        # a rollout aborted before full traffic: when its aborted stage began (its outage, restored at the abort)
        rows = self._db.execute(
            "SELECT id, service, environment, status, rollback_of, requested_at, finished_at, "
            "(SELECT s.started_at FROM rollout_stages s JOIN rollouts r ON r.deploy_id = s.deploy_id "
            " WHERE s.deploy_id = deploys.id AND s.state = 'aborted' AND r.outcome = 'aborted') FROM deploys "
            f"WHERE {where} ORDER BY finished_at, id", params).fetchall()
        return [DeployTimes(deploy_id, service_, environment, _STATUS[status], rollback_of, requested_at,
                            finished_at, went_live_at=finished_at if status in _WENT_LIVE else None,
                            aborted_from=aborted_from)
                for deploy_id, service_, environment, status, rollback_of, requested_at, finished_at, aborted_from
                in rows]

    def deploy_counts(self) -> dict[tuple[str, str], int]:
        """How many deploy records there are per (status, environment)."""
        # Grouped in the order of the (service, environment, status) index, which
        # covers the query, then summed here: grouping by (status, environment)
        # in SQL sorts a temporary B-tree and took ~6x longer (9.4 ms against
        # 1.7 ms over 20,000 deploys).
        counts: dict[tuple[str, str], int] = {}
        rows = self._db.execute(
            "SELECT environment, status, count(*) FROM deploys GROUP BY service, environment, status")
        for environment, status, count in rows:
            counts[(status, environment)] = counts.get((status, environment), 0) + count
        return counts
