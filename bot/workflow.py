"""The deploy state machine as people drive it: request, tick, approve,
reject, cancel, lock and unlock.

Each method checks who is acting, asks the store to make the change in one
transaction, and turns the store's named errors into messages for the
person. Refusals of people are recorded in the audit log too.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from bot.commands import LockCommand, UnlockCommand
from bot.config import Config, Environment
from bot.directory import Directory
from bot.errors import InvalidTransition, NotAllowed, PolicyViolation, SlipwayError
from bot.policy import check_request, check_still_allowed, in_flight_message, resolve_environment, resolve_service
from bot.render import mention
from store import (
    ALL_ENVIRONMENTS,
    AlreadyApproved,
    ChecklistIncomplete,
    Deploy,
    DeployInFlight,
    DeployNotFound,
    DuplicateRequest,
    Lock,
    StateConflict,
    Store,
)


class DeployWorkflow:
    """The rules of a deploy's life before it reaches the deploy engine."""

    def __init__(self, config: Config, store: Store, directory: Directory,
                 clock: Callable[[], datetime]) -> None:
        self.config = config
        self.store = store
        self.directory = directory
        self.clock = clock

    # -- requests -----------------------------------------------------------------

    def request(self, *, user: str, service: str, version: str, environment: str | None,
                trigger_id: str | None = None, source: str | None = None) -> tuple[Deploy, bool]:
        """Record a deploy request that passes the discipline.

        Returns the deploy and whether it is new (``False`` when Slack
        delivered the same request twice: the first one is returned).

        Raises:
            SlipwayError: the request is refused; the message says why.
        """
        if trigger_id and (seen := self.store.find_by_trigger(trigger_id)):
            return seen, False  # the same Slack request again: answer as the first time, change nothing
        plan = check_request(self.config, self.store, service, version, environment, self.clock())
        try:
            deploy = self.store.create_deploy(
                service=plan.service,
                environment=plan.environment.name,
                version=plan.version.normalised,
                version_prefixed=plan.version.prefixed,
                requested_by=user,
                previous_version=plan.live.version if plan.live else None,
                checklist=list(plan.environment.checklist) if plan.environment.approvals else [],
                needs_approval=plan.environment.approvals is not None,
                trigger_id=trigger_id,
                source=source,
            )
        except DuplicateRequest as duplicate:
            return duplicate.existing, False
        except DeployInFlight as conflict:  # lost a race with another request
            raise PolicyViolation(in_flight_message(conflict.existing)) from None
        return deploy, True

    def required_approvals(self, deploy: Deploy) -> int:
        approvals = self._environment(deploy).approvals
        return approvals.required if approvals else 0

    def _environment(self, deploy: Deploy) -> Environment:
        return self.config.environment(deploy.environment)

    def get(self, deploy_id: int) -> Deploy:
        try:
            return self.store.get_deploy(deploy_id)
        except DeployNotFound:
            raise SlipwayError(f"There is no deploy #{deploy_id}.") from None

    # -- clicks -------------------------------------------------------------------

    async def tick(self, deploy_id: int, position: int, ticked: bool, user: str,
                   source: str | None = None) -> Deploy:
        """Tick or untick a checklist item (the requester or an approver).

        Raises:
            NotAllowed, InvalidTransition: with a message for the person.
        """
        deploy = self.get(deploy_id)
        await self._requester_or_approver(deploy, user, "tick", "tick the checklist of", source)
        try:
            return self.store.set_checklist_item(deploy_id, position, ticked, user, source)
        except StateConflict as conflict:
            raise _closed(deploy, conflict.current) from None
        except LookupError:
            raise SlipwayError(f"Deploy #{deploy_id} has no such checklist item.") from None

    async def approve(self, deploy_id: int, user: str, source: str | None = None) -> Deploy:
        """Count ``user``'s approval.

        Raises:
            NotAllowed: not an approver, or approving their own request.
            InvalidTransition: the deploy is no longer awaiting approval.
            PolicyViolation: the final approval with checklist items unticked.
            SlipwayError: already approved by this person.
        """
        deploy = self.get(deploy_id)
        approvals = self._environment(deploy).approvals
        if deploy.status != "awaiting_approval" or approvals is None:
            raise _closed(deploy, deploy.status)
        if not await self.directory.is_member(user, approvals.approvers):
            self._refuse(deploy, user, "approve", source)
            raise NotAllowed(
                f"You are not an approver for {deploy.environment}. Approvers: {self._approver_list(deploy)}."
            )
        if user == deploy.requested_by and not approvals.allow_self_approval:
            self._refuse(deploy, user, "approve_own", source)
            raise NotAllowed(
                f"You requested #{deploy.id}, so you cannot approve it: {deploy.environment} needs "
                f"{approvals.required} approval(s) from someone else ({self._approver_list(deploy)})."
            )
        if reason := self.blocked_reason(deploy):
            raise PolicyViolation(f"#{deploy.id} cannot be approved now: {reason}")
        try:
            return self.store.record_approval(deploy_id, user, required=approvals.required, source=source)
        except AlreadyApproved:
            remaining = approvals.required - len(deploy.approvals)
            raise SlipwayError(
                f"Your approval of #{deploy.id} is already counted; {remaining} more needed."
            ) from None
        except ChecklistIncomplete as incomplete:
            items = "\n".join(f"• {label}" for label in incomplete.unticked)
            raise PolicyViolation(
                f"Yours would be the final approval of #{deploy.id}, but the checklist is not done. "
                f"Tick these first, then approve again:\n{items}"
            ) from None
        except StateConflict as conflict:
            raise _closed(deploy, conflict.current) from None

    def blocked_reason(self, deploy: Deploy) -> str | None:
        """Why ``deploy`` may not start now (a lock, a freeze or the ladder
        changed since it was approved), or None."""
        try:
            check_still_allowed(self.config, self.store, deploy, self.clock())
        except PolicyViolation as blocked:
            return blocked.message
        return None

    async def reject(self, deploy_id: int, user: str, source: str | None = None) -> Deploy:
        """End a request as rejected (approvers only)."""
        deploy = self.get(deploy_id)
        if not await self._is_approver(deploy, user):
            self._refuse(deploy, user, "reject", source)
            raise NotAllowed(f"Only approvers of {deploy.environment} can reject: {self._approver_list(deploy)}.")
        return self._end(deploy, "rejected", user, f"rejected by {mention(user)}", source)

    async def cancel(self, deploy_id: int, user: str, source: str | None = None) -> Deploy:
        """End a request as cancelled (the requester or an approver)."""
        deploy = self.get(deploy_id)
        await self._requester_or_approver(deploy, user, "cancel", "cancel", source)
        return self._end(deploy, "cancelled", user, f"cancelled by {mention(user)}", source)

    def _end(self, deploy: Deploy, status: str, user: str, reason: str, source: str | None) -> Deploy:
        try:
            return self.store.transition(deploy.id, allowed_from=("awaiting_approval",), to=status,
                                         actor=user, action=status, reason=reason, source=source)
        except StateConflict as conflict:
            raise _closed(deploy, conflict.current) from None

    def abandon(self, deploy: Deploy, reason: str) -> Deploy:
        """Cancel a request that could not be announced (e.g. the channel is gone),
        so it does not block the service+environment."""
        return self.store.transition(deploy.id, allowed_from=("awaiting_approval", "approved"), to="cancelled",
                                     actor=None, action="abandoned", reason=reason)

    async def _requester_or_approver(self, deploy: Deploy, user: str, what: str, verb: str,
                                     source: str | None) -> None:
        """Raises NotAllowed (and audits the refusal) unless ``user`` requested
        ``deploy`` or approves its environment."""
        if user == deploy.requested_by or await self._is_approver(deploy, user):
            return
        self._refuse(deploy, user, what, source)
        raise NotAllowed(
            f"Only {mention(deploy.requested_by)} (who requested it) and the approvers of "
            f"{deploy.environment} ({self._approver_list(deploy)}) can {verb} #{deploy.id}."
        )

    async def _is_approver(self, deploy: Deploy, user: str) -> bool:
        approvals = self._environment(deploy).approvals
        return approvals is not None and await self.directory.is_member(user, approvals.approvers)

    def _approver_list(self, deploy: Deploy) -> str:
        approvals = self._environment(deploy).approvals
        return self.directory.describe(approvals.approvers) if approvals else "nobody (no approvals needed)"

    def _refuse(self, deploy: Deploy, user: str, what: str, source: str | None) -> None:
        self.store.record_event(deploy.id, user, "refused", {"attempted": what}, source)

    # -- locks --------------------------------------------------------------------

    def lock(self, user: str, command: LockCommand, source: str | None = None) -> Lock:
        """Lock a service on one environment, or on all when none is named."""
        service = resolve_service(self.config, command.service)
        words = list(command.words)
        environment = ALL_ENVIRONMENTS
        if words and words[0].lower() in self.config.environment_names:
            environment = resolve_environment(self.config, service, words.pop(0).lower()).name
        reason = " ".join(words).strip("\"'“”")
        if not reason:
            raise SlipwayError("A lock needs a reason, so nobody is left guessing: "
                               "`/deploy lock <service> [environment] <reason>`.")
        return self.store.acquire_lock(service, environment, user, reason, source=source)

    def unlock(self, user: str, command: UnlockCommand, source: str | None = None) -> list[Lock]:
        """Release locks; say so when there was nothing to release."""
        service = resolve_service(self.config, command.service)
        environment = None
        if command.environment is not None:
            environment = resolve_environment(self.config, service, command.environment).name
        released = self.store.release_locks(service, environment, user, source)
        if not released:
            where = f" on {environment}" if environment else ""
            remaining = self.store.locks_for(service, environment) if environment else []
            hint = " (it is locked on every environment: `/deploy unlock " + service + "`)" if remaining else ""
            raise SlipwayError(f"{service} has no lock{where} to release{hint}.")
        return released


def _closed(deploy: Deploy, status: str) -> InvalidTransition:
    return InvalidTransition(
        f"Deploy #{deploy.id} is already {status.replace('_', ' ')}; there is nothing left to decide."
    )
