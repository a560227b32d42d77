"""The deploy discipline, as checks on a deploy request.

Each check raises a :class:`~bot.errors.SlipwayError` whose message says what
is wrong and what to do instead; the first failing check wins, in the order a
person would want to hear them (typos first, then the ladder, then the
state of the world).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from bot.config import Config, Environment
from bot.errors import PolicyViolation, UnknownEnvironment, UnknownService
from bot.render import mention, when
from bot.versions import Version, bump_kind, parse_version
from store import Deploy, Store


@dataclass(frozen=True)
class RequestPlan:
    """A request that passed every check: what to record."""

    service: str
    environment: Environment
    version: Version
    live: Deploy | None
    bump: str


def resolve_service(config: Config, service: str) -> str:
    if service not in config.services:
        known = ", ".join(f"`{name}`" for name in sorted(config.services))
        raise UnknownService(f"I don't know a service called `{service}`. Known services: {known}.")
    return service


def resolve_environment(config: Config, service: str, name: str | None) -> Environment:
    """The environment ``name`` (default: the service's first rung)."""
    rungs = config.environments_of(service)
    if name is None:
        return config.environment(rungs[0])
    if name not in config.environment_names:
        ladder = " → ".join(config.environment_names)
        raise UnknownEnvironment(f"`{name}` is not an environment. The ladder is {ladder}.")
    if name not in rungs:
        raise UnknownEnvironment(
            f"`{service}` is not deployed to `{name}`; its environments are {', '.join(rungs)}."
        )
    return config.environment(name)


def check_request(config: Config, store: Store, service: str, version_text: str,
                  environment_name: str | None, now: datetime) -> RequestPlan:
    """Apply the deploy discipline to ``/deploy service version [environment]``.

    Raises:
        UnknownService, UnknownEnvironment, InvalidVersion, PolicyViolation:
            with a message that tells the person what to do instead.
    """
    service = resolve_service(config, service)
    environment = resolve_environment(config, service, environment_name)
    version = parse_version(version_text)
    _check_ladder(store, service, environment, version)
    live = store.latest_successful(service, environment.name)
    bump = _check_direction(service, environment, version, live)
    _check_locks(store, service, environment)
    _check_freeze(config, environment, now)
    # One deploy in flight per service+environment is not checked here: the
    # store refuses it atomically (a unique index) and the workflow explains it.
    return RequestPlan(service, environment, version, live, bump)


def check_still_allowed(config: Config, store: Store, deploy: Deploy, now: datetime) -> None:
    """What can change between a request and its deploy (the ladder, locks,
    freezes), checked again at approval and just before the engine starts.
    Rollbacks are exempt: they are how a team gets out of trouble.

    Raises:
        PolicyViolation: saying what now stands in the way.
    """
    if deploy.rollback_of is not None:
        return
    environment = config.environment(deploy.environment)
    version = parse_version(deploy.display_version)
    _check_ladder(store, deploy.service, environment, version)
    _check_locks(store, deploy.service, environment)
    _check_freeze(config, environment, now)


def _check_ladder(store: Store, service: str, environment: Environment, version: Version) -> None:
    if environment.requires and not store.has_succeeded(service, environment.requires, version.normalised):
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
    for lock in store.locks_for(service, environment.name):
        scope = "every environment" if lock.environment == "*" else environment.name
        until = f" until {when(lock.until)}" if lock.until else ""
        unlock = f"`/deploy unlock {service}{'' if lock.environment == '*' else ' ' + lock.environment}`"
        raise PolicyViolation(
            f"{service} is locked on {scope} by {mention(lock.locked_by)} {when(lock.locked_at)}{until}: "
            f"“{lock.reason}”. Ask them, or {unlock} once it is safe."
        )


def _check_freeze(config: Config, environment: Environment, now: datetime) -> None:
    for window in config.freeze:
        if window.covers(environment.name, now):
            raise PolicyViolation(
                f"{environment.name} is frozen until {when(window.until.isoformat())}: {window.reason}. "
                "Deploys resume when the freeze ends."
            )


def in_flight_message(existing: Deploy) -> str:
    link = f" — <{existing.permalink}|see the request>" if existing.permalink else ""
    return (
        f"{existing.service} already has a deploy to {existing.environment} in flight: "
        f"#{existing.id} {existing.display_version}, {existing.status.replace('_', ' ')}, requested by "
        f"{mention(existing.requested_by)}{link}. Wait for it to finish, or cancel it first."
    )

