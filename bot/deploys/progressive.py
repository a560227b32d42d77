"""Progressive delivery: a deploy delivered in stages, each gated by
metrics, then watched through the environment's bake window.

The plan (:func:`plan_rollout`) turns the service's ``strategy`` for the
environment and the environment's ``bake`` into stages:

* a canary: one stage per step (the engine applies its weight, then the
  step's pause is watched), e.g. 5% → 25% → 50% → 100%;
* blue-green: ``deploy`` the idle colour, ``switch`` traffic to it (its pause
  is watched), ``release`` the old colour;
* then, where the environment has one, the ``bake``: the deploy is at full
  traffic and ``baking``, and succeeds only when the bake passes.

While a stage is watched, each of its checks is measured every ``interval``
(``bot.deploys.analysis``). A failed measurement is posted as evidence in
the thread; ``failure_limit`` of them in one stage fail it, which aborts the
rollout (or pauses it, with ``on_failure: pause``; a failed bake always
fails the deploy and offers its rollback). Inconclusive data (no data, NaN,
Prometheus unreachable) never promotes: the rollout pauses and the approvers
are mentioned. Every check has at least one measurement in a watched stage
before the stage passes on its own.

Everything is stored first (``store.rollouts``): a restart resumes the stage
where it was, with the remaining pause, and never repeats a decision. This
module decides; :class:`bot.deploys.runner.DeployRunner` calls the engine.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from bot.config import AnalysisCheck, Config
from bot.deploys.analysis import (
    Measurement,
    Prometheus,
    PrometheusUnavailable,
    fill_query,
    format_value,
    judge,
    measure,
)
from bot.deploys.policy import RoleHolders, role_holders
from bot.deploys.ports import DeployViews, People
from bot.events import DeployChanged, EventBus
from bot.slack.mrkdwn import escape, mention
from store import Deploy, Rollout, Stage, Store
from store.rollouts import FAILED, PASSED, WATCHING

log = logging.getLogger(__name__)

ANALYSIS_ACTOR = "slipway"  # who the record says paused or aborted a rollout the analysis judged
DEFAULT_INTERVAL = 30.0  # seconds between measurements of a check no longer in the config


def plan_rollout(config: Config, deploy: Deploy) -> tuple[str, str, list[dict[str, Any]]] | None:
    """The stages ``deploy`` goes through: ``(strategy, on_failure, stages)``,
    or None for a direct deploy without a bake (and for any rollback: it runs
    at once, as speed matters then)."""
    if deploy.rollback_of is not None:
        return None
    strategy = config.strategy_of(deploy.service, deploy.environment)
    bake = config.environment(deploy.environment).bake
    stages: list[dict[str, Any]] = []
    kind, on_failure = "direct", "abort"
    if strategy is not None and strategy.canary is not None:
        kind, on_failure = "canary", strategy.canary.on_failure
        stages += [{"kind": "step", "weight": step.weight, "pause_seconds": step.pause,
                    "analysis": strategy.canary.analysis if step.pause > 0 else []}
                   for step in strategy.canary.steps]
    elif strategy is not None and strategy.blue_green is not None:
        kind, on_failure = "blue_green", strategy.blue_green.on_failure
        green = strategy.blue_green
        stages += [{"kind": "phase", "phase": "deploy"},
                   {"kind": "phase", "phase": "switch", "pause_seconds": green.pause,
                    "analysis": green.analysis if green.pause > 0 else []},
                   {"kind": "phase", "phase": "release"}]
    if bake is not None:
        stages.append({"kind": "bake", "pause_seconds": bake.duration, "analysis": bake.analysis})
    if not stages:
        return None
    return kind, on_failure, stages


def steerers(config: Config, deploy: Deploy) -> RoleHolders:
    """Who may promote, pause and resume ``deploy``'s rollout: the ``approve``
    role of its environment (as it applies to the service); on a rung without
    approvals, whoever requested it and the ``rollback`` role."""
    environment = config.environment_for(deploy.service, deploy.environment)
    if environment.approvals is not None or environment.roles.approve is not None:
        return role_holders(environment, "approve")
    return role_holders(environment, "rollback", deployer=deploy.requested_by)


def stage_line(rollout: Rollout, now: datetime) -> str:
    """``5% ✓ → 25% ⏳ (analysing, 4m of 10m) → 50% → 100% → bake``: plain text."""
    from bot.durations import format_duration

    parts = []
    for stage in rollout.stages:
        if stage.state == PASSED:
            parts.append(f"{stage.label} ✓")
        elif stage.state == FAILED:
            parts.append(f"{stage.label} ✗")
        elif stage.state == "aborted":
            parts.append(f"{stage.label} ⏹")
        elif stage.state == "applying":
            parts.append(f"{stage.label} ⏳ (applying)")
        elif stage.state == WATCHING:
            total = format_duration(stage.pause_seconds)
            if rollout.paused:
                left = stage.remaining if stage.remaining is not None else stage.pause_seconds
                parts.append(f"{stage.label} ⏸ (paused, {format_duration(left)} of {total} left)")
            else:
                ends = datetime.fromisoformat(stage.ends_at) if stage.ends_at else now
                elapsed = max(0.0, stage.pause_seconds - max(0.0, (ends - now).total_seconds()))
                doing = "analysing" if stage.analysis else ("baking" if stage.kind == "bake" else "waiting")
                parts.append(f"{stage.label} ⏳ ({doing}, {format_duration(elapsed)} of {total})")
        else:
            parts.append(stage.label)
    return " → ".join(parts)


@dataclass
class Verdict:
    """What the watch of a stage came to."""

    outcome: str  # "passed", "promoted", "failed" (the analysis failed it) or "abort" (someone asked)
    decision: str  # mrkdwn, for the stage's record and its thread line


class StageWatch:
    """Watches stages: measures their checks, keeps every measurement and
    decides, stage by stage. One per runner; each deploy's watch is woken by
    :meth:`poke` when someone steers it."""

    def __init__(self, config: Config, store: Store, views: DeployViews, events: EventBus, people: People,
                 *, now: Callable[[], datetime], prometheus: Callable[[], Prometheus | None]) -> None:
        self.config = config
        self.store = store
        self.views = views
        self.events = events  # publishes DeployChanged as stages move and measurements arrive
        self.people = people
        self.now = now  # wall clock: pause deadlines are real time
        self.prometheus = prometheus
        self._pokes: dict[int, asyncio.Event] = {}

    def poke(self, deploy_id: int) -> None:
        """Someone steered the rollout (promote, pause, resume, abort): look again now."""
        self._pokes.setdefault(deploy_id, asyncio.Event()).set()

    async def _wait(self, deploy_id: int, seconds: float | None) -> None:
        event = self._pokes.setdefault(deploy_id, asyncio.Event())
        try:
            if seconds is None:
                await event.wait()
            elif seconds > 0:
                await asyncio.wait_for(event.wait(), seconds)
        except TimeoutError:
            pass
        event.clear()

    def forget(self, deploy_id: int) -> None:
        self._pokes.pop(deploy_id, None)

    def checks(self) -> dict[str, AnalysisCheck]:
        return self.config.analysis.checks if self.config.analysis is not None else {}

    def check(self, name: str) -> AnalysisCheck:
        return self.checks()[name]

    # -- baselines -------------------------------------------------------------------------

    async def measure_before(self, deploy: Deploy, rollout: Rollout) -> None:
        """For a direct deploy with a bake: each bake check's query measured
        just before the engine starts, the baseline the bake compares with."""
        prometheus = self.prometheus()
        names = sorted({name for stage in rollout.stages for name in stage.analysis})
        if prometheus is None or not names:
            return
        found = {}
        for name in names:
            query = fill_query(self.check(name).query, **self._values(deploy))
            try:
                value = await prometheus.instant(query)
            except PrometheusUnavailable as trouble:
                log.warning("deploy %s: no baseline for %s before the engine: %s", deploy.id, name, trouble)
                continue
            if value is not None:
                found[name] = value
        if found:
            self.store.rollouts.remember_baselines(deploy.id, found)

    # -- one stage -------------------------------------------------------------------------

    async def watch(self, deploy: Deploy, position: int) -> Verdict:
        """Watch stage ``position`` to its end: its pause runs out with every
        check measured (passed), someone promotes it or asks to abort, or its
        checks fail it."""
        rollout = self.store.rollouts.get(deploy.id)
        assert rollout is not None
        stage = rollout.stage(position)
        if stage.state != WATCHING:
            stage = self.store.rollouts.watch_stage(deploy.id, position, self.now())
            self.events.publish(DeployChanged(deploy.id))
        while True:
            rollout = self.store.rollouts.get(deploy.id)
            assert rollout is not None
            stage = rollout.stage(position)
            if rollout.abort_requested_at is not None:
                return Verdict("abort", rollout.abort_reason or "aborted")
            if stage.promoted_by is not None:
                return Verdict("promoted", f"promoted by {mention(stage.promoted_by)}")
            if rollout.paused:
                await self._wait(deploy.id, None)
                continue
            now = self.now()
            tally = self.store.rollouts.stage_tally(deploy.id, position)
            if (stage.kind == "bake" or rollout.on_failure == "abort") and (
                    spent := self._limit_reached(stage, tally)) is not None:
                return Verdict("failed", spent)  # decided before a restart, not yet acted on
            due = self._due(rollout, stage)
            ends = datetime.fromisoformat(stage.ends_at) if stage.ends_at else now
            if now >= ends:
                # every check's last word in the stage must be a pass: one never measured is measured
                # now, one whose last measurement failed or said nothing is measured again when due
                unsettled = {name: due[name] for name in stage.analysis
                             if name not in tally or tally[name].last_verdict != "pass"}
                if not unsettled:
                    return Verdict("passed", self._passed_text(deploy, stage))
                ready = [name for name, at in unsettled.items() if name not in tally or at is None or at <= now]
                wake = [at for at in unsettled.values() if at is not None]
            else:
                ready = [name for name, at in due.items() if at is not None and at <= now]
                wake = [at for at in due.values() if at is not None] + [ends]
            if ready:
                verdict = await self._measure(deploy, rollout, stage, ready)
                if verdict is not None:
                    return verdict
                continue
            await self._wait(deploy.id, max(0.0, (min(wake) - now).total_seconds()) if wake else None)

    def _limit_reached(self, stage: Stage, tally: dict[str, Any]) -> str | None:
        """Why the stage has failed already, if a check reached its failure limit in it."""
        for name in stage.analysis:
            check = self.checks().get(name)
            if check is None or name not in tally:
                continue
            failures = tally[name].failed + (tally[name].inconclusive if check.inconclusive == "fail" else 0)
            if failures >= check.failure_limit:
                return f"{escape(name)}: {failures} failed measurement(s) in {stage.label}"
        return None

    def _due(self, rollout: Rollout, stage: Stage) -> dict[str, datetime | None]:
        """When each check is next measured; None: never yet measured in this
        stage and not yet due (it is measured at the latest when the pause ends)."""
        started = datetime.fromisoformat(stage.watch_started_at) if stage.watch_started_at else self.now()
        tally = self.store.rollouts.stage_tally(rollout.deploy_id, stage.position)
        last = {check: datetime.fromisoformat(summed.last_at) for check, summed in tally.items()}
        due: dict[str, datetime | None] = {}
        for name in stage.analysis:
            check = self.checks().get(name)
            interval = timedelta(seconds=check.interval if check is not None else DEFAULT_INTERVAL)
            if name in last:
                due[name] = last[name] + interval
            else:
                first = started + interval
                ends = datetime.fromisoformat(stage.ends_at) if stage.ends_at else None
                due[name] = None if ends is not None and first > ends else first
        return due

    def _values(self, deploy: Deploy) -> dict[str, str]:
        return {"service": deploy.service, "environment": deploy.environment, "version": deploy.version,
                "previous_version": deploy.previous_version or ""}

    async def _measure(self, deploy: Deploy, rollout: Rollout, stage: Stage, names: list[str]) -> Verdict | None:
        prometheus = self.prometheus()
        full = rollout.full_traffic
        results = []
        for name in names:
            check = self.checks().get(name)
            if check is None:  # the config was reloaded without it: nothing to judge by, so nothing promotes
                results.append(Measurement(name, None, None, "inconclusive",
                                           f"{name}: the check is no longer in the config"))
                continue
            baseline = rollout.baselines.get(name) if full and check.baseline_query else None
            if prometheus is None:
                results.append(judge(name, check, None, None))
                continue
            if full and check.baseline_query and baseline is None:
                # the stable version is gone and no baseline was kept: a ratio cannot be judged
                # (inconclusive, unless the absolute ceiling alone fails it)
                value = await measure(prometheus, name, check.model_copy(update={"baseline_query": None}),
                                      **self._values(deploy))
                results.append(judge(name, check, value.value, None) if value.verdict != "inconclusive" else value)
                continue
            results.append(await measure(prometheus, name, check, **self._values(deploy), baseline=baseline))
        at = self.now()
        for result in results:
            self.store.rollouts.record_measurement(deploy.id, stage.position, result.check, result.value,
                                                   result.baseline, result.verdict, result.detail, at=at)
        if not full:
            kept = {r.check: r.baseline for r in results if r.baseline is not None}
            if kept:
                self.store.rollouts.remember_baselines(deploy.id, kept)
        self.events.publish(DeployChanged(deploy.id))
        return await self._decide(deploy, rollout, stage, results)

    async def _decide(self, deploy: Deploy, rollout: Rollout, stage: Stage, results: list[Any]) -> Verdict | None:
        """What this round of measurements decides: failures are counted (and
        may fail the stage) before an inconclusive result may pause it."""
        tally = self.store.rollouts.stage_tally(deploy.id, stage.position)
        for result in results:
            check = self.checks().get(result.check)
            if check is None:
                continue
            if not (result.verdict == "fail" or (result.verdict == "inconclusive" and check.inconclusive == "fail")):
                continue
            summed = tally.get(result.check)
            failures = (summed.failed + (summed.inconclusive if check.inconclusive == "fail" else 0)) if summed else 1
            evidence = escape(result.detail)
            if failures < check.failure_limit:
                self.views.thread(deploy, f":x: {stage.label}: {evidence} ({failures} of {check.failure_limit} "
                                          "failed measurement(s) allowed in this stage)")
                continue
            self.views.thread(deploy, f":x: {stage.label}: {evidence}")
            if stage.kind == "bake" or rollout.on_failure == "abort":
                return Verdict("failed", evidence)
            await self.pause_for(deploy, f"{stage.label}: {evidence} (on_failure: pause)")
            return None
        for result in results:
            check = self.checks().get(result.check)
            if result.verdict == "inconclusive" and (check is None or check.inconclusive == "pause"):
                await self.pause_for(deploy, f"{stage.label}: inconclusive, {escape(result.detail)}")
                return None
        return None

    async def pause_for(self, deploy: Deploy, reason: str) -> None:
        """Pause the rollout for the analysis, and mention who may resume it."""
        holders = steerers(self.config, deploy)
        named = [await self.people.mentions(list(holders.entries))] if holders.entries else []
        if holders.deployer is not None:
            named.append(mention(holders.deployer))
        who = "anyone" if holders.entries is None else (", ".join(named) or "an approver")
        with self.store.transaction():
            if not self.store.rollouts.pause(deploy.id, ANALYSIS_ACTOR, reason, self.now()):
                return
            self.views.thread(deploy, f":double_vertical_bar: Paused: {reason}. Nothing is promoted until someone "
                                      f"looks: {who}, press Resume (or Abort) on the message.")
            self.events.publish(DeployChanged(deploy.id))

    def _passed_text(self, deploy: Deploy, stage: Stage) -> str:
        last: dict[str, Any] = {}
        for measured in self.store.rollouts.measurements(deploy.id, stage.position):
            last[measured.check] = measured
        if not last:
            return "passed"
        shown = ", ".join(f"{escape(name)} {format_value(m.value)}" for name, m in sorted(last.items()))
        return f"passed ({shown})"

