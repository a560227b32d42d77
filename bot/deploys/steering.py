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
from bot.deploys.progressive import StageWatch, steerers
from bot.errors import PolicyViolation, SlipwayError
from bot.events import DeployChanged, EventBus
from bot.slack.mrkdwn import mention
from store import Deploy, DeployStatus, Rollout, Store
from store.rollouts import WATCHING

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
        return steerers(self.config, deploy)

    def _refuse(self, deploy: Deploy, user: str, attempted: str, message: str, source: str | None) -> PolicyViolation:
        """A click the rollout's state does not allow: audited, and said why."""
        self.store.audit.record(deploy.id, user, "refused", {"attempted": attempted, "why": message}, source)
        return PolicyViolation(message)

    async def _require(self, deploy: Deploy, user: str, holders: RoleHolders, doing: str, attempted: str,
                       source: str | None) -> None:
        await require_role(self.people, self.store, holders, user, doing=doing, attempted=attempted,
                           deploy_id=deploy.id, source=source)

    # -- the four ------------------------------------------------------------------------

    async def promote(self, deploy_id: int, user: str, position: int | None = None, source: str | None = None) -> str:
        """Skip the rest of the current stage's pause (in the bake: end it now,
        and the deploy succeeds). ``position``: the stage the click was made
        on (a command means the current one). Returns what to tell the person."""
        deploy, _ = self._rollout(deploy_id)
        await self._require(deploy, user, self._steerers(deploy), f"promote #{deploy.id}", "promote", source)
        rollout = self.store.rollouts.get(deploy.id)  # as it stands now, after the role check's wait
        assert rollout is not None
        current = rollout.current
        if current is None or (position is not None and position != current.position):
            raise self._refuse(deploy, user, "promote", f"#{deploy.id} has moved on since that button was drawn: it "
                               f"is now at {current.label if current else 'its end'}. Look again.", source)
        if rollout.paused:
            raise self._refuse(deploy, user, "promote", f"#{deploy.id} is paused ({rollout.pause_reason}): resume "
                               "it first, or abort it.", source)
        if current.state != WATCHING:
            raise self._refuse(deploy, user, "promote", f"{current.label} of #{deploy.id} is still being applied: "
                               "promote skips a pause, so wait until it is watched.", source)
        with self.store.transaction():
            promoted = self.store.rollouts.promote(deploy.id, current.position, user)
            if promoted:
                self.store.audit.record(deploy.id, user, "promoted", {"stage": current.label}, source)
                self.events.publish(DeployChanged(deploy.id))
        if not promoted:  # the other of two clicks
            raise self._refuse(deploy, user, "promote", f"{current.label} of #{deploy.id} is already promoted.", source)
        self.watch.poke(deploy.id)
        what = "ends the bake now" if current.kind == "bake" else f"goes on from {current.label} without waiting"
        return f"Promoted: #{deploy.id} {what}."

    async def pause(self, deploy_id: int, user: str, source: str | None = None) -> str:
        deploy, _ = self._rollout(deploy_id)
        await self._require(deploy, user, self._steerers(deploy), f"pause #{deploy.id}", "pause", source)
        reason = f"paused by {mention(user)}"
        with self.store.transaction():
            rollout = self.store.rollouts.get(deploy.id)
            assert rollout is not None
            paused = self.store.rollouts.pause(deploy.id, user, reason, self.now())
            if paused:
                self.store.audit.record(deploy.id, user, "paused", {}, source)
                self.views.thread(deploy, f":double_vertical_bar: {mention(user)} paused the rollout at "
                                          f"{rollout.current.label if rollout.current else 'its end'}; nothing is "
                                          "promoted until someone resumes it.")
                self.events.publish(DeployChanged(deploy.id))
        if not paused:
            raise self._refuse(deploy, user, "pause", f"#{deploy.id} is already paused ({rollout.pause_reason}).",
                               source)
        self.watch.poke(deploy.id)
        return f"Paused #{deploy.id}."

    async def resume(self, deploy_id: int, user: str, source: str | None = None) -> str:
        deploy, _ = self._rollout(deploy_id)
        await self._require(deploy, user, self._steerers(deploy), f"resume #{deploy.id}", "resume", source)
        with self.store.transaction():
            resumed = self.store.rollouts.resume(deploy.id, self.now())
            if resumed:
                self.store.audit.record(deploy.id, user, "resumed", {}, source)
                self.views.thread(deploy, f":arrow_forward: {mention(user)} resumed the rollout.")
                self.events.publish(DeployChanged(deploy.id))
        if not resumed:
            raise self._refuse(deploy, user, "resume", f"#{deploy.id} is not paused.", source)
        self.watch.poke(deploy.id)
        return f"Resumed #{deploy.id}."

    async def abort(self, deploy_id: int, user: str, source: str | None = None, *,
                    reason: str | None = None) -> str:
        """Ask the runner to abort: before full traffic it returns traffic to
        the stable version; after it, the abort is a rollback. An engine
        call under way is waited for first."""
        deploy, _ = self._rollout(deploy_id)
        holders = role_holders(self.config.environment_for(deploy.service, deploy.environment), "rollback",
                               deployer=deploy.requested_by)
        await require_role(self.people, self.store, holders, user, doing=f"abort #{deploy.id}", attempted="abort",
                           deploy_id=deploy.id, source=source)
        why = reason or f"aborted by {mention(user)}"
        with self.store.transaction():
            rollout = self.store.rollouts.get(deploy.id)
            assert rollout is not None
            requested = self.store.rollouts.request_abort(deploy.id, user, why)
            if requested:
                self.store.audit.record(deploy.id, user, "abort_requested", {"full_traffic": rollout.full_traffic},
                                        source)
                self.events.publish(DeployChanged(deploy.id))
        if not requested:
            raise self._refuse(deploy, user, "abort", f"An abort of #{deploy.id} is already under way.", source)
        self.watch.poke(deploy.id)
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
