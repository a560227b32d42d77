"""Rollouts: a deploy delivered in stages (canary steps, blue-green phases,
the bake), each stage's pause deadline and decision, and every measurement
of its metric gates.

The runner (``bot/deploys/runner.py``) moves stages along; people steer them
(promote, pause, resume, abort) through ``bot/deploys/rollouts.py``. Both
write here, and every write that a person's click makes is conditional on
the state the click saw, so two clicks on Promote promote once and a click
on a stage that has already ended changes nothing.

A stage's life: ``pending`` → ``applying`` (the engine applies it) →
``watching`` (its pause runs and its checks are measured) → ``passed`` |
``failed`` | ``aborted``. A paused rollout keeps the watched stage's
remaining pause in ``remaining``; ``ends_at`` is set again on resume, so a
restart resumes the pause where it was, not afresh.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from store.database import Database, stamp

PENDING, APPLYING, WATCHING, PASSED, FAILED, ABORTED = "pending", "applying", "watching", "passed", "failed", "aborted"
ENDED_STAGES = (PASSED, FAILED, ABORTED)


@dataclass(frozen=True)
class Stage:
    deploy_id: int
    position: int  # 1-based, in the order the stages run
    kind: str  # "step" (canary), "phase" (blue-green) or "bake"
    weight: int | None  # a canary step's traffic weight, percent
    phase: str | None  # a blue-green phase: "deploy", "switch" or "release"
    pause_seconds: float  # how long the stage is watched
    analysis: tuple[str, ...]  # the checks measured while it is watched
    state: str
    started_at: str | None = None
    watch_started_at: str | None = None
    ends_at: str | None = None  # when the watch ends, unless the rollout is paused
    remaining: float | None = None  # seconds of the watch left, while the rollout is paused
    ended_at: str | None = None
    decision: str | None = None  # why it ended: "passed", "promoted by <@U…>", "error_rate 0.12 > 2× stable 0.01"
    promoted_by: str | None = None
    promoted_at: str | None = None

    @property
    def label(self) -> str:
        """How people name it: ``25%``, ``switch``, ``bake``."""
        if self.kind == "step":
            return f"{self.weight}%"
        return self.phase if self.kind == "phase" and self.phase else self.kind

    @property
    def applies(self) -> bool:
        """Whether the engine is called for this stage (the bake only watches)."""
        return self.kind != "bake"

    @property
    def ended(self) -> bool:
        return self.state in ENDED_STAGES


@dataclass(frozen=True)
class Measurement:
    id: int
    deploy_id: int
    position: int
    check: str
    at: str
    value: float | None
    baseline: float | None
    verdict: str  # "pass", "fail" or "inconclusive"
    detail: str


@dataclass(frozen=True)
class Tally:
    """One check's measurements in one stage, summed up."""

    last_at: str
    failed: int
    inconclusive: int
    last_verdict: str


@dataclass(frozen=True)
class Rollout:
    deploy_id: int
    strategy: str  # "canary", "blue_green" or "direct" (a direct deploy with a bake)
    on_failure: str  # "abort" or "pause"
    created_at: str
    stages: tuple[Stage, ...]
    paused_at: str | None = None
    paused_by: str | None = None  # a user id, or "slipway" for a pause the analysis asked for
    pause_reason: str | None = None
    abort_requested_at: str | None = None
    abort_requested_by: str | None = None
    abort_reason: str | None = None
    baselines: Mapping[str, float] = field(default_factory=dict)  # by check: last measured before full traffic
    outcome: str | None = None  # "passed", "aborted" (before full traffic), "failed"
    ended_at: str | None = None

    @property
    def current(self) -> Stage | None:
        """The stage under way (or next), None once every stage has ended."""
        return next((stage for stage in self.stages if not stage.ended), None)

    @property
    def paused(self) -> bool:
        return self.paused_at is not None

    @property
    def full_traffic(self) -> bool:
        """Whether the old version is gone: a canary's 100% step or a
        blue-green release has been applied, or the rollout is baking (a
        direct deploy's engine replaced it). An abort from here is a rollback."""
        if self.strategy == "direct":
            return True  # a direct deploy's engine replaces the old version in its one call
        for stage in self.stages:
            if stage.state == PENDING:
                continue
            if stage.kind == "bake" or (stage.kind == "step" and stage.weight == 100 and stage.state != APPLYING) \
                    or (stage.kind == "phase" and stage.phase == "release"):
                return True
        return False

    def stage(self, position: int) -> Stage:
        return self.stages[position - 1]


def _stage(row: Mapping[str, Any]) -> Stage:
    values = dict(row)
    values["analysis"] = tuple(json.loads(values["analysis"]))
    return Stage(**values)


class Rollouts:
    """The rollouts, rollout_stages and measurements tables."""

    def __init__(self, database: Database) -> None:
        self._database = database

    # -- reading ---------------------------------------------------------------------

    def get(self, deploy_id: int) -> Rollout | None:
        """The rollout of ``deploy_id``, None when it is a direct deploy without a bake."""
        rows = list(self._database.db.query("SELECT * FROM rollouts WHERE deploy_id = ?", [deploy_id]))
        if not rows:
            return None
        values = dict(rows[0])
        values["baselines"] = json.loads(values["baselines"] or "{}")
        stages = self._database.db.query(
            "SELECT * FROM rollout_stages WHERE deploy_id = ? ORDER BY position", [deploy_id])
        return Rollout(**values, stages=tuple(_stage(row) for row in stages))

    def measurements(self, deploy_id: int, position: int | None = None) -> list[Measurement]:
        """Every measurement of the rollout (or of one stage), oldest first."""
        sql = "SELECT id, deploy_id, position, check_name, at, value, baseline, verdict, detail FROM measurements " \
              "WHERE deploy_id = ?"
        params: list[Any] = [deploy_id]
        if position is not None:
            sql += " AND position = ?"
            params.append(position)
        rows = self._database.db.execute(sql + " ORDER BY id", params).fetchall()
        return [Measurement(*row) for row in rows]

    def stage_tally(self, deploy_id: int, position: int) -> dict[str, Tally]:
        """Per check of stage ``position``: when it was last measured and with
        what verdict, how many of its measurements failed and how many were
        inconclusive (indexed queries, however long the stage has been watched)."""
        rows = self._database.db.execute(
            "SELECT check_name, max(at), sum(verdict = 'fail'), sum(verdict = 'inconclusive'), max(id) "
            "FROM measurements WHERE deploy_id = ? AND position = ? GROUP BY check_name",
            [deploy_id, position]).fetchall()
        verdicts = dict(self._database.db.execute(
            f"SELECT id, verdict FROM measurements WHERE id IN ({', '.join('?' for _ in rows)})",
            [row[4] for row in rows]).fetchall()) if rows else {}
        return {check: Tally(last, failed, inconclusive, verdicts[newest])
                for check, last, failed, inconclusive, newest in rows}

    def recent_measurements(self, deploy_id: int, per_check: int) -> list[Measurement]:
        """The last ``per_check`` measurements of each check of each stage,
        oldest first (what a message shows: the last value and a sparkline)."""
        rows = self._database.db.execute(
            "SELECT id, deploy_id, position, check_name, at, value, baseline, verdict, detail FROM ("
            "  SELECT *, row_number() OVER (PARTITION BY position, check_name ORDER BY id DESC) AS newest "
            "  FROM measurements WHERE deploy_id = ?) WHERE newest <= ? ORDER BY id", [deploy_id, per_check]).fetchall()
        return [Measurement(*row) for row in rows]

    def in_progress(self) -> list[Rollout]:
        """The rollouts not yet ended (for /metrics and the runner's recovery)."""
        ids = [row[0] for row in self._database.db.execute(
            "SELECT deploy_id FROM rollouts WHERE ended_at IS NULL ORDER BY deploy_id").fetchall()]
        return [rollout for deploy_id in ids if (rollout := self.get(deploy_id)) is not None]

    def verdict_counts(self) -> dict[tuple[str, str], int]:
        """How many measurements each check had, by verdict (for /metrics)."""
        rows = self._database.db.execute(
            "SELECT check_name, verdict, count(*) FROM measurements GROUP BY check_name, verdict").fetchall()
        return {(check, verdict): count for check, verdict, count in rows}

    # -- the runner's writes -----------------------------------------------------------

    def create(self, deploy_id: int, strategy: str, on_failure: str, stages: Sequence[Mapping[str, Any]]) -> Rollout:
        """Record the rollout's plan: ``stages`` in order, each with ``kind``,
        ``weight``, ``phase``, ``pause_seconds`` and ``analysis``."""
        with self._database.transaction():
            self._database.db["rollouts"].insert({
                "deploy_id": deploy_id, "strategy": strategy, "on_failure": on_failure,
                "created_at": self._database.now(), "baselines": "{}"})
            self._database.db["rollout_stages"].insert_all([{
                "deploy_id": deploy_id, "position": position, "kind": stage["kind"], "weight": stage.get("weight"),
                "phase": stage.get("phase"), "pause_seconds": float(stage.get("pause_seconds") or 0.0),
                "analysis": json.dumps(list(stage.get("analysis") or [])), "state": PENDING,
            } for position, stage in enumerate(stages, start=1)])
        rollout = self.get(deploy_id)
        assert rollout is not None
        return rollout

    def _update_stage(self, deploy_id: int, position: int, values: Mapping[str, Any],
                      *, only_in: Sequence[str]) -> bool:
        assignments = ", ".join(f"{name} = ?" for name in values)
        states = ", ".join("?" for _ in only_in)
        with self._database.transaction():
            cursor = self._database.db.execute(
                f"UPDATE rollout_stages SET {assignments} WHERE deploy_id = ? AND position = ? AND state IN ({states})",
                [*values.values(), deploy_id, position, *only_in])
            return cursor.rowcount == 1

    def apply_stage(self, deploy_id: int, position: int) -> bool:
        """The engine is about to apply the stage (again, after a restart)."""
        return self._update_stage(deploy_id, position, {"state": APPLYING, "started_at": self._database.now()},
                                  only_in=(PENDING,))

    def watch_stage(self, deploy_id: int, position: int, now: datetime) -> Stage:
        """The stage's watch begins: its pause runs from ``now`` (unless the
        rollout is paused, when it waits whole in ``remaining``)."""
        stage = self._stage(deploy_id, position)
        rollout = self.get(deploy_id)
        assert rollout is not None
        values: dict[str, Any] = {"state": WATCHING, "watch_started_at": stamp(now)}
        if rollout.paused:
            values |= {"remaining": stage.pause_seconds, "ends_at": None}
        else:
            values |= {"ends_at": stamp(now + timedelta(seconds=stage.pause_seconds)), "remaining": None}
        self._update_stage(deploy_id, position, values, only_in=(PENDING, APPLYING))
        return self._stage(deploy_id, position)

    def end_stage(self, deploy_id: int, position: int, state: str, decision: str) -> bool:
        """The stage ended: passed, failed or aborted, and why (False: it had already ended)."""
        return self._update_stage(deploy_id, position, {"state": state, "decision": decision,
                                                       "ended_at": self._database.now()},
                                  only_in=(PENDING, APPLYING, WATCHING))

    def end(self, deploy_id: int, outcome: str) -> None:
        """The rollout ended; stages that never ran stay pending."""
        with self._database.transaction():
            self._database.db.execute(
                "UPDATE rollouts SET outcome = ?, ended_at = ?, paused_at = NULL WHERE deploy_id = ? "
                "AND ended_at IS NULL", [outcome, self._database.now(), deploy_id])

    def remember_baselines(self, deploy_id: int, baselines: Mapping[str, float]) -> None:
        """The baselines the bake compares with (merged into those already kept)."""
        with self._database.transaction():
            row = self._database.db.execute("SELECT baselines FROM rollouts WHERE deploy_id = ?",
                                            [deploy_id]).fetchone()
            merged = {**json.loads(row[0] or "{}"), **baselines}
            self._database.db.execute("UPDATE rollouts SET baselines = ? WHERE deploy_id = ?",
                                      [json.dumps(merged), deploy_id])

    def record_measurement(self, deploy_id: int, position: int, check: str, value: float | None,
                           baseline: float | None, verdict: str, detail: str, *, at: datetime) -> None:
        """Keep one measurement, taken ``at`` (the runner's clock, which paces the next)."""
        with self._database.transaction():
            self._database.db.execute(
                "INSERT INTO measurements (deploy_id, position, check_name, at, value, baseline, verdict, detail) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [deploy_id, position, check, stamp(at), value, baseline, verdict, detail])

    def _stage(self, deploy_id: int, position: int) -> Stage:
        rows = list(self._database.db.query(
            "SELECT * FROM rollout_stages WHERE deploy_id = ? AND position = ?", [deploy_id, position]))
        return _stage(rows[0])

    # -- people's (and the analysis') steering --------------------------------------------

    def promote(self, deploy_id: int, position: int, user: str) -> bool:
        """Skip the rest of stage ``position``'s pause (once: False when it
        was already promoted, is not being watched, or has ended)."""
        with self._database.transaction():
            cursor = self._database.db.execute(
                "UPDATE rollout_stages SET promoted_by = ?, promoted_at = ? WHERE deploy_id = ? AND position = ? "
                "AND promoted_by IS NULL AND state = ?",
                [user, self._database.now(), deploy_id, position, WATCHING])
            return cursor.rowcount == 1

    def pause(self, deploy_id: int, user: str, reason: str, now: datetime) -> bool:
        """Hold the rollout where it is: the watched stage keeps its
        remaining pause. False when it is already paused or has ended."""
        with self._database.transaction():
            cursor = self._database.db.execute(
                "UPDATE rollouts SET paused_at = ?, paused_by = ?, pause_reason = ? WHERE deploy_id = ? "
                "AND paused_at IS NULL AND ended_at IS NULL", [stamp(now), user, reason, deploy_id])
            if cursor.rowcount != 1:
                return False
            for stage in self._watching(deploy_id):
                left = max(0.0, (datetime.fromisoformat(stage.ends_at).timestamp() - now.timestamp())) \
                    if stage.ends_at else stage.pause_seconds
                self._database.db.execute(
                    "UPDATE rollout_stages SET remaining = ?, ends_at = NULL WHERE deploy_id = ? AND position = ?",
                    [left, deploy_id, stage.position])
            return True

    def resume(self, deploy_id: int, now: datetime) -> bool:
        """Let a paused rollout go on: the watched stage's pause runs again
        for what was left of it. False when it was not paused."""
        with self._database.transaction():
            cursor = self._database.db.execute(
                "UPDATE rollouts SET paused_at = NULL, paused_by = NULL, pause_reason = NULL WHERE deploy_id = ? "
                "AND paused_at IS NOT NULL AND ended_at IS NULL", [deploy_id])
            if cursor.rowcount != 1:
                return False
            for stage in self._watching(deploy_id):
                left = stage.remaining if stage.remaining is not None else stage.pause_seconds
                self._database.db.execute(
                    "UPDATE rollout_stages SET ends_at = ?, remaining = NULL WHERE deploy_id = ? AND position = ?",
                    [stamp(now + timedelta(seconds=left)), deploy_id, stage.position])
            return True

    def request_abort(self, deploy_id: int, user: str, reason: str) -> bool:
        """Ask the runner to abort (once: False when an abort was already
        asked for or the rollout has ended)."""
        with self._database.transaction():
            cursor = self._database.db.execute(
                "UPDATE rollouts SET abort_requested_at = ?, abort_requested_by = ?, abort_reason = ? "
                "WHERE deploy_id = ? AND abort_requested_at IS NULL AND ended_at IS NULL",
                [self._database.now(), user, reason, deploy_id])
            return cursor.rowcount == 1

    def _watching(self, deploy_id: int) -> list[Stage]:
        rows = self._database.db.query(
            "SELECT * FROM rollout_stages WHERE deploy_id = ? AND state = ?", [deploy_id, WATCHING])
        return [_stage(row) for row in rows]
