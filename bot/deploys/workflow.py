"""The deploy state machine as people drive it: request, tick, approve,
reject, cancel, lock, unlock and unblock.

Each method checks who is acting, asks the store to make the change in one
transaction, and turns the store's named errors into messages for the
person. Refusals of people are recorded in the audit log too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

from bot.config import (
    DEFAULT_APPROVAL_VALID_FOR,
    DEFAULT_EXPIRE_AFTER,
    Config,
    Environment,
)
from bot.deploys.command_text import LockCommand, UnblockCommand, UnlockCommand
from bot.deploys.policy import (
    RoleHolders,
    check_request,
    check_still_allowed,
    describe_holders,
    holds_role,
    in_flight_message,
    require_role,
    resolve_environment,
    resolve_service,
    role_holders,
)
from bot.deploys.ports import People
from bot.deploys.versions import parse_version
from bot.durations import DURATION, format_duration, parse_duration
from bot.errors import (
    InvalidTransition,
    NotAllowed,
    PolicyViolation,
    SlipwayError,
    UsageError,
)
from bot.events import (
    ChecklistBlocked,
    DeployChanged,
    EventBus,
    LocksChanged,
    LocksExpired,
    RequestExpired,
)
from bot.slack.mrkdwn import escape, mention, when
from store import (
    ALL_ENVIRONMENTS,
    AlreadyApproved,
    BlockedVersion,
    ChecklistIncomplete,
    Deploy,
    DeployInFlight,
    DeployNotFound,
    DeployStatus,
    DuplicateRequest,
    Lock,
    StateConflict,
    Store,
    approval_slots,
    stamp,
)


class DeployWorkflow:
    """The rules of a deploy's life before it reaches the deploy engine."""

    def __init__(self, config: Config, store: Store, directory: People, events: EventBus,
                 clock: Callable[[], datetime]) -> None:
        self.config = config
        self.store = store
        self.directory = directory
        # publishes DeployChanged, RequestExpired, ChecklistBlocked, LocksExpired and LocksChanged
        self.events = events
        self.clock = clock

    # -- requests -----------------------------------------------------------------

    def request(self, *, user: str, service: str, version: str, environment: str | None,
                trigger_id: str | None = None, source: str | None = None,
                migration: bool = False, override: str | None = None) -> tuple[Deploy, bool]:
        """Record a deploy request that passes the discipline. ``migration``:
        the person says it carries a database migration (a service can say
        all of its deploys do), which adds the environment's migration
        checklist and, where configured, a backup before the engine runs.
        ``override``: why to deploy inside a freeze; the request then needs
        one more approval, from the environment's ``override`` role (outside
        any freeze it is an ordinary request, and ``override_reason`` stays
        unset).

        Returns the deploy and whether it is new (``False`` when Slack
        delivered the same request twice: the first one is returned).

        Raises:
            SlipwayError: the request is refused; the message says why.
        """
        if trigger_id and (seen := self.store.deploys.find_by_trigger(trigger_id)):
            return seen, False  # the same Slack request again: answer as the first time, change nothing
        now = self.clock()
        self.expire_locks()
        plan = check_request(self.config, self.store, service, version, environment, now, override=override)
        migration = migration or self.config.services[plan.service].migrations.always
        checklist = list(plan.environment.checklist) if plan.environment.approvals else []
        if migration and plan.environment.approvals:
            checklist += [item for item in plan.environment.migration_checklist if item not in checklist]

        def record(queued: bool = False) -> Deploy:
            return self.store.deploys.create(
                service=plan.service,
                environment=plan.environment.name,
                version=plan.version.normalised,
                version_prefixed=plan.version.prefixed,
                requested_by=user,
                previous_version=plan.live.version if plan.live else None,
                checklist=checklist,
                needs_approval=plan.environment.approvals is not None or bool(plan.overridden),
                trigger_id=trigger_id,
                source=source,
                expires_at=stamp(now + timedelta(seconds=self.expire_after(plan.environment))),
                migration=migration,
                checking=self.config.services[plan.service].looked_up,
                override_reason=override if plan.overridden else None,
                override_freeze=[window.record() for window in plan.overridden],
                queued=queued,
            )

        line = self.store.deploys.queued(plan.service, plan.environment.name) if plan.environment.queue else []
        if line:
            # others wait in line: a new request joins its end rather than take the free environment
            waiting = [d for d in line if d.version == plan.version.normalised]
            if waiting:
                return waiting[0], False
            try:
                deploy = record(queued=True)
            except DuplicateRequest as duplicate:
                return duplicate.existing, False
            self.store.audit.record(deploy.id, user, "queued", {}, source)
            self.queue_changed()
            return deploy, True
        try:
            try:
                deploy = record()
            except DeployInFlight as conflict:
                # a request whose time ran out before the sweeper looked no longer stands in the way
                if not (self.is_expired(conflict.existing) and self.expire(conflict.existing)):
                    raise
                deploy = record()
        except DuplicateRequest as duplicate:
            return duplicate.existing, False
        except DeployInFlight as conflict:  # busy (or lost a race with another request)
            if not plan.environment.queue:
                raise PolicyViolation(in_flight_message(conflict.existing)) from None
            waiting = [d for d in [conflict.existing, *self.store.deploys.queued(plan.service, plan.environment.name)]
                       if d.version == plan.version.normalised]
            if waiting:  # two requests for the same version are one
                return waiting[0], False
            deploy = record(queued=True)
            self.store.audit.record(deploy.id, user, "queued", {"behind": conflict.existing.id}, source)
        if override and not plan.overridden:
            self.store.audit.record(deploy.id, user, "override_unused", {"reason": override}, source)
        return deploy, True

    async def check_may_request(self, user: str, service: str, environment: str | None,
                                source: str | None = None) -> None:
        """Raises NotAllowed (audited) unless ``user`` holds the ``request``
        role where ``/deploy service … environment`` would go.

        Raises:
            UnknownService, UnknownEnvironment, NotAllowed: with a message for the person.
        """
        service = resolve_service(self.config, service)
        env = resolve_environment(self.config, service, environment)
        await require_role(self.directory, self.store, role_holders(env, "request"), user,
                           doing=f"request deploys of {service} to {env.name}", attempted="request",
                           detail={"service": service, "environment": env.name}, source=source)

    @staticmethod
    def expire_after(environment: Environment) -> float:
        return environment.approvals.expire_after if environment.approvals else DEFAULT_EXPIRE_AFTER

    def approval_valid_for(self, deploy: Deploy) -> float:
        """How long (seconds) an approval of ``deploy`` counts."""
        approvals = self._environment(deploy).approvals
        return approvals.approval_valid_for if approvals else DEFAULT_APPROVAL_VALID_FOR

    def approvals_valid_since(self, deploy: Deploy) -> str:
        """Approvals of ``deploy`` given before this moment are stale (ISO time)."""
        return stamp(self.clock() - timedelta(seconds=self.approval_valid_for(deploy)))

    def fresh_approvals(self, deploy: Deploy) -> list[str]:
        """Who approved ``deploy`` recently enough for it to count."""
        since = self.approvals_valid_since(deploy)
        return [a.user_id for a in deploy.approvals if a.approved_at >= since]

    def is_expired(self, deploy: Deploy) -> bool:
        """A request awaiting approval past its expiry (the sweeper may not have seen it yet)."""
        return (deploy.status in (DeployStatus.AWAITING_APPROVAL, DeployStatus.QUEUED)
                and deploy.expires_at is not None and deploy.expires_at <= stamp(self.clock()))

    def expire(self, deploy: Deploy) -> Deploy | None:
        """End a request nobody decided on in time; None if it was decided meanwhile."""
        lifetime = format_duration(self.expire_after(self._environment(deploy)))
        try:
            with self.store.transaction():
                expired = self.store.deploys.transition(
                    deploy.id, allowed_from=(DeployStatus.AWAITING_APPROVAL, DeployStatus.QUEUED),
                    to=DeployStatus.EXPIRED, actor=None,
                    action="expired", reason=f"nobody decided on it within {lifetime} of the request")
                self.events.publish(DeployChanged(expired.id))  # its message says Expired, then its thread says why
                self.events.publish(RequestExpired(expired))
        except StateConflict:
            return None
        return expired

    def _refuse_if_expired(self, deploy: Deploy) -> None:
        """Raises InvalidTransition when ``deploy`` has expired (ending it now
        if the sweeper has not yet)."""
        if self.is_expired(deploy):
            self.expire(deploy)
            raise InvalidTransition(
                f"Deploy #{deploy.id} expired {when(deploy.expires_at)}: nobody decided on it in time. "
                f"Request it again if it is still wanted.")

    def required_approvals(self, deploy: Deploy) -> int:
        """Every approval ``deploy`` needs: the environment's, plus one for a freeze override."""
        return self._required_normal(deploy) + (1 if deploy.override_reason else 0)

    def _required_normal(self, deploy: Deploy) -> int:
        approvals = self._environment(deploy).approvals
        return approvals.required if approvals else 0

    def _environment(self, deploy: Deploy) -> Environment:
        return self.config.environment_for(deploy.service, deploy.environment)

    def get(self, deploy_id: int) -> Deploy:
        try:
            return self.store.deploys.get(deploy_id)
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
        self._refuse_if_expired(deploy)
        try:
            return self._changed(lambda: self.store.deploys.set_checklist_item(deploy_id, position, ticked, user, source))
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
        if deploy.status not in (DeployStatus.AWAITING_APPROVAL, DeployStatus.QUEUED) or (
                approvals is None and not deploy.override_reason) or (
                deploy.status == DeployStatus.QUEUED and deploy.approved_at is not None):
            raise _closed(deploy, deploy.status)
        if deploy.held:
            self._refuse(deploy, user, "approve_while_checking", source)
            raise PolicyViolation(f"#{deploy.id} is still being checked (what it ships, whether its artifacts exist); "
                                  "approve it once the message shows the result, in a few seconds.")
        counts_as = await self._counts_as(deploy, user, source)
        if user == deploy.requested_by and not (approvals and approvals.allow_self_approval):
            self._refuse(deploy, user, "approve_own", source)
            raise NotAllowed(
                f"You requested #{deploy.id}, so you cannot approve it: {deploy.environment} needs "
                f"{self.required_approvals(deploy)} approval(s) from someone else "
                f"({await self._approvers_text(deploy)})."
            )
        self._refuse_if_expired(deploy)
        if reason := self.blocked_reason(deploy):
            self._refuse(deploy, user, "approve_while_blocked", source)
            raise PolicyViolation(f"#{deploy.id} cannot be approved now: {reason}")
        await self._refuse_if_not_needed(deploy, user, counts_as, source)
        try:
            return self._changed(lambda: self.store.deploys.record_approval(
                deploy_id, user, required=self._required_normal(deploy), counts_as=counts_as,
                valid_since=self.approvals_valid_since(deploy), source=source))
        except AlreadyApproved:
            self._refuse(deploy, user, "approve_again", source)
            remaining = self.required_approvals(deploy) - len(self.fresh_approvals(deploy))
            raise SlipwayError(
                f"Your approval of #{deploy.id} is already counted; {remaining} more needed."
            ) from None
        except ChecklistIncomplete as incomplete:
            self.store.audit.record(deploy.id, user, "refused", {"attempted": "approve",
                                                                 "unticked": incomplete.unticked}, source)
            self.events.publish(ChecklistBlocked(deploy, user))
            items = "\n".join(f"• {label}" for label in incomplete.unticked)
            raise PolicyViolation(
                f"Yours would be the final approval of #{deploy.id}, but the checklist is not done. "
                f"Tick these first, then approve again:\n{items}"
            ) from None
        except StateConflict as conflict:
            raise _closed(deploy, conflict.current) from None

    async def _counts_as(self, deploy: Deploy, user: str, source: str | None) -> str:
        """What ``user``'s approval of ``deploy`` counts as: ``approve`` (the
        ``approve`` role), ``override`` (the ``override`` role, on a request
        that overrides a freeze) or ``both``.

        Raises:
            NotAllowed: neither (audited), naming the roles and who holds them.
        """
        env = self._environment(deploy)
        approvers = role_holders(env, "approve")
        approves = env.approvals is not None and await holds_role(self.directory, approvers, user)
        overrides = bool(deploy.override_reason) and await holds_role(
            self.directory, role_holders(env, "override"), user)
        if approves or overrides:
            return "both" if approves and overrides else "approve" if approves else "override"
        self._refuse(deploy, user, "approve", source)
        if not deploy.override_reason:
            raise NotAllowed(f"You are not an approver for {env.name}: approving takes the `approve` role there, "
                             f"held by {await describe_holders(self.directory, approvers)}.")
        raise NotAllowed(f"You may not approve #{deploy.id}: it needs {await self._approvers_text(deploy)}.")

    async def _refuse_if_not_needed(self, deploy: Deploy, user: str, counts_as: str, source: str | None) -> None:
        """An approval that fills no missing slot (the approvers' part is
        complete, and the giver cannot give the override approval) is refused,
        so the message never shows approvals that wait on nothing they can give."""
        if not deploy.override_reason:
            return
        since = self.approvals_valid_since(deploy)
        kinds = [a.counts_as for a in deploy.approvals if a.approved_at >= since and a.user_id != user]
        required = self._required_normal(deploy)
        if approval_slots(kinds + [counts_as], required, True) > approval_slots(kinds, required, True):
            return
        holders = await describe_holders(self.directory, role_holders(self._environment(deploy), "override"))
        self._refuse(deploy, user, "approve_not_needed", source)
        raise PolicyViolation(f"#{deploy.id} has the approvals it needs from approvers; what it still needs is "
                              f"the freeze-override approval, from the `override` role: {holders}.")

    def blocked_reason(self, deploy: Deploy) -> str | None:
        """Why ``deploy`` may not start now (a lock, a freeze or the ladder
        changed since it was approved), or None."""
        self.expire_locks()
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
            raise NotAllowed(f"Only approvers of {deploy.environment} can reject: "
                             f"{await self._approvers_text(deploy)}.")
        return self._end(deploy, DeployStatus.REJECTED, user, f"rejected by {mention(user)}", source)

    async def cancel(self, deploy_id: int, user: str, source: str | None = None) -> Deploy:
        """End a request as cancelled (the requester or an approver)."""
        deploy = self.get(deploy_id)
        await self._requester_or_approver(deploy, user, "cancel", "cancel", source)
        return self._end(deploy, DeployStatus.CANCELLED, user, f"cancelled by {mention(user)}", source)

    def _end(self, deploy: Deploy, status: DeployStatus, user: str, reason: str, source: str | None) -> Deploy:
        try:
            return self._changed(lambda: self.store.deploys.transition(
                deploy.id, allowed_from=(DeployStatus.AWAITING_APPROVAL, DeployStatus.QUEUED), to=status, actor=user,
                action=status, reason=reason, source=source))
        except StateConflict as conflict:
            raise _closed(deploy, conflict.current) from None

    def _changed(self, change: Callable[[], Deploy]) -> Deploy:
        """Make ``change`` and record what it calls for (the subscribers of
        DeployChanged queue their Slack work) in one transaction."""
        with self.store.transaction():
            deploy = change()
            self.events.publish(DeployChanged(deploy.id))
        return deploy

    # -- the queue ----------------------------------------------------------------------

    def advance_queue(self, service: str, environment: str) -> Deploy | None:
        """When ``service`` is free on ``environment`` (nothing in flight, no
        lock), the first request in line whose approvals are complete takes
        its turn (one still awaiting approval holds up none behind it),
        re-checked as any deploy is at its start: a version blocked since is
        cancelled saying why; a freeze keeps the line waiting. Returns the
        request that took its turn."""
        if not self.config.environment(environment).queue or self.store.deploys.in_flight(service, environment):
            return None
        for waiting in self.store.deploys.queued(service, environment):
            if waiting.approved_at is None or waiting.held:
                continue  # approvals (or lookups) still to come
            if (block := self.store.locks.blocked(service, environment, waiting.version)) is not None:
                with self.store.transaction():
                    cancelled = self.store.deploys.transition(
                        waiting.id, allowed_from=(DeployStatus.QUEUED,), to=DeployStatus.CANCELLED, actor=None,
                        action="cancelled_in_queue", reason=f"{waiting.display_version} is blocked on {environment} "
                                                            f"since it was queued ({block.reason})")
                    self.events.publish(DeployChanged(cancelled.id))
                continue
            live = self.store.deploys.latest_successful(service, environment)
            if live is not None and parse_version(live.version).parsed >= parse_version(waiting.version).parsed:
                with self.store.transaction():
                    cancelled = self.store.deploys.transition(
                        waiting.id, allowed_from=(DeployStatus.QUEUED,), to=DeployStatus.CANCELLED, actor=None,
                        action="cancelled_in_queue", reason=f"{live.display_version} went live on {environment} while it "
                                                            f"waited: {waiting.display_version} would not be an upgrade")
                    self.events.publish(DeployChanged(cancelled.id))
                continue
            if self.blocked_reason(waiting) is not None:
                return None  # a lock or a freeze: the line waits
            try:
                with self.store.transaction():
                    turned = self.store.deploys.transition(waiting.id, allowed_from=(DeployStatus.QUEUED,),
                                                           to=DeployStatus.APPROVED, actor=None, action="its_turn")
                    self.events.publish(DeployChanged(turned.id))  # the runner starts it
            except (StateConflict, DeployInFlight):
                return None
            return turned
        return None

    def queue_changed(self, event: DeployChanged | LocksChanged | None = None) -> None:
        """Something may have freed a line (a deploy ended, a lock was lifted,
        a queued request got its last approval): let the next one go, once the
        change that says so has committed (a rollback recorded in the same
        transaction as the cancellation that freed the line goes first)."""
        if not any(environment.queue for environment in self.config.environments):
            return
        places: set[tuple[str, str]] | None = None
        if isinstance(event, DeployChanged):
            try:
                deploy = self.store.deploys.get(event.deploy_id)
            except LookupError:
                return
            if not self.config.environment(deploy.environment).queue:
                return
            places = {(deploy.service, deploy.environment)}

        def advance() -> None:
            for service, environment in sorted(places if places is not None else {
                    (d.service, d.environment) for d in self.store.deploys.queued()}):
                self.advance_queue(service, environment)

        try:
            asyncio.get_running_loop().call_soon(advance)
        except RuntimeError:  # no loop (a command-line tool): nothing else is running
            advance()

    def abandon(self, deploy: Deploy, reason: str) -> Deploy:
        """Cancel a request that could not be announced (e.g. the channel is gone),
        so it does not block the service+environment."""
        return self.store.deploys.transition(deploy.id,
                                             allowed_from=(DeployStatus.AWAITING_APPROVAL, DeployStatus.QUEUED,
                                                           DeployStatus.APPROVED),
                                             to=DeployStatus.CANCELLED,
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
            f"{deploy.environment} ({await self._approvers_text(deploy)}) can {verb} #{deploy.id}."
        )

    async def _is_approver(self, deploy: Deploy, user: str) -> bool:
        """Whether ``user``'s approval would count on ``deploy`` (the
        ``approve`` role, or the ``override`` role on an override request)."""
        env = self._environment(deploy)
        if env.approvals is not None and await holds_role(self.directory, role_holders(env, "approve"), user):
            return True
        return bool(deploy.override_reason) and await holds_role(self.directory, role_holders(env, "override"), user)

    async def _approvers_text(self, deploy: Deploy) -> str:
        """Who may approve ``deploy``, naming the roles."""
        env = self._environment(deploy)
        approvers = await describe_holders(self.directory, role_holders(env, "approve"))
        text = approvers if env.approvals else "nobody (no approvals needed)"
        if deploy.override_reason:
            overriders = await describe_holders(self.directory, role_holders(env, "override"))
            text = (f"{approvers} (the `approve` role) and " if env.approvals else "") + \
                f"one approval for the freeze override from {overriders} (the `override` role)"
        return text

    def _refuse(self, deploy: Deploy, user: str, what: str, source: str | None) -> None:
        self.store.audit.record(deploy.id, user, "refused", {"attempted": what}, source)

    # -- locks --------------------------------------------------------------------

    def expire_locks(self) -> list[Lock]:
        """Release the locks whose time ran out, and say so once
        (``LocksExpired``); called whenever Slipway reads the locks."""
        expired = self.store.locks.expire()
        if expired:
            self.events.publish(LocksExpired(tuple(expired)))
            self._locks_changed()
        return expired

    def _locks_changed(self) -> None:
        self.events.publish(LocksChanged())

    async def lock(self, user: str, command: LockCommand, source: str | None = None) -> Lock:
        """Lock a service on one environment, or on all when none is named;
        for a while when a duration (``2h``, ``30m``, ``1d``) comes first.

        Raises:
            UnknownService, UnknownEnvironment, NotAllowed, UsageError: with a message for the person.
        """
        self.expire_locks()
        service = resolve_service(self.config, command.service)
        words = list(command.words)
        environment = ALL_ENVIRONMENTS
        if words and words[0].lower() in self.config.environment_names:
            environment = resolve_environment(self.config, service, words.pop(0).lower()).name
        until = None
        if words and DURATION.match(words[0].lower()) and words[0]:
            try:
                seconds = parse_duration(words.pop(0).lower())
            except ValueError as bad:
                raise UsageError(f"{bad}.") from None
            until = (self.clock() + timedelta(seconds=seconds)).astimezone(timezone.utc)
        await self._require_lock_role(user, service, environment, "lock", source)
        reason = " ".join(words).strip()
        if not reason:
            raise UsageError("A lock needs a reason, so nobody is left guessing: "
                             '`/deploy lock <service> [environment] [duration] "reason"`.')
        # stored as mrkdwn, like the reasons Slipway writes itself ("rolled back
        # … by <@U…>"): what the person typed is escaped once, here
        lock = self.store.locks.acquire(service, environment, user, escape(reason), source=source,
                                        until=stamp(until) if until else None)
        self._locks_changed()
        return lock

    async def unlock(self, user: str, command: UnlockCommand, source: str | None = None) -> list[Lock]:
        """Release locks; say so when there was nothing to release."""
        self.expire_locks()
        service = resolve_service(self.config, command.service)
        environment = None
        if command.environment is not None:
            environment = resolve_environment(self.config, service, command.environment).name
        held = [lock for lock in self.store.locks.all(service) if environment in (None, lock.environment)]
        for lock in held:
            await self._require_lock_role(user, service, lock.environment, "unlock", source)
        released = self.store.locks.release(service, environment, user, source)
        if not released:
            where = f" on {environment}" if environment else ""
            remaining = self.store.locks.stopping(service, environment) if environment else []
            hint = " (it is locked on every environment: `/deploy unlock " + service + "`)" if remaining else ""
            raise SlipwayError(f"{service} has no lock{where} to release{hint}.")
        self._locks_changed()
        return released

    def history(self, service: str, environment: str | None) -> tuple[str, str | None, list[Deploy]]:
        """The last deploys of ``service`` (on ``environment``): its name and
        the environment's as configured, and the deploys, newest first.

        Raises:
            UnknownService, UnknownEnvironment: with a message for the person.
        """
        service = resolve_service(self.config, service)
        env = resolve_environment(self.config, service, environment).name if environment else None
        return service, env, self.store.deploys.history(service, env)

    def locks_holding(self, blocks: list[BlockedVersion]) -> list[Lock]:
        """The locks still in place where these blocks were lifted (so the
        person knows the version is allowed but the environment still locked)."""
        held = {(lock.service, lock.environment): lock for block in blocks
                for lock in self.store.locks.stopping(block.service, block.environment)}
        return list(held.values())

    def locks(self, service: str | None = None) -> tuple[list[Lock], list[BlockedVersion]]:
        """Every lock and blocked version (of ``service``)."""
        self.expire_locks()
        if service is not None:
            service = resolve_service(self.config, service)
        return self.store.locks.all(service), self.store.locks.all_blocks(service)

    async def unblock(self, user: str, command: UnblockCommand, source: str | None = None) -> list[BlockedVersion]:
        """Allow a version that was rolled back on an environment (every
        environment where it is blocked, when none is named) again.

        Raises:
            UnknownService, UnknownEnvironment, InvalidVersion, NotAllowed, SlipwayError: with a message.
        """
        service = resolve_service(self.config, command.service)
        version = parse_version(command.version)
        environment = None
        if command.environment is not None:
            environment = resolve_environment(self.config, service, command.environment).name
        blocks = [b for b in self.store.locks.all_blocks(service)
                  if b.version == version.normalised and environment in (None, b.environment)]
        if not blocks:
            where = f" on {environment}" if environment else ""
            others = ", ".join(f"{b.version} on {b.environment}" for b in self.store.locks.all_blocks(service))
            raise SlipwayError(f"{service} {version.display} is not blocked{where}; nothing to lift."
                               + (f" Blocked: {others}." if others else ""))
        for block in blocks:
            await self._require_lock_role(user, service, block.environment, "unblock", source)
        lifted = self.store.locks.unblock_version(service, version.normalised, environment, user, source)
        self._locks_changed()
        return lifted

    async def _require_lock_role(self, user: str, service: str, environment: str, attempted: str,
                                 source: str | None) -> None:
        """The ``lock`` role on ``environment`` (``"*"``: on every environment of the service).

        Raises:
            NotAllowed: audited, naming the role and who holds it.
        """
        names = self.config.environments_of(service) if environment == ALL_ENVIRONMENTS else [environment]
        where = "every environment" if environment == ALL_ENVIRONMENTS else environment
        verb = {"lock": "lock", "unlock": "unlock", "unblock": "unblock versions of"}[attempted]
        for name in names:
            holders: RoleHolders = role_holders(self.config.environment(name), "lock")
            await require_role(self.directory, self.store, holders, user, doing=f"{verb} {service} on {where}",
                               attempted=attempted, detail={"service": service, "environment": environment},
                               source=source)


def _closed(deploy: Deploy, status: str) -> InvalidTransition:
    return InvalidTransition(
        f"Deploy #{deploy.id} is already {status.replace('_', ' ')}; there is nothing left to decide."
    )
