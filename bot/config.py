"""Loading and validating the Slipway config file (YAML).

Validation is done by pydantic models, so every problem in a file is found
in one pass; each problem is reported with its key path and, where the YAML
parser knows it, the line it is on::

    environments[1].approvals.required (line 9): must be at least 1

Secrets never live here: tokens come from the environment (see
``bot.runtime.settings``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from bot.deploys.freezes import (
    dates_window,
    parse_week_time,
    week_time_text,
    weekly_window,
    zone_named,
)
from bot.durations import parse_duration
from bot.errors import ConfigError

USER_ID = re.compile(r"^[UW][A-Z0-9]{2,}$")
USERGROUP_HANDLE = re.compile(r"^@[a-z0-9][a-z0-9._-]*$")
NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
MAX_CHECKLIST_ITEMS = 20  # each item is one Block Kit block; the message must stay under 50
MAX_CHECKLIST_TEXT = 150
DEFAULT_EXPIRE_AFTER = 24 * 3600.0
DEFAULT_APPROVAL_VALID_FOR = 8 * 3600.0
DEFAULT_REMIND_EVERY = 2 * 3600.0


def _check_people(people: list[str]) -> list[str]:
    bad = [p for p in people if not (USER_ID.match(p) or USERGROUP_HANDLE.match(p))]
    if bad:
        raise ValueError(f"not a Slack user id (U…) or usergroup handle (@name): {', '.join(map(repr, bad))}")
    return people


class _Model(BaseModel):
    # Unknown keys are errors: a typo such as `aprovals:` must not silently
    # turn off approvals for production.
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Approvals(_Model):
    """Who must approve a deploy to an environment, and how many of them."""

    required: Annotated[int, Field(ge=1, le=10)] = 1
    approvers: Annotated[list[str], Field(min_length=1)]
    allow_self_approval: bool = False
    # A request nobody decided on expires (so a stale request cannot be
    # approved days later, after everything it was judged against changed).
    expire_after: Duration = DEFAULT_EXPIRE_AFTER
    # An approval is a judgement about that day's state of things: one given
    # longer than this before the deploy starts no longer counts.
    approval_valid_for: Duration = DEFAULT_APPROVAL_VALID_FOR
    # A reminder line in the request's thread, mentioning who has not yet
    # approved, this long after the request and after each reminder.
    remind_every: Duration | None = DEFAULT_REMIND_EVERY

    @field_validator("approvers")
    @classmethod
    def _approver_format(cls, approvers: list[str]) -> list[str]:
        return _check_people(approvers)

    @model_validator(mode="after")
    def _enough_approvers(self) -> "Approvals":
        has_group = any(a.startswith("@") for a in self.approvers)
        if not has_group and self.required > len(set(self.approvers)):
            raise ValueError(
                f"required is {self.required} but only {len(set(self.approvers))} approver(s) are listed"
            )
        return self

    @property
    def user_ids(self) -> list[str]:
        return [a for a in self.approvers if not a.startswith("@")]

    @property
    def usergroup_handles(self) -> list[str]:
        return [a[1:] for a in self.approvers if a.startswith("@")]


# The discipline's defaults for what a deploy carrying a database migration
# needs ticked, on environments that take approvals.
DEFAULT_MIGRATION_CHECKLIST = (
    "Migration tested on staging with production-shaped data",
    "Backup taken before migrating",
    "The migration is reversible: a `down` migration exists",
    "No feature change in the same deploy",
)


ROLE_NAMES = ("request", "approve", "rollback", "lock", "override")


class Roles(_Model):
    """Who may do what on an environment: user ids and usergroup handles.
    A role left out keeps its default (``bot.deploys.policy.role_holders``)."""

    request: list[str] | None = None  # default: anyone
    approve: list[str] | None = None  # default: approvals.approvers
    rollback: list[str] | None = None  # default: the approvers plus whoever deployed
    lock: list[str] | None = None  # lock, unlock, unblock; default: anyone
    override: list[str] | None = None  # the extra approval a freeze override needs; default: who may approve

    @field_validator(*ROLE_NAMES)
    @classmethod
    def _people(cls, people: list[str] | None) -> list[str] | None:
        return _check_people(people) if people is not None else None


class Environment(_Model):
    """One rung of the ladder."""

    name: Annotated[str, Field(pattern=NAME.pattern, max_length=40)]
    requires: str | None = None
    approvals: Approvals | None = None
    checklist: Annotated[list[Annotated[str, Field(min_length=1, max_length=MAX_CHECKLIST_TEXT)]], Field(max_length=MAX_CHECKLIST_ITEMS)] = []
    roles: Roles = Roles()
    auto_rollback: bool = False  # roll back at once on a page-level alert tied to a deploy here
    queue: bool = False  # a request while another of the service is in flight here waits in line, not refused
    bake: Bake | None = None  # the watch after full traffic, before the deploy counts as succeeded
    # added to the checklist of a deploy that carries a migration (only where approvals are asked)
    migration_checklist: Annotated[list[Annotated[str, Field(min_length=1, max_length=MAX_CHECKLIST_TEXT)]], Field(max_length=MAX_CHECKLIST_ITEMS)] = list(DEFAULT_MIGRATION_CHECKLIST)


WeekTime = Annotated[int, BeforeValidator(parse_week_time)]


class WeeklyWindow(_Model):
    """A window every week, e.g. Fri 15:00 to Mon 09:00 (it may wrap the week end)."""

    starts: WeekTime = Field(alias="from")
    until: WeekTime

    @model_validator(mode="after")
    def _has_length(self) -> "WeeklyWindow":
        if self.starts == self.until:
            raise ValueError("from and until are the same time of the week; a window needs a length")
        return self


@dataclass(frozen=True)
class FreezeWindow:
    """One occurrence of a freeze: the freeze, and when this one began and ends."""

    freeze: "Freeze"
    starts: datetime
    until: datetime

    @property
    def key(self) -> str:
        """Names this occurrence, so an override granted for it is not taken
        for an override of the next one (or of another freeze)."""
        return f"{self.freeze.reason}|{self.freeze.schedule}|{self.starts.isoformat()}"

    def record(self) -> dict[str, str]:
        """What a deploy that overrides this occurrence keeps of it."""
        return {"key": self.key, "reason": self.freeze.reason, "schedule": self.freeze.schedule,
                "from": self.starts.isoformat(), "until": self.until.isoformat()}


class Freeze(_Model):
    """A window during which deploys to some environments are refused: one
    from/until window, a weekly window, or a list of whole days."""

    environments: list[str] | None = None  # None: every environment
    starts: datetime | None = Field(None, alias="from")
    until: datetime | None = None
    weekly: WeeklyWindow | None = None
    dates: Annotated[list[date], Field(min_length=1)] | None = None
    timezone: str | None = None  # IANA name; weekly windows and dates are in this zone's local time
    reason: Annotated[str, Field(min_length=1)]

    @field_validator("starts", "until")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError('needs a time zone, e.g. "2026-12-24T00:00:00Z"')
        return value.astimezone(timezone.utc)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, name: str | None) -> str | None:
        if name is not None:
            zone_named(name)
        return name

    @model_validator(mode="after")
    def _one_kind(self) -> "Freeze":
        one_off = self.starts is not None or self.until is not None
        kinds = [name for name, given in (("from/until", one_off), ("weekly", self.weekly is not None),
                                          ("dates", self.dates is not None)) if given]
        if len(kinds) != 1:
            raise ValueError("give exactly one of from/until (one window), weekly (a window every week) or "
                             "dates (whole days)" + (f"; found {' and '.join(kinds)}" if kinds else ""))
        if one_off:
            if self.starts is None or self.until is None:
                raise ValueError("a one-off window needs both from and until")
            if self.until <= self.starts:
                raise ValueError("until must be after from")
            if self.timezone is not None:
                raise ValueError("timezone applies to weekly and dates; from and until carry their own zone")
        elif self.timezone is None:
            raise ValueError(f"{kinds[0]} are read in a named time zone: add timezone, e.g. Europe/Berlin or UTC")
        return self

    @property
    def schedule(self) -> str:
        """When the freeze applies, as a person would say it."""
        if self.weekly is not None:
            return (f"every {week_time_text(self.weekly.starts)} to {week_time_text(self.weekly.until)} "
                    f"({self.timezone})")
        if self.dates is not None:
            return f"on {', '.join(d.isoformat() for d in sorted(self.dates))} ({self.timezone})"
        return f"{self.starts:%Y-%m-%d %H:%M} to {self.until:%Y-%m-%d %H:%M} UTC"

    def window_at(self, environment: str, moment: datetime) -> FreezeWindow | None:
        """The occurrence of this freeze that covers ``environment`` at ``moment``, or None."""
        if self.environments is not None and environment not in self.environments:
            return None
        if self.weekly is not None:
            found = weekly_window(moment, zone_named(self.timezone), self.weekly.starts, self.weekly.until)
        elif self.dates is not None:
            found = dates_window(moment, zone_named(self.timezone), self.dates)
        else:
            found = (self.starts, self.until) if self.starts <= moment < self.until else None
        return FreezeWindow(self, *found) if found else None

    def covers(self, environment: str, moment: datetime) -> bool:
        return self.window_at(environment, moment) is not None


Duration = Annotated[float, BeforeValidator(parse_duration)]
ENV_NAME = r"^[A-Z_][A-Z0-9_]*$"


class WebhookSpec(_Model):
    """POST a signed JSON deploy request to a CI system, which reports back."""

    url: Annotated[str, Field(pattern=r"^https?://")]
    secret_env: Annotated[str, Field(pattern=ENV_NAME)]  # environment variable holding the HMAC secret


class GitHubActionsSpec(_Model):
    """Dispatch a workflow and follow its run to the conclusion."""

    repository: Annotated[str, Field(pattern=r"^[\w.-]+/[\w.-]+$")]
    workflow: Annotated[str, Field(min_length=1)]  # file name (deploy.yml) or numeric id
    ref: str = "main"
    inputs: dict[str, str] = {}  # extra inputs; version, environment and deploy_id are always sent
    token_env: Annotated[str, Field(pattern=ENV_NAME)] = "GITHUB_TOKEN"
    api_url: Annotated[str, Field(pattern=r"^https?://")] = "https://api.github.com"
    poll_interval: Duration = 10.0


class DeployExecutor(_Model):
    """How a service is deployed (or rolled back): exactly one engine."""

    command: Annotated[list[str], Field(min_length=1)] | None = None
    webhook: WebhookSpec | None = None
    github_actions: GitHubActionsSpec | None = None
    timeout: Duration = 600.0
    working_dir: str | None = None  # for command: where it runs (default: Slipway's working directory)

    @model_validator(mode="after")
    def _exactly_one(self) -> "DeployExecutor":
        chosen = [k for k in ("command", "webhook", "github_actions") if getattr(self, k) is not None]
        if len(chosen) != 1:
            raise ValueError("give exactly one of command, webhook, github_actions"
                             + (f" (found {', '.join(chosen)})" if chosen else ""))
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("command", "webhook", "github_actions") if getattr(self, k) is not None)


class HealthCheck(_Model):
    """An HTTP check retried until it passes or its deadline passes."""

    url: Annotated[str, Field(pattern=r"^https?://")]
    expect_status: Annotated[int, Field(ge=100, le=599)] = 200
    expect_json: dict[str, str] = {}  # top-level fields; "{version}" stands for the deployed version
    deadline: Duration = 60.0
    interval: Duration = 2.0
    request_timeout: Duration = 5.0


class SmokeTest(_Model):
    command: Annotated[list[str], Field(min_length=1)]
    timeout: Duration = 300.0
    working_dir: str | None = None


class Verification(_Model):
    health_checks: list[HealthCheck] = []
    smoke: SmokeTest | None = None


class Backup(_Model):
    """A command run before the engine on a deploy that carries a migration;
    its failure stops the deploy before the engine is reached."""

    command: Annotated[list[str], Field(min_length=1)]
    timeout: Duration = 1800.0
    working_dir: str | None = None
    environments: list[str] | None = None  # None: every environment


class Migrations(_Model):
    always: bool = False  # every deploy of the service carries a migration (else: `--migration`)
    backup: Backup | None = None


CHECK_NAME = r"^[a-z][a-z0-9_]*$"


class AnalysisCheck(_Model):
    """One metric gate of a progressive rollout: a PromQL instant query
    measured every ``interval`` while a stage (or the bake) is watched.

    ``{service}``, ``{environment}``, ``{version}`` and ``{previous_version}``
    are filled into the queries, escaped for PromQL label strings. A
    measurement fails when it exceeds ``max``, or ``max_ratio`` times its
    baseline (``baseline_query``: the same measure on the stable version),
    the baseline floored at ``min_baseline`` so that 2x of almost nothing
    stays quiet."""

    query: Annotated[str, Field(min_length=1)]
    baseline_query: Annotated[str, Field(min_length=1)] | None = None
    max: float | None = None
    max_ratio: Annotated[float, Field(gt=0)] | None = None
    min_baseline: Annotated[float, Field(ge=0)] = 0.0
    interval: Annotated[Duration, Field(gt=0)] = 30.0
    failure_limit: Annotated[int, Field(ge=1)] = 1  # failed measurements in one stage that fail it
    # no data, NaN or Prometheus unreachable: pause the rollout, or count as a failed measurement
    inconclusive: Literal["pause", "fail"] = "pause"

    @model_validator(mode="after")
    def _judged_somehow(self) -> "AnalysisCheck":
        if self.max is None and self.max_ratio is None:
            raise ValueError("give max, max_ratio, or both: a check needs a ceiling")
        if self.max_ratio is not None and self.baseline_query is None:
            raise ValueError("max_ratio compares with the stable version: it needs a baseline_query")
        return self


class Analysis(_Model):
    """Where the metric gates of progressive rollouts ask, and the checks they name."""

    prometheus_url: Annotated[str, Field(pattern=r"^https?://")] | None = None  # default: alerts.prometheus_url
    query_timeout: Annotated[Duration, Field(gt=0)] = 10.0
    checks: dict[Annotated[str, Field(pattern=CHECK_NAME)], AnalysisCheck] = {}


class CanaryStep(_Model):
    weight: Annotated[int, Field(ge=0, le=100)]  # percent of traffic on the new version
    pause: Duration = 0.0  # how long the step is watched before the next; 0: go on at once


class Canary(_Model):
    steps: Annotated[list[CanaryStep], Field(min_length=1, max_length=20)]
    analysis: list[str] = []  # names of analysis.checks gating every step
    on_failure: Literal["abort", "pause"] = "abort"

    @model_validator(mode="after")
    def _rising_to_full(self) -> "Canary":
        weights = [step.weight for step in self.steps]
        if any(later <= earlier for earlier, later in zip(weights, weights[1:], strict=False)) or weights[0] < 1:
            raise ValueError(f"step weights must rise from above 0 (they are {weights})")
        if weights[-1] != 100:
            raise ValueError(f"the last step must take all traffic: weight 100 (it is {weights[-1]})")
        return self


class BlueGreen(_Model):
    pause: Duration = 0.0  # after the switch, before the old colour is released
    analysis: list[str] = []
    on_failure: Literal["abort", "pause"] = "abort"


class Strategy(_Model):
    """How a service reaches an environment: in canary steps or by a
    blue-green switch (absent: direct, the engine does it all at once)."""

    canary: Canary | None = None
    blue_green: BlueGreen | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> "Strategy":
        chosen = [k for k in ("canary", "blue_green") if getattr(self, k) is not None]
        if len(chosen) != 1:
            raise ValueError("give exactly one of canary, blue_green" + (f" (found {', '.join(chosen)})" if chosen else ""))
        return self

    @property
    def kind(self) -> str:
        return "canary" if self.canary is not None else "blue_green"

    @property
    def analysis(self) -> list[str]:
        chosen = self.canary or self.blue_green
        assert chosen is not None
        return chosen.analysis


class Bake(_Model):
    """The watch after full traffic: the deploy succeeds only when it passes."""

    duration: Annotated[Duration, Field(gt=0)]
    analysis: list[str] = []


class GitHubChanges(_Model):
    """Where the changes between two versions are read: a GitHub repository."""

    repository: Annotated[str, Field(pattern=r"^[\w.-]+/[\w.-]+$")]
    tag: Annotated[str, Field(pattern=r"\{version\}")] = "v{version}"  # how a version maps to a git tag
    token_env: Annotated[str, Field(pattern=ENV_NAME)] = "GITHUB_TOKEN"
    api_url: Annotated[str, Field(pattern=r"^https?://")] = "https://api.github.com"
    deployments: bool = False  # mirror deploys as GitHub Deployments
    release: bool = False  # on success on the last rung, create the GitHub Release for the tag


class GitChanges(_Model):
    """...or a local git mirror Slipway reads (any git host)."""

    path: Annotated[str, Field(min_length=1)]  # the repository (bare mirror or work tree)
    tag: Annotated[str, Field(pattern=r"\{version\}")] = "v{version}"
    fetch: bool = False  # `git fetch --tags` before each lookup
    web_url: Annotated[str, Field(pattern=r"^https?://")] | None = None  # for compare links: {web_url}/compare/a...b


class Changes(_Model):
    """What a deploy ships: the commits and pull requests between the live
    version and the requested one (exactly one source)."""

    github: GitHubChanges | None = None
    git: GitChanges | None = None
    migration_paths: list[Annotated[str, Field(min_length=1)]] = []  # globs: touching one makes it a migration

    @model_validator(mode="after")
    def _one_source(self) -> "Changes":
        if (self.github is None) == (self.git is None):
            raise ValueError("give exactly one of github, git")
        return self

    @property
    def tag_template(self) -> str:
        source = self.github or self.git
        assert source is not None
        return source.tag


class Artifacts(_Model):
    """What must exist before a version may be requested."""

    tag_must_exist: bool = False  # refuse a version without its git tag (needs changes)
    image: Annotated[str, Field(pattern=r"^[^/\s]+/\S+:\S*\{version\}\S*$")] | None = None  # registry/name:tag
    registry_token_env: Annotated[str, Field(pattern=ENV_NAME)] | None = None  # optional bearer token


class Service(_Model):
    deploy: DeployExecutor | None = None
    migrations: Migrations = Migrations()
    rollback: DeployExecutor | None = None  # default: redeploy the previous good version with `deploy`
    verify: dict[str, Verification] = {}  # keyed by environment name
    environments: list[str] | None = None  # None: every rung of the ladder
    strategy: dict[str, Strategy] = {}  # keyed by environment name; absent: direct
    changes: Changes | None = None  # where the commits and pull requests being shipped are read
    artifacts: Artifacts | None = None  # what must exist before a version may be requested
    owners: list[str] = []  # who the service belongs to: user ids and usergroup handles
    channel: Annotated[str, Field(min_length=1)] | None = None  # its deploy messages (and their threads) go here
    mirror_to_main_channel: bool = False  # and one line linking to each goes to the main channel
    approvals: dict[str, Approvals] = {}  # per environment: replaces the environment's approvals for this service

    @field_validator("owners")
    @classmethod
    def _owner_format(cls, owners: list[str]) -> list[str]:
        return _check_people(owners)

    @property
    def looked_up(self) -> bool:
        """Whether its requests are looked up after the ack (changes, artifacts)
        before they may be approved or started."""
        return self.changes is not None or self.artifacts is not None


class AlertLabels(_Model):
    """Which labels (or annotations) of an alert carry what; the first one
    present wins."""

    service: list[str] = ["service", "job"]
    environment: list[str] = ["env", "environment"]
    metric: list[str] = ["metric"]
    value: list[str] = ["value"]
    baseline: list[str] = ["baseline"]
    traffic: list[str] = ["traffic"]
    severity: list[str] = ["severity"]


class AlertRule(_Model):
    """Thresholds for one metric, as multiples of its baseline, with absolute
    floors so that twice almost nothing stays quiet."""

    metric: Annotated[str, Field(min_length=1)]
    notify_above: Annotated[float, Field(gt=0)] | None = None
    warn_above: Annotated[float, Field(gt=0)] | None = None
    page_above: Annotated[float, Field(gt=0)] | None = None
    min_value: Annotated[float, Field(ge=0)] = 0.0
    min_traffic: Annotated[float, Field(ge=0)] = 0.0
    unit: str = ""  # shown after numbers, e.g. "%" or "ms"
    # PromQL for the baseline when an alert carries none, e.g.
    # 'avg_over_time(job:error_rate:ratio{service="{service}",env="{environment}"}[{window}])';
    # evaluated at the start of the deploy the alert is tied to (else at the alert's start).
    baseline_query: str | None = None

    @model_validator(mode="after")
    def _some_threshold(self) -> "AlertRule":
        if self.notify_above is None and self.warn_above is None and self.page_above is None:
            raise ValueError("give at least one of notify_above, warn_above, page_above")
        return self


DEFAULT_ALERT_RULES = [
    AlertRule(metric="error_rate", notify_above=2, page_above=5, min_value=0.01),
    AlertRule(metric="latency_p95", warn_above=3, min_value=0.05, unit="s"),
]


class Alerts(_Model):
    """Where monitors' alerts go and how they are judged."""

    channel: Annotated[str, Field(min_length=1)]  # alerts not tied to a deploy open their own thread here
    correlation_window: Duration = 3600.0  # an alert this soon after a deploy belongs to its thread
    oncall: str | None = None  # mentioned on a page: a usergroup handle ("@oncall") or user id
    labels: AlertLabels = AlertLabels()
    rules: list[AlertRule] = DEFAULT_ALERT_RULES
    alertmanager_token_env: Annotated[str, Field(pattern=ENV_NAME)] = "SLIPWAY_ALERTMANAGER_TOKEN"
    grafana_secret_env: Annotated[str, Field(pattern=ENV_NAME)] = "SLIPWAY_GRAFANA_SECRET"
    grafana_signature_header: str = "X-Grafana-Alerting-Signature"  # the contact point's HMAC header
    grafana_timestamp_header: str | None = None  # its timestamp header, when one is configured
    generic_token_env: Annotated[str, Field(pattern=ENV_NAME)] = "SLIPWAY_GENERIC_TOKEN"
    storm_threshold: Annotated[int, Field(ge=1)] = 5  # new alert threads per service per 10 min before a digest
    prometheus_url: Annotated[str, Field(pattern=r"^https?://")] | None = None  # for rules' baseline_query
    baseline_window: Duration = 3600.0  # {window} in a baseline_query: how far back the baseline looks

    @field_validator("oncall")
    @classmethod
    def _oncall(cls, value: str | None) -> str | None:
        return _check_people([value])[0] if value is not None else None


class Config(_Model):
    """The whole config file."""

    channel: Annotated[str, Field(min_length=1)]
    public_url: Annotated[str, Field(pattern=r"^https?://")] | None = None  # where engines call back
    environments: Annotated[list[Environment], Field(min_length=1)]
    freeze: list[Freeze] = []
    services: Annotated[dict[str, Service], Field(min_length=1)]
    alerts: Alerts | None = None
    analysis: Analysis | None = None

    @field_validator("services")
    @classmethod
    def _service_names(cls, services: dict[str, Service]) -> dict[str, Service]:
        bad = [name for name in services if not NAME.match(name)]
        if bad:
            raise ValueError(f"service names must be lower-case words: {', '.join(map(repr, bad))}")
        return services

    # -- lookups used by the policy -------------------------------------------------

    @property
    def environment_names(self) -> list[str]:
        return [env.name for env in self.environments]

    @property
    def secret_variables(self) -> frozenset[str]:
        """Every environment variable the config names as holding a secret
        (webhook secrets, GitHub tokens): deploy commands do not inherit them."""
        names = set()
        for service in self.services.values():
            for executor in (service.deploy, service.rollback):
                if executor is not None and executor.webhook is not None:
                    names.add(executor.webhook.secret_env)
                if executor is not None and executor.github_actions is not None:
                    names.add(executor.github_actions.token_env)
            if service.changes is not None and service.changes.github is not None:
                names.add(service.changes.github.token_env)
            if service.artifacts is not None and service.artifacts.registry_token_env is not None:
                names.add(service.artifacts.registry_token_env)
        if self.alerts is not None:
            names |= {self.alerts.alertmanager_token_env, self.alerts.grafana_secret_env,
                      self.alerts.generic_token_env}
        return frozenset(names)

    def environment(self, name: str) -> Environment:
        for env in self.environments:
            if env.name == name:
                return env
        raise KeyError(name)

    def environment_for(self, service: str, name: str) -> Environment:
        """Environment ``name`` as it applies to ``service``: with the
        service's own ``approvals`` there, when it has them, replacing the
        environment's (its approvers are then the ``approve`` role there,
        whatever ``roles.approve`` says; on a rung without approvals they add
        them). The checklist and every other role stay the environment's."""
        environment = self.environment(name)
        own = self.services[service].approvals.get(name) if service in self.services else None
        if own is None:
            return environment
        return environment.model_copy(update={"approvals": own,
                                              "roles": environment.roles.model_copy(update={"approve": None})})

    def channel_of(self, service: str) -> str:
        """Where ``service``'s deploy messages go: its own channel, else the main one."""
        own = self.services[service].channel if service in self.services else None
        return own or self.channel

    def freezes_at(self, environment: str, moment: datetime) -> list[FreezeWindow]:
        """Every freeze that covers ``environment`` at ``moment`` (the one
        question every freeze check asks), in config order."""
        return [found for window in self.freeze if (found := window.window_at(environment, moment))]

    @property
    def prometheus_url(self) -> str | None:
        """Where analysis queries go: ``analysis.prometheus_url``, else ``alerts.prometheus_url``."""
        if self.analysis is not None and self.analysis.prometheus_url is not None:
            return self.analysis.prometheus_url
        return self.alerts.prometheus_url if self.alerts is not None else None

    def strategy_of(self, service: str, environment: str) -> Strategy | None:
        """How ``service`` rolls out to ``environment`` (None: direct)."""
        return self.services[service].strategy.get(environment)

    def environments_of(self, service: str) -> list[str]:
        allowed = self.services[service].environments
        return [n for n in self.environment_names if allowed is None or n in allowed]


def parse_config(text: str, path: str = "<config>") -> Config:
    """Parse and validate config text.

    Raises:
        ConfigError: with every problem found, each naming its key path and line.
    """
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(path, [f"<yaml>{where}: {getattr(exc, 'problem', None) or exc}"]) from None
    if not isinstance(data, dict):
        raise ConfigError(path, ["<root>: the config must be a mapping of keys (channel, environments, services…)"])
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(path, [_describe(error, root) for error in exc.errors()]) from None
    problems = [_locate(location, message, root) for location, message in _reference_problems(config)]
    if problems:
        raise ConfigError(path, problems)
    return config


def load_config(path: str | Path) -> Config:
    """Read and validate the config file at ``path``.

    Raises:
        ConfigError: the file is missing, unreadable or invalid.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), [f"<file>: cannot read: {exc.strerror or exc}"]) from None
    return parse_config(text, str(path))


def _reference_problems(config: Config) -> list[tuple[list[Any], str]]:
    """Problems that span keys: names that must refer to something defined elsewhere."""
    problems: list[tuple[list[Any], str]] = []
    names = config.environment_names
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append((["environments"], f"duplicate environment name {name!r}"))
    for index, env in enumerate(config.environments):
        if env.checklist and env.approvals is None:
            problems.append((["environments", index, "checklist"],
                             "a checklist is ticked before the final approval, so it needs an approvals block"))
        if env.requires is not None and env.requires not in names[:index]:
            earlier = ", ".join(names[:index]) or "there is none"
            problems.append(
                (["environments", index, "requires"],
                 f"{env.requires!r} must name an earlier environment ({earlier})")
            )
    for index, window in enumerate(config.freeze):
        for name in window.environments or []:
            if name not in names:
                problems.append((["freeze", index, "environments"], f"unknown environment {name!r}"))
    for index, env in enumerate(config.environments):
        if env.roles.approve is not None and env.approvals is None:
            problems.append((["environments", index, "roles", "approve"],
                             "approving needs an approvals block: without one a request is approved at once"))
    for service_name, service in config.services.items():
        for name in service.verify:
            if name not in names:
                problems.append((["services", service_name, "verify", name], f"unknown environment {name!r}"))
        backup = service.migrations.backup
        for name in (backup.environments or []) if backup else []:
            if name not in names:
                problems.append((["services", service_name, "migrations", "backup", "environments"],
                                 f"unknown environment {name!r}"))
        for role in ("deploy", "rollback"):
            executor = getattr(service, role)
            if executor is not None and executor.webhook is not None and config.public_url is None:
                problems.append((["services", service_name, role, "webhook"],
                                 "a webhook engine reports back to Slipway: set public_url at the top level"))
        for name in service.environments or []:
            if name not in names:
                problems.append(
                    (["services", service_name, "environments"], f"unknown environment {name!r}")
                )
        for name in service.approvals:
            deploys_to = service.environments if service.environments is not None else names
            if name not in names:
                problems.append((["services", service_name, "approvals", name], f"unknown environment {name!r}"))
            elif name not in deploys_to:
                problems.append((["services", service_name, "approvals", name],
                                 f"{service_name} does not deploy to {name} (services.{service_name}.environments)"))
        for name, strategy in service.strategy.items():
            where = ["services", service_name, "strategy", name]
            if name not in names:
                problems.append((where, f"unknown environment {name!r}"))
            problems += _analysis_problems(config, [*where, strategy.kind, "analysis"], strategy.analysis)
        if service.artifacts is not None and service.artifacts.tag_must_exist and service.changes is None:
            problems.append((["services", service_name, "artifacts", "tag_must_exist"],
                             "a tag is looked up in the changes source: add a changes block (github or git)"))
    for index, env in enumerate(config.environments):
        if env.bake is not None:
            problems += _analysis_problems(config, ["environments", index, "bake", "analysis"], env.bake.analysis)
    return problems


def _analysis_problems(config: Config, where: list[Any], named: list[str]) -> list[tuple[list[Any], str]]:
    """What is wrong with a list of analysis check names at ``where``."""
    if not named:
        return []
    defined = config.analysis.checks if config.analysis is not None else {}
    problems = [(where, f"unknown check {name!r} (analysis.checks defines {', '.join(sorted(defined)) or 'none'})")
                for name in named if name not in defined]
    if config.prometheus_url is None:
        problems.append((where, "checks are measured in Prometheus: set analysis.prometheus_url"))
    return problems


def _locate(location: list[Any], message: str, root: yaml.Node | None) -> str:
    line = _line_of(root, location)
    where = f" (line {line})" if line else ""
    return f"{_format_path(location) or '<root>'}{where}: {message}"


def _describe(error: dict[str, Any], root: yaml.Node | None) -> str:
    location = [part for part in error["loc"] if not _is_wrapper(part)]
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        message = "unknown key (check the spelling against the config reference)"
    elif error["type"] == "missing":
        message = "required key is missing"
    elif message.startswith("Value error, "):
        message = message[len("Value error, "):]
    return _locate(location, message, root)


def _is_wrapper(part: Any) -> bool:
    # pydantic adds the class name of a model-level validator and
    # "function-after[...]" markers to the location; they are not keys.
    return isinstance(part, str) and ("[" in part or part[:1].isupper())


def _format_path(location: list[Any]) -> str:
    text = ""
    for part in location:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _line_of(node: yaml.Node | None, location: list[Any]) -> int | None:
    """The 1-based line of the key (or list item) ``location`` reaches; the
    deepest existing one when the rest is missing."""
    if node is None:
        return None
    line = node.start_mark.line + 1
    for part in location:
        child = None
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.value == str(part) or (part == "starts" and key.value == "from"):
                    child, line = value, key.start_mark.line + 1
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            child = node.value[part]
            line = child.start_mark.line + 1
        if child is None:
            return line
        node = child
    return line
