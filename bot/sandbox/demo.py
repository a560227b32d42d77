"""What the sandbox demonstrates: its people, its config and the history it
starts from."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

from bot.config import Config, parse_config
from bot.sandbox.demo_deploy import PACE, record_version
from bot.sandbox.fake_slack import usergroup_id
from store import DeployStatus, Store

SERVICE = "demo"
CHANNEL_NAME = "deployments"
USERGROUPS = {"sre": ["U0ERIN"]}
# What runs everywhere before the first click, so that the first production
# deploy has something to roll back to.
STARTING_VERSION = "0.9.0"
DEPLOY_SCRIPT = Path(__file__).with_name("demo_deploy.py")
# Where the demo goes out as a canary (10% -> 50% -> 100%, then a bake), gated by the error rate the
# sandbox's stand-in for Prometheus reports (GET /api/v1/query): a low one, until the page's
# "Make the canary fail" raises the canary's.
CANARY_ENVIRONMENT = "production"
STABLE_ERROR_RATE = 0.004
CANARY_ERROR_RATE = 0.005  # under the check's ceiling: 2x the stable rate
FAILING_CANARY_ERROR_RATE = 0.2


@dataclass(frozen=True)
class Rollout:
    """How fast the canary on production goes: slow enough for a person to
    watch its stages and press "Make the canary fail" (seconds)."""

    pause: float = 20.0  # each step below 100%, watched by the analysis
    bake: float = 15.0  # at full traffic, before the deploy counts as done
    interval: float = 4.0  # between two measurements of the error rate


ROLLOUT = Rollout()


@dataclass(frozen=True)
class Person:
    id: str
    name: str
    role: str


PEOPLE = (
    Person("U0DANA", "Dana", "developer"),
    Person("U0ALICE", "Alice", "approver"),
    Person("U0BOB", "Bob", "approver"),
    Person("U0ERIN", "Erin", "SRE, on call"),
)
PEOPLE_BY_ID = {person.id: person for person in PEOPLE}


def config_text(sandbox_url: str, state_dir: Path, pace: float = PACE, rollout: Rollout = ROLLOUT) -> str:
    """The demo config, with the sandbox's own paths and URL filled in;
    ``pace``: seconds per step of the demo deploy script; ``rollout``: the
    pace of the canary on production."""
    template = resources.files("bot.sandbox").joinpath("demo.yml").read_text(encoding="utf-8")
    # JSON strings are YAML strings: a path with spaces or quotes stays one value
    return Template(template).substitute(
        python=json.dumps(sys.executable), deploy_script=json.dumps(str(DEPLOY_SCRIPT)),
        state_dir=json.dumps(str(state_dir)), pace=json.dumps(str(pace)),
        health_url=json.dumps(f"{sandbox_url}/demo/health/{{environment}}"),
        prometheus_url=json.dumps(sandbox_url), canary_pause=json.dumps(float(rollout.pause)),
        bake=json.dumps(float(rollout.bake)), analysis_interval=json.dumps(float(rollout.interval)))


def load(sandbox_url: str, state_dir: Path, pace: float = PACE, rollout: Rollout = ROLLOUT) -> Config:
    """The demo config, validated as ``slipway check-config`` would.

    Raises:
        ConfigError: the shipped template is broken (a bug in Slipway).
    """
    return parse_config(config_text(sandbox_url, state_dir, pace, rollout), "<sandbox demo config>")


def directory(config: Config) -> dict[str, Any]:
    """How the page shows ids: people by name, channels and usergroups by handle."""
    return {
        "people": [asdict(person) for person in PEOPLE],
        "channels": {config.channel: CHANNEL_NAME},
        "usergroups": {usergroup_id(handle): handle for handle in USERGROUPS},
    }


def seed_history(store: Store, config: Config, state_dir: Path) -> None:
    """On a new database, record that :data:`STARTING_VERSION` went out to
    every environment before the sandbox started (through the store's own
    transitions, as ``slipway`` would have recorded them), and have the demo
    service run it."""
    if store.deploys.history(SERVICE, limit=1):
        return
    for environment in config.environments_of(SERVICE):
        deploy = store.deploys.create(service=SERVICE, environment=environment, version=STARTING_VERSION,
                                      version_prefixed=False, requested_by=PEOPLE[0].id, previous_version=None,
                                      checklist=[], needs_approval=False, source="sandbox:history")
        for state in (DeployStatus.DEPLOYING, DeployStatus.VERIFYING, DeployStatus.SUCCEEDED):
            deploy = store.deploys.transition(deploy.id, allowed_from=(deploy.status,), to=state, actor=None,
                                              action=state,
                                              source="sandbox:history")
        # its requester was "told" then: without this, the next redraw of the deploy would DM her about it now
        store.deploys.claim_notification(deploy.id, deploy.status)
        record_version(state_dir, environment, STARTING_VERSION, str(deploy.id))
