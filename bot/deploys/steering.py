"""People steering a staged rollout: Promote, Pause, Resume and Abort,
from the deploy's message or ``/deploy promote|pause|resume|abort``.

Who may: Promote, Pause and Resume take the ``approve`` role of the
environment (on a rung without approvals: whoever requested the deploy, or
the ``rollback`` role); Abort takes the ``rollback`` role. Every click is
audited, and a refusal says why. A click names the stage it was made on, so
two clicks on Promote promote once, and a click on a stage that has since
ended changes nothing. The runner carries the decision out
(:class:`bot.deploys.progressive.StageWatch` is poked to look at once).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from bot.config import Config
from bot.deploys.policy import (
    RoleHolders,
    require_role,
    resolve_environment,
    resolve_service,
    role_holders,
)
from bot.deploys.ports import DeployViews, People
from bot.deploys.progressive import StageWatch
from bot.errors import PolicyViolation, SlipwayError
from bot.events import DeployChanged, EventBus
from bot.slack.mrkdwn import mention
from store import Deploy, DeployStatus, Rollout, Store

STEERABLE = (DeployStatus.DEPLOYING, DeployStatus.VERIFYING, DeployStatus.BAKING)


class RolloutSteering:
    """The four things people do to a rollout in progress."""

    def __init__(self, config: Config, store: Store, people: People, views: DeployViews, events: EventBus,
                 watch: StageWatch, now: Callable[[], datetime]) -> None:
        self.config = config
        self.store = store
        self.people = people
        self.views = views
        self.events = events  # publishes DeployChanged: the message shows the change
        self.watch = watch
        self.now = now

    # -- finding the rollout -------------------------------------------------------------

    def _rollout(self, deploy_id: int) -> tuple[Deploy, Rollout]:
        try:
            deploy = self.store.deploys.get(deploy_id)
        except LookupError:
            raise SlipwayError(f"There is no deploy #{deploy_id}.") from None
        rollout = self.store.rollouts.get(deploy_id)
        if rollout is None:
            raise PolicyViolation(f"#{deploy.id} is not a staged rollout: there is nothing to promote, pause or abort.")
        if deploy.status not in STEERABLE or rollout.ended_at is not None:
            raise PolicyViolation(f"#{deploy.id} is {deploy.status.replace('_', ' ')}: its rollout is over.")
        return deploy, rollout

    def find(self, service: str, environment: str | None) -> int:
        """The rollout ``/deploy promote api production`` means.

        Raises:
            SlipwayError: unknown names, no environment given where several
                have one in progress, or none in progress.
        """
        service = resolve_service(self.config, service)
        if environment is not None:
            environments = [resolve_environment(self.config, service, environment).name]
        else:
            environments = self.config.environments_of(service)
        found = []
        for name in environments:
            deploy = self.store.deploys.in_flight(service, name)
            if deploy is not None and deploy.status in STEERABLE and self.store.rollouts.get(deploy.id) is not None:
                found.append(deploy)
        if not found:
            where = f" on {environments[0]}" if len(environments) == 1 else ""
            raise PolicyViolation(f"{service} has no staged rollout in progress{where}.")
        if len(found) > 1:
            raise PolicyViolation(f"{service} has rollouts in progress on "
                                  f"{' and '.join(d.environment for d in found)}: say which environment.")
        return found[0].id

    # -- who may --------------------------------------------------------------------------

    def _steerers(self, deploy: Deploy) -> RoleHolders:
        environment = self.config.environment_for(deploy.service, deploy.environment)
        if environment.approvals is not None or environment.roles.approve is not None:
            return role_holders(environment, "approve")
        return role_holders(environment, "rollback", deployer=deploy.requested_by)

    async def _require(self, deploy: Deploy, user: str, holders: RoleHolders, doing: str, attempted: str,
                       source: str | None) -> None:
        await require_role(self.people, self.store, holders, user, doing=doing, attempted=attempted,
                           deploy_id=deploy.id, source=source)

    # -- the four ------------------------------------------------------------------------

    async def promote(self, deploy_id: int, user: str, position: int | None = None, source: str | None = None) -> str:
        """Skip the rest of the current stage's pause (in the bake: end it now,
        and the deploy succeeds). ``position``: the stage the click was made
        on (a command means the current one). Returns what to tell the person."""
        deploy, rollout = self._rollout(deploy_id)
        await self._require(deploy, user, self._steerers(deploy), f"promote #{deploy.id}", "promote", source)
        current = rollout.current
        if current is None or (position is not None and position != current.position):
            raise PolicyViolation(f"#{deploy.id} has moved on since that button was drawn: it is now at "
                                  f"{current.label if current else 'its end'}. Look again.")
        if not self.store.rollouts.promote(deploy.id, current.position, user):
            raise PolicyViolation(f"{current.label} of #{deploy.id} is already promoted.")
        self.store.audit.record(deploy.id, user, "promoted", {"stage": current.label}, source)
        self.watch.poke(deploy.id)
        self.events.publish(DeployChanged(deploy.id))
        what = "ends the bake now" if current.kind == "bake" else f"goes on from {current.label} without waiting"
        return f"Promoted: #{deploy.id} {what}."

    async def pause(self, deploy_id: int, user: str, source: str | None = None) -> str:
        deploy, rollout = self._rollout(deploy_id)
        await self._require(deploy, user, self._steerers(deploy), f"pause #{deploy.id}", "pause", source)
        reason = f"paused by {mention(user)}"
        if not self.store.rollouts.pause(deploy.id, user, reason, self.now()):
            raise PolicyViolation(f"#{deploy.id} is already paused ({rollout.pause_reason}).")
        self.store.audit.record(deploy.id, user, "paused", {}, source)
        self.views.thread(deploy, f":double_vertical_bar: {mention(user)} paused the rollout at "
                                  f"{rollout.current.label if rollout.current else 'its end'}; nothing is promoted "
                                  "until someone resumes it.")
        self.watch.poke(deploy.id)
        self.events.publish(DeployChanged(deploy.id))
        return f"Paused #{deploy.id}."

    async def resume(self, deploy_id: int, user: str, source: str | None = None) -> str:
        deploy, rollout = self._rollout(deploy_id)
        await self._require(deploy, user, self._steerers(deploy), f"resume #{deploy.id}", "resume", source)
        if not self.store.rollouts.resume(deploy.id, self.now()):
            raise PolicyViolation(f"#{deploy.id} is not paused.")
        self.store.audit.record(deploy.id, user, "resumed", {}, source)
        self.views.thread(deploy, f":arrow_forward: {mention(user)} resumed the rollout.")
        self.watch.poke(deploy.id)
        self.events.publish(DeployChanged(deploy.id))
        return f"Resumed #{deploy.id}."

    async def abort(self, deploy_id: int, user: str, source: str | None = None, *,
                    reason: str | None = None) -> str:
        """Ask the runner to abort: before full traffic it returns traffic to
        the stable version; after it, the abort is a rollback. An engine
        call under way is waited for first."""
        deploy, rollout = self._rollout(deploy_id)
        holders = role_holders(self.config.environment_for(deploy.service, deploy.environment), "rollback", deployer=deploy.requested_by)
        await require_role(self.people, self.store, holders, user, doing=f"abort #{deploy.id}", attempted="abort",
                           deploy_id=deploy.id, source=source)
        why = reason or f"aborted by {mention(user)}"
        if not self.store.rollouts.request_abort(deploy.id, user, why):
            raise PolicyViolation(f"An abort of #{deploy.id} is already under way.")
        self.store.audit.record(deploy.id, user, "abort_requested", {"full_traffic": rollout.full_traffic}, source)
        self.watch.poke(deploy.id)
        self.events.publish(DeployChanged(deploy.id))
        if rollout.full_traffic:
            return f"Aborting #{deploy.id}: the old version is gone, so this rolls back to the last good version."
        return f"Aborting #{deploy.id}: all traffic goes back to {deploy.previous_version or 'the stable version'}."

    def abort_for_alert(self, deploy_id: int, reason: str) -> bool:
        """A page-level alert tied to a rollout in progress, where
        ``auto_rollback`` is on: abort it (False: it is not in progress)."""
        rollout = self.store.rollouts.get(deploy_id)
        if rollout is None or rollout.ended_at is not None:
            return False
        self.store.rollouts.request_abort(deploy_id, "slipway", reason)
        self.watch.poke(deploy_id)
        self.events.publish(DeployChanged(deploy_id))
        return True
