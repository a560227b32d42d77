"""The deploy discipline, as checks on a deploy request.

Each check raises a :class:`~bot.errors.SlipwayError` whose message says what
is wrong and what to do instead; the first failing check wins, in the order a
person would want to hear them (typos first, then the ladder, then the
state of the world).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bot.config import Config, Environment, FreezeWindow
from bot.deploys.ports import People
from bot.deploys.versions import Version, bump_kind, parse_version
from bot.errors import NotAllowed, PolicyViolation, UnknownEnvironment, UnknownService
from bot.slack.mrkdwn import escape, mention, when
from store import Deploy, Lock, Store


@dataclass(frozen=True)
class RequestPlan:
    """A request that passed every check: what to record."""

    service: str
    environment: Environment
    version: Version
    live: Deploy | None
    bump: str
    overridden: tuple[FreezeWindow, ...] = ()  # the freezes a `--override` request asks to deploy in


def resolve_service(config: Config, service: str) -> str:
    if service not in config.services:
        known = ", ".join(f"`{name}`" for name in sorted(config.services))
        raise UnknownService(f"I don't know a service called `{escape(service)}`. Known services: {known}.")
    return service


def resolve_environment(config: Config, service: str, name: str | None) -> Environment:
    """The environment ``name`` (default: the service's first rung)."""
    rungs = config.environments_of(service)
    if name is None:
        return config.environment_for(service, rungs[0])
    if name not in config.environment_names:
        ladder = " → ".join(config.environment_names)
        raise UnknownEnvironment(f"`{escape(name)}` is not an environment. The ladder is {ladder}.")
    if name not in rungs:
        raise UnknownEnvironment(
            f"`{service}` is not deployed to `{name}`; its environments are {', '.join(rungs)}."
        )
    return config.environment_for(service, name)


def check_request(config: Config, store: Store, service: str, version_text: str,
                  environment_name: str | None, now: datetime, override: str | None = None) -> RequestPlan:
    """Apply the deploy discipline to ``/deploy service version [environment]``.
    With ``override`` (a reason), a freeze does not refuse the request: the
    plan names the freezes it overrides (none: the override is not needed).

    Raises:
        UnknownService, UnknownEnvironment, InvalidVersion, PolicyViolation:
            with a message that tells the person what to do instead.
    """
    service = resolve_service(config, service)
    environment = resolve_environment(config, service, environment_name)
    version = parse_version(version_text)
    _check_ladder(store, service, environment, version)
    live = store.deploys.latest_successful(service, environment.name)
    bump = _check_direction(service, environment, version, live)
    _check_blocked(store, service, environment, version)
    _check_locks(store, service, environment)
    freezes = config.freezes_at(environment.name, now)
    if freezes and override is None:
        raise PolicyViolation(_frozen_message(environment.name, freezes[0]) + (
            f" For an exception, ask with a reason: `/deploy {service} {version.display} {environment.name} "
            '--override "why"`; it then needs one more approval, from the `override` role.'))
    if freezes and role_holders(environment, "override").nobody:
        raise PolicyViolation(
            _frozen_message(environment.name, freezes[0])
            + " An override needs an approval from the `override` role of "
            f"{environment.name}, and nobody holds it: whoever runs Slipway must set `roles.override` (or an "
            f"`approvals` block) on {environment.name} in the config.")
    # One deploy in flight per service+environment is not checked here: the
    # store refuses it atomically (a unique index) and the workflow explains it.
    return RequestPlan(service, environment, version, live, bump, tuple(freezes))


def check_still_allowed(config: Config, store: Store, deploy: Deploy, now: datetime) -> None:
    """What can change between a request and its deploy (the ladder, locks,
    freezes), checked again at approval and just before the engine starts.
    Rollbacks are exempt: they are how a team gets out of trouble. A freeze
    the deploy was granted an override for does not stop it; one that
    began since does.

    Raises:
        PolicyViolation: saying what now stands in the way.
    """
    if deploy.rollback_of is not None:
        return
    environment = config.environment(deploy.environment)
    version = parse_version(deploy.display_version)
    _check_ladder(store, deploy.service, environment, version)
    _check_blocked(store, deploy.service, environment, version)
    _check_locks(store, deploy.service, environment)
    overridden = {window["key"] for window in deploy.overridden_freezes}
    for window in config.freezes_at(environment.name, now):
        if window.key not in overridden:
            raise PolicyViolation(_frozen_message(environment.name, window))


def _check_ladder(store: Store, service: str, environment: Environment, version: Version) -> None:
    if environment.requires and not store.deploys.has_succeeded(service, environment.requires, version.normalised):
        raise PolicyViolation(
            f"{service} {version.display} has not succeeded on {environment.requires} — deploy it there first: "
            f"`/deploy {service} {version.display} {environment.requires}`."
        )


def _check_direction(service: str, environment: Environment, version: Version, live: Deploy | None) -> str:
    bump = bump_kind(live.version if live else None, version.normalised)
    if bump == "same" and live is not None:
        raise PolicyViolation(
            f"{service} {live.display_version} is already live on {environment.name} "
            f"(deployed by {mention(live.requested_by)} {when(live.finished_at)}). Nothing to do."
        )
    if bump == "downgrade" and live is not None:
        raise PolicyViolation(
            f"{service} {version.display} is older than {live.display_version}, which is live on "
            f"{environment.name}. Going back is a rollback, not a deploy: use the Rollback button on "
            f"the deploy message of {live.display_version}."
        )
    return bump


def _check_locks(store: Store, service: str, environment: Environment) -> None:
    for lock in store.locks.stopping(service, environment.name):
        raise PolicyViolation(lock_message(service, environment.name, lock))


def lock_message(service: str, environment: str, lock: Lock) -> str:
    """Why a lock stops a deploy: who, when, why, until when, and how it ends."""
    scope = "every environment" if lock.environment == "*" else environment
    until = f" until {when(lock.until)}" if lock.until else " until someone unlocks it"
    unlock = f"`/deploy unlock {service}{'' if lock.environment == '*' else ' ' + lock.environment}`"
    return (f"{service} is locked on {scope} by {mention(lock.locked_by)} {when(lock.locked_at)}{until}: "
            f"“{lock.reason}”. Ask them, or {unlock} once it is safe.")


def _check_blocked(store: Store, service: str, environment: Environment, version: Version) -> None:
    block = store.locks.blocked(service, environment.name, version.normalised)
    if block is None:
        return
    rollback = f" (rollback #{block.rollback_id})" if block.rollback_id else ""
    message = (f"{service} {version.display} is blocked on {environment.name}: {block.reason} "
               f"{when(block.blocked_at)}{rollback}. Ship a fixed version instead, or, once {version.display} "
               f"is known to be safe, lift the block (the `lock` role): "
               f"`/deploy unblock {service} {version.display} {environment.name}`.")
    locks = store.locks.stopping(service, environment.name)
    raise PolicyViolation(message + (" Also: " + lock_message(service, environment.name, locks[0]) if locks else ""))


def _frozen_message(environment: str, window: FreezeWindow) -> str:
    return (f"{environment} is frozen until {when(window.until.isoformat())}: "
            f"{window.freeze.reason} ({window.freeze.schedule}). Deploys resume when the freeze ends.")


def in_flight_message(existing: Deploy) -> str:
    link = f" — <{existing.permalink}|see the request>" if existing.permalink else ""
    return (
        f"{existing.service} already has a deploy to {existing.environment} in flight: "
        f"#{existing.id} {existing.display_version}, {existing.status.replace('_', ' ')}, requested by "
        f"{mention(existing.requested_by)}{link}. Wait for it to finish, or cancel it first."
    )


# -- roles ---------------------------------------------------------------------------

@dataclass(frozen=True)
class RoleHolders:
    """Who holds ``role`` on an environment: ``entries`` (user ids and
    ``@handles``; None: anyone), plus ``deployer`` where the role's default
    includes whoever deployed."""

    role: str
    environment: str
    entries: tuple[str, ...] | None
    deployer: str | None = None

    @property
    def nobody(self) -> bool:
        return self.entries == () and self.deployer is None


def role_holders(environment: Environment, role: str, deployer: str | None = None) -> RoleHolders:
    """Who holds ``role`` (``request``, ``approve``, ``rollback``, ``lock``,
    ``override``) on ``environment``: ``roles.<role>`` when configured, else
    the default — anyone may request and lock; the approvers approve and give
    the override approval; the approvers and whoever deployed roll back."""
    configured = getattr(environment.roles, role)
    if configured is not None:
        return RoleHolders(role, environment.name, tuple(configured))
    if role in ("request", "lock"):
        return RoleHolders(role, environment.name, None)
    approvers = environment.roles.approve
    if approvers is None:
        approvers = environment.approvals.approvers if environment.approvals else []
    return RoleHolders(role, environment.name, tuple(approvers), deployer if role == "rollback" else None)


async def holds_role(directory: People, holders: RoleHolders, user: str) -> bool:
    if holders.entries is None or user == holders.deployer:
        return True
    return await directory.is_member(user, list(holders.entries))


async def describe_holders(directory: People, holders: RoleHolders) -> str:
    """``<@U0ALICE>, <!subteam^S0SRE|@sre>, <@U0DAVE> (who deployed it)``."""
    if holders.entries is None:
        return "anyone"
    named = [await directory.mentions(holders.entries)] if holders.entries else []
    if holders.deployer is not None:
        named.append(f"{mention(holders.deployer)} (who deployed it)")
    return ", ".join(named) or "nobody"


async def require_role(directory: People, store: Store, holders: RoleHolders, user: str, *, doing: str,
                       attempted: str, deploy_id: int | None = None, detail: dict[str, Any] | None = None,
                       source: str | None = None) -> None:
    """Return if ``user`` holds the role; else audit the refusal and raise.

    Raises:
        NotAllowed: naming the role needed and who holds it.
    """
    if await holds_role(directory, holders, user):
        return
    store.audit.record(deploy_id, user, "refused", {"attempted": attempted, **(detail or {})}, source)
    raise NotAllowed(f"You may not {doing}: that takes the `{holders.role}` role on {holders.environment}, "
                     f"held by {await describe_holders(directory, holders)}.")
