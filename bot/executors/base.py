"""What every deploy engine adapter looks like to the lifecycle.

An executor hands one deploy (or rollback) to the team's real engine and
reports what that engine did. It never deploys anything itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol


@dataclass(frozen=True)
class Job:
    """One deploy as the engine sees it."""

    deploy_id: int
    service: str
    environment: str
    version: str  # normalised semver, e.g. "2.7.0"
    previous_version: str | None
    rollback_of: int | None  # the deploy this one undoes, for a rollback
    started_at: datetime  # when the executor was first started (a resumed job keeps it)
    # Variables a command must not inherit from Slipway: the engines' secrets
    # named in the config (its Slack secrets are never inherited).
    withhold: frozenset[str] = frozenset()
    # A staged rollout calls the engine once per step, saying which (issue 12):
    strategy: str = "direct"  # "direct", "canary" or "blue_green"
    step: int | None = None  # a canary's step, 1-based (0 for an abort's return to the stable version)
    steps: int | None = None  # how many steps the canary has
    weight: int | None = None  # percent of traffic the new version takes after this call (0: abort)
    phase: str | None = None  # blue-green: "deploy", "switch", "release" or "switch_back"

    @property
    def stage_key(self) -> str | None:
        """What tells this call apart from the deploy's other engine calls
        (None for a direct deploy's one call): ``step-2``, ``phase-switch``,
        ``abort``."""
        if self.strategy == "direct":
            return None
        if self.weight == 0 or self.phase == "switch_back":
            return "abort"
        return f"step-{self.step}" if self.strategy == "canary" else f"phase-{self.phase}"

    @property
    def stage_fields(self) -> dict[str, str]:
        """The strategy's fields, as strings, for a staged deploy's engine call
        (empty for a direct one, so engines that know nothing of stages see no change)."""
        if self.strategy == "direct":
            return {}
        fields = {"strategy": self.strategy}
        for name in ("step", "steps", "weight", "phase"):
            value = getattr(self, name)
            if value is not None:
                fields[name] = str(value)
        return fields

    @property
    def environ(self) -> dict[str, str]:
        """What a command engine finds in its environment."""
        values = {
            "SLIPWAY_DEPLOY_ID": str(self.deploy_id),
            "SLIPWAY_SERVICE": self.service,
            "SLIPWAY_ENVIRONMENT": self.environment,
            "SLIPWAY_VERSION": self.version,
            "SLIPWAY_PREVIOUS_VERSION": self.previous_version or "",
        }
        if self.rollback_of is not None:
            values["SLIPWAY_ROLLBACK_OF"] = str(self.rollback_of)
        values["SLIPWAY_STRATEGY"] = self.strategy
        for name, value in self.stage_fields.items():
            values[f"SLIPWAY_{name.upper()}"] = value
        return values


@dataclass(frozen=True)
class Outcome:
    """What the engine did."""

    succeeded: bool
    summary: str  # one line for the message, e.g. "exit 0 after 3.2 s", "timed out after 10m"
    exit_code: int | None = None
    run_url: str | None = None  # where to read the engine's own log (CI run, webhook log_url)
    log_tail: str = ""  # the last lines of output, for the deploy's thread (bounded)
    reference: dict[str, Any] = field(default_factory=dict)  # engine-specific ids (run id, …)


# Called by an executor as soon as it knows something that a restarted
# Slipway needs to follow the job up (a run id, a run URL): the lifecycle
# persists it before the executor goes on waiting.
RememberReference = Callable[[dict[str, Any]], Awaitable[None]]


class NotResumable(Exception):
    """The engine's work cannot be followed up after a restart (a local
    process died with the old Slipway)."""


class Executor(Protocol):
    kind: str  # "command", "webhook" or "github_actions"

    async def run(self, job: Job, remember: RememberReference) -> Outcome:
        """Start the engine on ``job`` and wait for its conclusion (or the timeout)."""
        ...

    async def resume(self, job: Job, reference: dict[str, Any], remember: RememberReference) -> Outcome:
        """Follow up a job a previous Slipway started, from what it remembered.

        Raises:
            NotResumable: this engine cannot be followed up.
        """
        ...
