"""Rollback: back to the last version that succeeded on the environment
before the current one, at once and without approvals (speed matters: a
code revert should take minutes), but only by people allowed to, audited,
and itself a deploy record (``rollback_of``) verified like any other.

A rollback stays rolled back: when it starts, the environment is locked
("rolled back from 2.7.0 by @bob") and the version it undoes is blocked
there, so the next deploy cannot quietly bring the bad version back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bot.config import Config
from bot.deploys.policy import (
    RoleHolders,
    require_role,
    resolve_environment,
    resolve_service,
    role_holders,
)
from bot.deploys.ports import DeployViews, People
from bot.errors import PolicyViolation, SlipwayError
from bot.events import AlertsRelayed, DeployChanged, DeployPosted, EventBus, RollbackIntended
from bot.runtime.logs import deploy_context
from bot.runtime.tasks import BackgroundTasks
from bot.slack.mrkdwn import mention, rollback_plan_text
from store import (
    Deploy,
    DeployInFlight,
    DeployStatus,
    DuplicateRequest,
    StateConflict,
    Store,
    deploy_message_key,
)
from store.intents import AUTO_ROLLBACK

ROLLBACK_FROM = (DeployStatus.SUCCEEDED, DeployStatus.FAILED)


@dataclass(frozen=True)
class RollbackPlan:
    current: Deploy  # what is undone: the live deploy, or a newer one that failed
    target: Deploy  # the last good deploy before it

    @property
    def text(self) -> str:
        return rollback_plan_text(self.current, self.target.version)


class RollbackPlans:
    """What a rollback of a deploy would go back to (reads only)."""

    def __init__(self, config: Config, store: Store) -> None:
        self.config = config
        self.store = store

    def offer(self, deploy: Deploy) -> tuple[str | None, str | None]:
        """What the deploy's message offers: the target version of a Rollback
        button, or a note saying why there is none (``None, None``: nothing
        to say, e.g. the deploy is still running)."""
        if deploy.status not in ROLLBACK_FROM:
            return None, None
        if self._aborted_before_full_traffic(deploy):
            return None, (f"nothing to roll back: aborted before full traffic, "
                          f"{deploy.previous_version or 'the stable version'} kept serving")
        if _failed_rollback(deploy):
            return None, f"to try the rollback again, use the button on #{deploy.rollback_of}"
        newer = self._newer_success(deploy)
        if newer is not None:
            return None, f"superseded by #{newer.id} ({newer.display_version})"
        target = self.store.deploys.rollback_target(deploy)
        if target is None:
            return None, f"no rollback: no earlier version of {deploy.service} succeeded on {deploy.environment}"
        return target.version, None

    def _aborted_before_full_traffic(self, deploy: Deploy) -> bool:
        rollout = self.store.rollouts.get(deploy.id)
        return rollout is not None and rollout.outcome == "aborted"

    def _newer_success(self, deploy: Deploy) -> Deploy | None:
        live = self.store.deploys.latest_successful(deploy.service, deploy.environment)
        return live if live is not None and live.id > deploy.id else None

    def plan(self, deploy_id: int) -> RollbackPlan:
        """The rollback a click on deploy ``deploy_id``'s message would run.

        Raises:
            SlipwayError: there is nothing to roll back, or nothing to go back to.
        """
        try:
            current = self.store.deploys.get(deploy_id)
        except LookupError:
            raise SlipwayError(f"There is no deploy #{deploy_id}.") from None
        if current.status not in ROLLBACK_FROM:
            raise PolicyViolation(
                f"#{current.id} is {current.status.replace('_', ' ')}; only a succeeded or failed deploy can be "
                "rolled back.")
        if self._aborted_before_full_traffic(current):
            raise PolicyViolation(
                f"#{current.id} was aborted before it took all traffic: {current.previous_version or 'the stable version'} "
                "kept serving, so there is nothing to roll back.")
        if _failed_rollback(current):
            raise PolicyViolation(
                f"#{current.id} is a rollback that failed; what runs is still #{current.rollback_of}'s version. "
                f"To try again, roll back #{current.rollback_of}.")
        newer = self._newer_success(current)
        if newer is not None:
            raise PolicyViolation(
                f"#{current.id} is no longer what runs on {current.environment}: #{newer.id} "
                f"({newer.display_version}) is. Roll back from its message, or `/deploy rollback "
                f"{current.service} {current.environment}`.")
        target = self.store.deploys.rollback_target(current)
        if target is None:
            raise PolicyViolation(
                f"No earlier version of {current.service} succeeded on {current.environment}, so there is nothing "
                f"to roll back to. Fix forward: `/deploy {current.service} <version> {current.environment}`.")
        return RollbackPlan(current, target)

    def plan_for(self, service: str, environment: str | None) -> RollbackPlan:
        """The rollback ``/deploy rollback service environment`` would run."""
        service = resolve_service(self.config, service)
        rungs = self.config.environments_of(service)
        if environment is None and len(rungs) > 1:
            choices = " or ".join(f"`/deploy rollback {service} {name}`" for name in rungs)
            raise PolicyViolation(f"Which environment? {choices}.")
        env = resolve_environment(self.config, service, environment or rungs[0])
        recent = [d for d in self.store.deploys.history(service, env.name, limit=50)
                  if d.status in ROLLBACK_FROM and not _failed_rollback(d)]
        if not recent:
            raise PolicyViolation(f"{service} has no finished deploy on {env.name} to roll back.")
        return self.plan(recent[0].id)


AUTO_ROLLBACK_ACTOR = "slipway"  # who the audit log says started an automatic rollback
PAGE_ABORT = "a page-level alert"  # how an abort asked for by an alert begins its reason


class Rollbacks:
    """Planning, recording and starting rollbacks: clicked, typed or automatic."""

    def __init__(self, plans: RollbackPlans, directory: People, views: DeployViews, events: EventBus,
                 tasks: BackgroundTasks, abort_rollout: Callable[[int, str], bool] | None = None) -> None:
        self.plans = plans
        self.config = plans.config
        self.store = plans.store
        self.directory = directory
        self.views = views
        self.events = events  # publishes DeployChanged for what a rollback supersedes and undoes
        self.tasks = tasks
        self._auto_rolling_back: set[int] = set()  # deploys whose automatic rollback is being carried out
        # a page-level alert tied to a staged rollout still in progress aborts it (False: none in progress)
        self.abort_rollout = abort_rollout

    async def start(self, deploy_id: int, target: str, user: str, source: str | None = None) -> Deploy:
        """Record, announce and run a rollback the person confirmed; the
        thread of the deploy it undoes says so (queued with the record).

        Raises:
            SlipwayError: refused (who, what, or a deploy in the way).
        """
        return await self._announce(await self.record(deploy_id, target, user, source))

    def auto_rollback_pages(self, event: AlertsRelayed | RollbackIntended | None = None) -> None:
        """Carry out, in the background, every pending automatic rollback: the
        relay records one with each page-level alert tied to a deploy where
        ``auto_rollback`` is on (also called at start, for those a previous
        Slipway recorded and did not get to)."""
        for intent in self.store.intents.pending(AUTO_ROLLBACK):
            if intent.deploy_id not in self._auto_rolling_back:
                self._auto_rolling_back.add(intent.deploy_id)
                task = self.tasks.spawn(self.auto_rollback(intent.deploy_id), name=f"auto-rollback-{intent.deploy_id}")
                task.add_done_callback(lambda _, deploy_id=intent.deploy_id: self._auto_rolling_back.discard(deploy_id))

    async def auto_rollback(self, deploy_id: int) -> None:
        """Roll back a deploy a page-level alert was tied to, where the
        environment asks for it (``auto_rollback: true``), and say so. The
        intent is settled with the rollback, or with the note saying why not."""
        with deploy_context(deploy_id):
            deploy = self.store.deploys.get(deploy_id)
            if self.abort_rollout is not None and deploy.status in (
                    DeployStatus.DEPLOYING, DeployStatus.VERIFYING, DeployStatus.BAKING):
                if self.abort_rollout(deploy_id, PAGE_ABORT + " (auto_rollback)"):
                    # the runner aborts it; at full traffic that is itself a rollback, intended anew
                    self.store.intents.settle(AUTO_ROLLBACK, deploy_id, "rollout aborted")
                    return
            user, source = AUTO_ROLLBACK_ACTOR, "alert:auto_rollback"
            rollout = self.store.rollouts.get(deploy_id)
            if rollout is not None and rollout.abort_requested_by not in (None, AUTO_ROLLBACK_ACTOR):
                user, source = rollout.abort_requested_by, "slack:abort"  # a person's abort at full traffic
            elif rollout is not None and rollout.outcome == "failed" and not (
                    rollout.abort_reason or "").startswith(PAGE_ABORT):
                source = "rollout:failed"  # the analysis (or the engine) failed it at full traffic
            try:
                plan = self.plans.plan(deploy_id)
                rollback = await self.record(deploy_id, plan.target.version, user, source=source, automatic=True)
            except SlipwayError as refusal:
                with self.store.transaction():
                    if self.store.intents.settle(AUTO_ROLLBACK, deploy_id, f"refused: {refusal.message}"):
                        self.views.thread(deploy, f":warning: {self._why_automatic(source)} asked for a rollback "
                                                  f"of #{deploy_id}, but it cannot run: {refusal.message}")
                return
            await self._announce(rollback)

    @staticmethod
    def _why_automatic(source: str | None) -> str:
        return {"slack:abort": "The abort at full traffic", "rollout:failed": "The failed rollout"}.get(
            source or "", "A page-level alert")

    @staticmethod
    def _started_note(rollback: Deploy, undone: Deploy, plan: RollbackPlan, user: str, automatic: bool,
                      source: str | None = None) -> str:
        if automatic and source == "slack:abort":
            return (f":rewind: {mention(user)} aborted #{undone.id} after it took all traffic, so rollback "
                    f"#{rollback.id} runs: {plan.text}.")
        if automatic and source == "rollout:failed":
            return (f":rewind: Automatic rollback #{rollback.id} (auto_rollback on {undone.environment}: "
                    f"{undone.status_reason}): {plan.text}.")
        if automatic:
            return (f":rewind: Automatic rollback #{rollback.id} (auto_rollback on {undone.environment}, "
                    f"page-level alert): {plan.text}.")
        return (f":rewind: {mention(user)} started rollback #{rollback.id}: "
                f"{rollback_plan_text(undone, rollback.version)}. "
                f"<{{permalink:{deploy_message_key(rollback.id)}}}|Follow it here>.")

    async def _announce(self, rollback: Deploy) -> Deploy:
        """The rollback's own message (the runner starts it once posted, or once Slack took too long)."""
        await self.views.announce(rollback)
        self.events.publish(DeployPosted(rollback.id))  # started even if Slack has not taken the message yet
        return self.store.deploys.get(rollback.id)

    async def offer_for(self, user: str, service: str, environment: str | None,
                        source: str | None = None) -> RollbackPlan:
        """``/deploy rollback``: the rollback ``user`` would run, to confirm.

        Raises:
            SlipwayError: nothing to roll back, or ``user`` may not (audited).
        """
        plan = self.plans.plan_for(service, environment)
        await self.require_may_roll_back(user, plan.current, source)
        return plan

    async def require_may_roll_back(self, user: str, current: Deploy, source: str | None = None) -> None:
        """Raises NotAllowed (audited) unless ``user`` may roll ``current`` back."""
        await require_role(self.directory, self.store, self._holders(current), user,
                           doing=f"roll back {current.service} on {current.environment}", attempted="rollback",
                           deploy_id=current.id, source=source)

    def _holders(self, current: Deploy) -> RoleHolders:
        return role_holders(self.config.environment_for(current.service, current.environment), "rollback", deployer=current.requested_by)

    async def record(self, deploy_id: int, expected_target: str, user: str, source: str | None = None,
                    trigger_id: str | None = None, automatic: bool = False) -> Deploy:
        """Record a rollback of deploy ``deploy_id`` to ``expected_target`` (the
        version the person confirmed), with what it calls for: the request it
        supersedes cancelled, the environment locked, the undone version
        blocked, its message and the note in the undone deploy's thread
        queued. Returns the rollback.

        Raises:
            NotAllowed: ``user`` may not roll back this environment.
            PolicyViolation: nothing to roll back, the target changed since the
                confirmation, or a deploy is running on the environment.
        """
        plan = self.plans.plan(deploy_id)
        current = plan.current
        if not automatic:
            await self.require_may_roll_back(user, current, source)
        if plan.target.version != expected_target:
            raise PolicyViolation(
                f"The rollback target changed since you were asked: it is now {plan.text}. "
                "Look again and confirm the new one.")
        try:
            # the request it supersedes, the rollback, its lock and its block, and what they
            # call for in Slack: all or nothing
            with self.store.transaction():
                superseded = self._clear_the_way(current, user, source)
                if superseded is not None:
                    self.events.publish(DeployChanged(superseded.id))
                    self.views.thread(superseded, f":heavy_multiplication_x: Cancelled: {superseded.status_reason}.")
                rollback = self.store.deploys.create(
                    service=current.service, environment=current.environment, version=plan.target.version,
                    version_prefixed=plan.target.version_prefixed, requested_by=user,
                    previous_version=current.version, checklist=[], needs_approval=False,
                    rollback_of=current.id, trigger_id=trigger_id, source=source,
                    checking=self.config.services[current.service].looked_up)  # looked up, never held
                self._keep_rolled_back(rollback, current, user, source)
                if automatic:
                    self.store.intents.settle(AUTO_ROLLBACK, current.id, f"rollback #{rollback.id}")
                # the rollback's message, then the note in the undone deploy's thread (its link is
                # filled in when it is sent): queued with the rollback, so a crash loses neither
                self.views.show(rollback)
                self.views.thread(current, self._started_note(rollback, current, plan, user, automatic, source))
                self.events.publish(DeployChanged(current.id))
        except (DeployInFlight, DuplicateRequest) as conflict:
            existing = conflict.existing
            if existing.rollback_of == current.id:
                raise PolicyViolation(f"A rollback of #{current.id} is already under way: #{existing.id}, started by "
                                      f"{mention(existing.requested_by)}.") from None
            raise PolicyViolation(f"#{existing.id} is {existing.status.replace('_', ' ')} on "
                                  f"{existing.environment}; roll back once it has finished.") from None
        return rollback

    def _clear_the_way(self, current: Deploy, user: str, source: str | None) -> Deploy | None:
        """A request still waiting for approval must not block a rollback: it
        is cancelled. A deploy the engine is running does block it."""
        waiting = self.store.deploys.in_flight(current.service, current.environment)
        if waiting is None:
            return None
        if waiting.status == DeployStatus.AWAITING_APPROVAL or (
                waiting.status == DeployStatus.APPROVED and waiting.rollback_of is None):
            try:
                return self.store.deploys.transition(waiting.id,
                                                     allowed_from=(DeployStatus.AWAITING_APPROVAL, DeployStatus.APPROVED),
                                                     to=DeployStatus.CANCELLED, actor=user, action="superseded",
                                                     reason=f"superseded by a rollback by {mention(user)}",
                                                     source=source)
            except StateConflict:
                return None
        return None

    def _keep_rolled_back(self, rollback: Deploy, current: Deploy, user: str, source: str | None) -> None:
        """Lock the environment and block the undone version there. Done when
        the rollback starts, not when it succeeds: the decision that the
        version is bad is made now, and a rollback that fails leaves the
        environment in more doubt, not less. A lock someone already placed
        there is kept as it is (its reason is theirs)."""
        reason = f"rolled back from {current.display_version} by {mention(user)}"
        self.store.locks.acquire(current.service, current.environment, user, reason, source=source,
                                 keep_existing=True, deploy_id=rollback.id)
        self.store.locks.block_version(current.service, current.environment, current.version, user, reason,
                                       rollback_id=rollback.id, source=source)


def _failed_rollback(deploy: Deploy) -> bool:
    """A rollback that failed changed nothing we can vouch for; rolling *it*
    back would mean redeploying the version that was being undone."""
    return deploy.rollback_of is not None and deploy.status == DeployStatus.FAILED
