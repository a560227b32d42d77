"""The App Home tab: published when someone opens it, republished when a
deploy changes state, through signed Events API callbacks and the fake
Slack's ``views.publish``."""

from __future__ import annotations

import json
import logging

from bot.events import DeployChanged
from bot.sandbox.fake_slack import FakeSlack, block_kit_problem
from tests.conftest import Harness


def text_of(view: dict) -> str:
    return json.dumps(view["blocks"], ensure_ascii=False)


def cell(view: dict, service: str, environment: str) -> str:
    """What the matrix shows for ``service`` on ``environment``."""
    row = next(b for b in view["blocks"] if b.get("text", {}).get("text") == f"*{service}*" and "fields" in b)
    return next(f["text"] for f in row["fields"] if f["text"].startswith(f"*{environment}*\n"))


def publishes_for(fake: FakeSlack, user: str) -> int:
    return len([c for c in fake.calls_to("views.publish") if c.args.get("user_id") == user])


async def open_home(harness: Harness, user: str, tab: str = "home") -> None:
    assert harness.slack is not None
    code, _ = await harness.slack.event({"type": "app_home_opened", "user": user, "channel": "D0HOME", "tab": tab})
    assert code == 200


async def test_opening_home_publishes_the_matrix_and_recent_deploys(harness: Harness) -> None:
    live = harness.mark_succeeded("api", "staging", "2.7.0", user="U0ALICE")
    await open_home(harness, "U0DAVE")
    view = await harness.fake.wait_for(lambda fake: fake.home_views.get("U0DAVE"))
    assert view["type"] == "home" and block_kit_problem(view["blocks"], max_blocks=100) is None
    assert view["blocks"][0]["text"]["text"] == "What runs where"
    text = text_of(view)
    assert "*api*" in text and "*web*" in text and "`2.7.0` by <@U0ALICE>" in text
    assert "Recent deploys" in text and f"#{live.id} *api* `2.7.0` → staging: succeeded" in text


async def test_a_deploy_changing_state_republishes_the_tab(harness: Harness) -> None:
    harness.mark_succeeded("api", "staging", "2.7.0")
    await open_home(harness, "U0DAVE")
    await harness.fake.wait_for(lambda fake: fake.home_views.get("U0DAVE"))
    before = publishes_for(harness.fake, "U0DAVE")

    await harness.command("api 2.7.0 production", user="U0ERIN")  # posted: awaiting approval
    deploy = harness.latest_deploy()
    view = await harness.fake.wait_for(
        lambda fake: (v := fake.home_views["U0DAVE"]) and "awaiting approval" in text_of(v) and v)
    assert deploy.permalink in text_of(view) and f"#{deploy.id}>" in text_of(view)
    after_request = publishes_for(harness.fake, "U0DAVE")
    assert after_request > before

    await harness.command("unlock api", user="U0ERIN")  # no deploy changed state: nothing republished
    assert publishes_for(harness.fake, "U0DAVE") == after_request

    await harness.click(harness.message_of(deploy), "U0ERIN", "deploy_cancel")
    view = await harness.fake.wait_for(
        lambda fake: (v := fake.home_views["U0DAVE"]) and "→ production: cancelled" in text_of(v) and v)
    assert "awaiting approval" not in text_of(view)


async def test_placing_and_lifting_a_lock_republishes_the_tab(harness: Harness) -> None:
    await open_home(harness, "U0DAVE")
    opened = await harness.fake.wait_for(lambda fake: fake.home_views.get("U0DAVE"))
    assert ":lock:" not in text_of(opened)
    unlocked = cell(opened, "api", "production")

    await harness.command('lock api production "db maintenance"', user="U0ERIN")
    locked = await harness.fake.wait_for(lambda fake: publishes_for(fake, "U0DAVE") == 2 and fake.home_views["U0DAVE"])
    assert cell(locked, "api", "production") == unlocked + "\n:lock: locked by <@U0ERIN>: “db maintenance”"
    assert text_of(locked).count(":lock:") == 1, "only api on production is locked"

    await harness.command("unlock api production", user="U0ERIN")
    lifted = await harness.fake.wait_for(lambda fake: publishes_for(fake, "U0DAVE") == 3 and fake.home_views["U0DAVE"])
    assert cell(lifted, "api", "production") == unlocked and ":lock:" not in text_of(lifted)


async def test_a_burst_of_changes_publishes_once_per_person(harness: Harness) -> None:
    assert harness.slipway is not None
    await open_home(harness, "U0DAVE")
    await open_home(harness, "U0ERIN")
    await harness.settle()
    before = len(harness.fake.calls_to("views.publish"))
    first = harness.mark_succeeded("api", "staging", "1.0.0")
    second = harness.mark_succeeded("web", "staging", "1.0.0")
    for deploy_id in (first.id, second.id, first.id, second.id):  # four changes in one burst
        harness.slipway.events.publish(DeployChanged(deploy_id))
    await harness.settle()
    assert len(harness.fake.calls_to("views.publish")) - before == 2  # one each
    assert "`1.0.0`" in text_of(harness.fake.home_views["U0ERIN"])


async def test_the_messages_tab_publishes_nothing(harness: Harness) -> None:
    await open_home(harness, "U0DAVE", tab="messages")
    await harness.settle()
    assert harness.fake.calls_to("views.publish") == []
    harness.mark_succeeded("api", "staging", "1.0.0")
    await harness.command("web 1.0.0")  # a deploy runs; nobody has opened Home
    assert harness.fake.calls_to("views.publish") == []


async def test_a_refused_publish_is_logged_and_the_deploy_goes_on(harness: Harness, caplog) -> None:
    assert harness.slipway is not None
    await open_home(harness, "U0BAD")
    await harness.settle()
    deploy = harness.mark_succeeded("api", "staging", "1.0.0")
    harness.fake.token = "xoxb-revoked"  # every Web API call is now refused with invalid_auth
    try:
        with caplog.at_level(logging.ERROR):
            harness.slipway.events.publish(DeployChanged(deploy.id))  # as the runner does on a state change
            await harness.settle()
    finally:
        harness.fake.token = "xoxb-test-token"
    # the publish is a row in the outbox: refused, logged, and retried until it gets through
    assert any("publish of 'home-U0BAD' in U0BAD failed" in r.getMessage() and "invalid_auth" in r.getMessage()
               for r in caplog.records)
    assert "needs no approval" in await harness.command("web 1.0.0")  # the bot keeps serving
    await harness.fake.wait_for(lambda fake: "`1.0.0`" in text_of(fake.home_views["U0BAD"]))
