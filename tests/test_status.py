"""``/deploy status [service]``: what runs where, through the real HTTP door,
asserting on the ephemeral reply Slack would show."""

from __future__ import annotations

import json
import textwrap
from datetime import datetime, timezone
from typing import Any

import pytest

from bot.sandbox.fake_slack import block_kit_problem
from tests.conftest import PYTHON, Harness


async def status(harness: Harness, text: str = "status", user: str = "U0DAVE") -> dict[str, Any]:
    assert harness.slack is not None
    code, body = await harness.slack.command(text, user)
    assert code == 200, body
    reply = json.loads(body)
    assert "response_type" not in reply  # a read: only the asker sees it
    assert block_kit_problem(reply["blocks"]) is None
    return reply


def cells(reply: dict[str, Any], service: str) -> dict[str, str]:
    """The service's row: environment -> what its cell says."""
    row, current = {}, None
    for block in reply["blocks"]:
        if block.get("type") != "section" or not block.get("fields"):
            current = None
            continue
        if "text" in block:  # a service's first section names it; more environments follow in the next ones
            current = block["text"]["text"]
        if current == f"*{service}*":
            for field in block["fields"]:
                head, _, rest = field["text"].partition("\n")
                row[head.strip("*")] = rest
    return row


async def test_a_fresh_install_says_nothing_is_deployed(harness: Harness) -> None:
    reply = await status(harness)
    assert reply["blocks"][0]["text"]["text"] == "Deploy status"
    assert "Nothing deployed yet" in json.dumps(reply["blocks"])
    for service in ("api", "web"):
        assert cells(reply, service) == {"staging": "_nothing deployed_", "production": "_nothing deployed_"}


async def test_the_matrix_shows_live_versions_locks_freezes_and_deploys_in_flight(harness: Harness, clock) -> None:
    harness.mark_succeeded("api", "staging", "2.6.0", user="U0ALICE")
    harness.mark_succeeded("api", "production", "2.6.0", user="U0BOB")
    harness.mark_succeeded("api", "staging", "2.7.0", user="U0ALICE")
    await harness.command("api 2.7.0 production", user="U0DAVE")  # awaits approval: in flight
    in_flight = harness.latest_deploy()
    await harness.command("lock web production payments migration running", user="U0ERIN")

    row = cells(await status(harness), "api")
    staging, production = row["staging"], row["production"]
    assert "`2.7.0` by <@U0ALICE>" in staging and "<!date^" in staging and "{ago}" in staging
    assert "`2.6.0` by <@U0BOB>" in production
    assert f"#{in_flight.id}>" in production and in_flight.permalink in production
    assert "`2.7.0` awaiting approval" in production
    assert ":lock:" not in production and "frozen" not in production
    web = cells(await status(harness), "web")
    assert web["staging"] == "_nothing deployed_"
    assert "locked by <@U0ERIN>" in web["production"] and "“payments migration running”" in web["production"]

    clock.now = datetime(2026, 12, 25, 9, 0, tzinfo=timezone.utc)  # the config's holiday freeze
    reply = await status(harness)
    assert ":snowflake: *production* is frozen until" in json.dumps(reply["blocks"])
    assert "Holiday freeze" in json.dumps(reply["blocks"])
    assert "frozen until" in cells(reply, "api")["production"]
    assert "frozen" not in cells(reply, "api")["staging"]


async def test_a_rollback_is_what_runs_after_it(harness: Harness) -> None:
    assert harness.store is not None
    harness.mark_succeeded("web", "staging", "1.0.0")
    current = harness.mark_succeeded("web", "staging", "1.1.0")
    rollback = harness.store.deploys.create(
        service="web", environment="staging", version="1.0.0", version_prefixed=False, requested_by="U0CAROL",
        previous_version="1.1.0", checklist=[], needs_approval=False, rollback_of=current.id)
    for state in ("deploying", "verifying", "succeeded"):
        harness.store.deploys.transition(rollback.id, allowed_from=(harness.deploy(rollback.id).status,), to=state,
                                         actor=None, action=state)
    harness.store.deploys.transition(current.id, allowed_from=("succeeded",), to="rolled_back", actor="U0CAROL",
                                     action="rolled_back")
    assert "`1.0.0` (rollback) by <@U0CAROL>" in cells(await status(harness), "web")["staging"]


async def test_one_service(harness: Harness) -> None:
    harness.mark_succeeded("web", "staging", "3.0.0")
    reply = await status(harness, "status web")
    assert reply["blocks"][0]["text"]["text"] == "Deploy status: web"
    assert "`3.0.0`" in cells(reply, "web")["staging"]
    assert cells(reply, "api") == {}


async def test_an_unknown_service_is_refused_naming_the_known_ones(harness: Harness) -> None:
    reply = await harness.command("status payments")
    assert "I don't know a service called `payments`" in reply and "`api`, `web`" in reply


async def test_too_many_words_get_the_usage(harness: Harness) -> None:
    assert "Usage: `/deploy status [service]`" in await harness.command("status api production")


SKIPPING = textwrap.dedent(f"""\
    channel: C0DEPLOYS
    environments:
      - name: dev
      - name: staging
      - name: production
    services:
      api:
        deploy:
          command: ["{PYTHON}", "-c", "pass"]
      docs:
        environments: [dev, production]
        deploy:
          command: ["{PYTHON}", "-c", "pass"]
    """)


@pytest.mark.parametrize("config_text", [SKIPPING], ids=["skipping"])
async def test_an_environment_a_service_skips_is_shown_as_such(harness: Harness) -> None:
    row = cells(await status(harness), "docs")
    assert list(row) == ["dev", "staging", "production"]  # ladder order
    assert "not on this service's ladder" in row["staging"]
    assert row["dev"] == row["production"] == "_nothing deployed_"


MANY_ENVIRONMENTS = [f"e{n:02d}" for n in range(12)]
MANY = "channel: C0DEPLOYS\nenvironments:\n" + "".join(f"  - name: {name}\n" for name in MANY_ENVIRONMENTS) + \
    "services:\n" + "".join(f"  svc{n:03d}:\n    deploy:\n      command: [\"{PYTHON}\", \"-c\", \"pass\"]\n"
                            for n in range(120))


@pytest.mark.parametrize("config_text", [MANY], ids=["many"])
async def test_many_services_and_environments_stay_within_block_kit(harness: Harness) -> None:
    for n in range(120):  # every cell filled, with a long lock reason on some
        harness.mark_succeeded(f"svc{n:03d}", "e00", "1.0.0")
    await harness.command("lock svc000 " + "x" * 2900)
    reply = await status(harness)  # checks Block Kit's limits
    assert len(reply["blocks"]) <= 50
    shown = [b for b in reply["blocks"] if b.get("text", {}).get("text", "").startswith("*svc")]
    assert 0 < len(shown) < 120
    footer = reply["blocks"][-1]["elements"][0]["text"]
    assert f"and {120 - len(shown)} more service(s)" in footer and "`/deploy status <service>`" in footer
    # twelve environments need two sections per service (ten fields each)
    row = cells(reply, "svc000")
    assert list(row) == MANY_ENVIRONMENTS
    assert ":lock:" in row["e00"] and len(row["e00"]) < 400  # the long reason is cut short
    one = await status(harness, "status svc119")
    assert "`1.0.0`" in json.dumps(one["blocks"])


WEEKLY = textwrap.dedent(f"""\
    channel: C0DEPLOYS
    environments:
      - name: staging
      - name: production
    freeze:
      - environments: [production]
        weekly: {{from: "Fri 15:00", until: "Mon 09:00"}}
        timezone: UTC
        reason: No deploys over the weekend
    services:
      api:
        deploy:
          command: ["{PYTHON}", "-c", "pass"]
    """)


@pytest.mark.parametrize("config_text", [WEEKLY], ids=["weekly"])
async def test_a_weekly_freeze_shows_the_end_of_this_weeks_window(harness: Harness, clock) -> None:
    clock.now = datetime(2026, 11, 28, 10, 0, tzinfo=timezone.utc)  # a Saturday
    reply = await status(harness)
    text = json.dumps(reply["blocks"], ensure_ascii=False)
    assert "No deploys over the weekend" in text and "2026-11-30 09:00 UTC" in text  # Monday 09:00
    assert "frozen until" in cells(reply, "api")["production"]
    clock.now = datetime(2026, 11, 30, 9, 0, tzinfo=timezone.utc)  # the window has ended
    assert "frozen" not in json.dumps((await status(harness))["blocks"])
