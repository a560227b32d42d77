"""Rollback: back to the last version that succeeded on the environment
before the current one, at once and without approvals (speed matters: a
code revert should take minutes), but only by people allowed to, audited,
and itself a deploy record (``rollback_of``) verified like any other.

A rollback stays rolled back: when it starts, the environment is locked
("rolled back from 2.7.0 by @bob") and the version it undoes is blocked
there, so the next deploy cannot quietly bring the bad version back.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.config import Config
from bot.deploys.policy import (
    RoleHolders,
    require_role,
    resolve_environment,
    resolve_service,
    role_holders,
)
from bot.errors import PolicyViolation, SlipwayError
from bot.slack.blocks import mention, rollback_plan_text
from bot.slack.directory import Directory
from store import Deploy, DeployInFlight, DuplicateRequest, StateConflict, Store

ROLLBACK_FROM = ("succeeded", "failed")


@dataclass(frozen=True)
class RollbackPlan:
    current: Deploy  # what is undone: the live deploy, or a newer one that failed
    target: Deploy  # the last good deploy before it

    @property
    def text(self) -> str:
        return rollback_plan_text(self.current, self.target.version)


class Rollbacks:
    def __init__(self, config: Config, store: Store, directory: Directory) -> None:
        self.config = config
        self.store = store
        self.directory = directory

    def offer(self, deploy: Deploy) -> tuple[str | None, str | None]:
        """What the deploy's message offers: the target version of a Rollback
        button, or a note saying why there is none (``None, None``: nothing
        to say, e.g. the deploy is still running)."""
        if deploy.status not in ROLLBACK_FROM:
            return None, None
        if _failed_rollback(deploy):
            return None, f"to try the rollback again, use the button on #{deploy.rollback_of}"
        newer = self._newer_success(deploy)
        if newer is not None:
            return None, f"superseded by #{newer.id} ({newer.display_version})"
        target = self.store.rollback_target(deploy)
        if target is None:
            return None, f"no rollback: no earlier version of {deploy.service} succeeded on {deploy.environment}"
        return target.version, None

    def _newer_success(self, deploy: Deploy) -> Deploy | None:
        live = self.store.latest_successful(deploy.service, deploy.environment)
        return live if live is not None and live.id > deploy.id else None

    def plan(self, deploy_id: int) -> RollbackPlan:
        """The rollback a click on deploy ``deploy_id``'s message would run.

        Raises:
            SlipwayError: there is nothing to roll back, or nothing to go back to.
        """
        try:
            current = self.store.get_deploy(deploy_id)
        except LookupError:
            raise SlipwayError(f"There is no deploy #{deploy_id}.") from None
        if current.status not in ROLLBACK_FROM:
            raise PolicyViolation(
                f"#{current.id} is {current.status.replace('_', ' ')}; only a succeeded or failed deploy can be "
                "rolled back.")
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
        target = self.store.rollback_target(current)
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
        recent = [d for d in self.store.history(service, env.name, limit=50)
                  if d.status in ROLLBACK_FROM and not _failed_rollback(d)]
        if not recent:
            raise PolicyViolation(f"{service} has no finished deploy on {env.name} to roll back.")
        return self.plan(recent[0].id)

    async def require_may_roll_back(self, user: str, current: Deploy, source: str | None = None) -> None:
        """Raises NotAllowed (audited) unless ``user`` may roll ``current`` back."""
        await require_role(self.directory, self.store, self._holders(current), user,
                           doing=f"roll back {current.service} on {current.environment}", attempted="rollback",
                           deploy_id=current.id, source=source)

    def _holders(self, current: Deploy) -> RoleHolders:
        return role_holders(self.config.environment(current.environment), "rollback", deployer=current.requested_by)

    async def start(self, deploy_id: int, expected_target: str, user: str, source: str | None = None,
                    trigger_id: str | None = None, automatic: bool = False) -> tuple[Deploy, Deploy, Deploy | None]:
        """Record a rollback of deploy ``deploy_id`` to ``expected_target`` (the
        version the person confirmed). Returns the rollback, the deploy it
        undoes, and a request it superseded (cancelled), if any.

        Raises:
            NotAllowed: ``user`` may not roll back this environment.
            PolicyViolation: nothing to roll back, the target changed since the
                confirmation, or a deploy is running on the environment.
        """
        plan = self.plan(deploy_id)
        current = plan.current
        if not automatic:
            await self.require_may_roll_back(user, current, source)
        if plan.target.version != expected_target:
            raise PolicyViolation(
                f"The rollback target changed since you were asked: it is now {plan.text}. "
                "Look again and confirm the new one.")
        superseded = self._clear_the_way(current, user, source)
        try:
            with self.store.transaction():  # the rollback, its lock and its block: all or nothing
                rollback = self.store.create_deploy(
                    service=current.service, environment=current.environment, version=plan.target.version,
                    version_prefixed=plan.target.version_prefixed, requested_by=user,
                    previous_version=current.version, checklist=[], needs_approval=False,
                    rollback_of=current.id, trigger_id=trigger_id, source=source)
                self._keep_rolled_back(rollback, current, user, source)
        except (DeployInFlight, DuplicateRequest) as conflict:
            existing = conflict.existing
            if existing.rollback_of == current.id:
                raise PolicyViolation(f"A rollback of #{current.id} is already under way: #{existing.id}, started by "
                                      f"{mention(existing.requested_by)}.") from None
            raise PolicyViolation(f"#{existing.id} is {existing.status.replace('_', ' ')} on "
                                  f"{existing.environment}; roll back once it has finished.") from None
        return rollback, current, superseded

    def _clear_the_way(self, current: Deploy, user: str, source: str | None) -> Deploy | None:
        """A request still waiting for approval must not block a rollback: it
        is cancelled. A deploy the engine is running does block it."""
        waiting = self.store.in_flight(current.service, current.environment)
        if waiting is None:
            return None
        if waiting.status == "awaiting_approval" or (waiting.status == "approved" and waiting.rollback_of is None):
            try:
                return self.store.transition(waiting.id, allowed_from=("awaiting_approval", "approved"),
                                             to="cancelled", actor=user, action="superseded",
                                             reason=f"superseded by a rollback by {mention(user)}", source=source)
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
        self.store.acquire_lock(current.service, current.environment, user, reason, source=source,
                                keep_existing=True, deploy_id=rollback.id)
        self.store.block_version(current.service, current.environment, current.version, user, reason,
                                 rollback_id=rollback.id, source=source)


def _failed_rollback(deploy: Deploy) -> bool:
    """A rollback that failed changed nothing we can vouch for; rolling *it*
    back would mean redeploying the version that was being undone."""
    return deploy.rollback_of is not None and deploy.status == "failed"
