"""The shape of the code, checked: the import rules in pyproject.toml
(``[tool.importlinter]``, README "Layout") hold, and every event the code
publishes has someone listening, registered in the composition root."""

from __future__ import annotations

import dataclasses
import inspect
import logging
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import bot.events
from bot.events import EventBus

ROOT = Path(__file__).resolve().parent.parent
CONTRACTS = {
    "The store imports nothing from bot or handlers",
    "The deploy domain reaches neither slack_sdk nor slack_bolt, directly or through anything",
    "Handlers do not speak SQLite: they call the domain, which calls the store",
}


def test_the_import_contracts_are_the_ones_the_readme_states() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    assert {contract["name"] for contract in config["contracts"]} == CONTRACTS
    readme = (ROOT / "README.md").read_text()
    for rule in ("`store` imports nothing from `bot` or `handlers`", "`bot.deploys` never reaches `slack_sdk`",
                 "`handlers` import neither `sqlite3` nor `sqlite_utils`"):
        assert rule in readme


def test_the_import_contracts_hold() -> None:
    # in a process of its own: import-linter reconfigures logging as it runs
    checked = subprocess.run(
        [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports; "
                               "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True))"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "Contracts: 3 kept, 0 broken." in checked.stdout


EVENT_TYPES = [cls for _, cls in inspect.getmembers(bot.events, inspect.isclass)
               if dataclasses.is_dataclass(cls) and cls.__module__ == "bot.events"]


@pytest.mark.parametrize("event_type", EVENT_TYPES, ids=lambda cls: cls.__name__)
def test_every_event_has_a_subscriber_in_the_composition_root(harness, event_type: type) -> None:
    """An event nobody hears is a fact dropped on the floor (ExecutorStarted
    is a probe for benchmarks, heard by whoever measures)."""
    subscribers = harness.slipway.events.subscribers(event_type)
    if event_type is bot.events.ExecutorStarted:
        assert subscribers == []
    else:
        assert subscribers, f"nobody subscribes to {event_type.__name__}"


def test_a_failing_subscriber_is_logged_and_the_rest_are_still_told(caplog: pytest.LogCaptureFixture) -> None:
    bus, told = EventBus(), []

    def broken(event: bot.events.LocksChanged) -> None:
        raise RuntimeError("a view that cannot draw")

    bus.subscribe(bot.events.LocksChanged, broken)
    bus.subscribe(bot.events.LocksChanged, told.append)
    with caplog.at_level(logging.ERROR, logger="bot.events"):
        bus.publish(bot.events.LocksChanged())
    assert told == [bot.events.LocksChanged()]
    [record] = [r for r in caplog.records if r.name == "bot.events"]
    assert "LocksChanged" in record.getMessage() and "a view that cannot draw" in str(record.exc_info[1])


def test_subscribers_are_told_in_order_and_only_of_their_type() -> None:
    bus, told = EventBus(), []
    bus.subscribe(bot.events.DeployChanged, lambda event: told.append(("first", event.deploy_id)))
    bus.subscribe(bot.events.DeployChanged, lambda event: told.append(("second", event.deploy_id)))
    bus.subscribe(bot.events.DeployPosted, lambda event: told.append(("posted", event.deploy_id)))
    bus.publish(bot.events.DeployChanged(7))
    assert told == [("first", 7), ("second", 7)]
