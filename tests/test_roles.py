"""Roles per environment: who may request, approve, roll back, lock — each
rule with people allowed (by id and through a usergroup) and refused, the
refusal naming the role and who holds it, and recorded in the audit log."""

from __future__ import annotations

import json
import textwrap

import pytest

from bot.slack.blocks import (
    ACTION_APPROVE,
    ACTION_CANCEL,
    ACTION_REJECT,
    ACTION_ROLLBACK,
)
from tests.conftest import ENGINE, PYTHON, Harness, config_problems, said

SRE = "<!subteam^SSRE|@sre>"  # how the fake Slack's @sre is mentioned
ONCALL = "<!subteam^SONCALL|@oncall>"

CONFIG = textwrap.dedent(f"""\
    channel: C0DEPLOYS
    environments:
      - name: staging
        roles:
          lock: [U0ERIN, "@oncall"]
      - name: canary
        requires: staging
        approvals:
          approvers: [U0ALICE, "@sre"]
      - name: production
        requires: staging
        approvals:
          approvers: [U0ALICE, U0BOB]
        roles:
          request: [U0DAVE, "@sre"]
          approve: [U0CAROL, "@sre"]
          rollback: ["@oncall", U0ALICE]
          lock: ["@sre"]
    services:
      api:
        deploy:
          command: ["{PYTHON}", "{ENGINE}"]
    """)


@pytest.fixture
def config_text() -> str:
    return CONFIG


def refusals(harness: Harness, user: str) -> list[dict]:
    return [e.detail for e in harness.store.audit.events() if e.actor == user and e.action == "refused"]


def told(harness: Harness, user: str) -> str:
    return harness.fake.ephemerals_for(user)[-1].text


async def test_request_role_allows_ids_and_group_members_and_refuses_others(harness: Harness) -> None:
    harness.mark_succeeded("api", "staging", "2.7.0")
    refused = said(await harness.command("api 2.7.0 production", user="U0MALLORY"))
    assert refused == ("You may not request deploys of api to production: that takes the `request` role on "
                       f"production, held by <@U0DAVE>, {SRE}.")
    assert refusals(harness, "U0MALLORY") == [{"attempted": "request", "service": "api", "environment": "production"}]
    assert harness.store.db.execute("SELECT count(*) FROM deploys WHERE environment = 'production'").fetchone()[0] == 0

    assert "waiting for approval" in said(await harness.command("api 2.7.0 production", user="U0SRE1"))
    await harness.click(harness.message_of(harness.latest_deploy()), "U0SRE1", ACTION_CANCEL)
    assert "waiting for approval" in said(await harness.command("api 2.7.0 production", user="U0DAVE"))
    # without roles.request, anyone may request
    assert "needs no approval" in said(await harness.command("api 2.8.0 staging", user="U0MALLORY"))


async def test_approve_role_replaces_the_approvers_where_it_is_set(harness: Harness) -> None:
    harness.mark_succeeded("api", "staging", "2.7.0")
    await harness.command("api 2.7.0 production", user="U0DAVE")
    deploy = harness.latest_deploy()
    # Alice is in approvals.approvers, but production's roles.approve does not name her
    await harness.click(harness.message_of(deploy), "U0ALICE", ACTION_APPROVE)
    assert told(harness, "U0ALICE") == ("You are not an approver for production: approving takes the `approve` "
                                        f"role there, held by <@U0CAROL>, {SRE}.")
    await harness.click(harness.message_of(deploy), "U0ALICE", ACTION_REJECT)
    assert f"Only approvers of production can reject: <@U0CAROL>, {SRE}." == told(harness, "U0ALICE")
    assert [d["attempted"] for d in refusals(harness, "U0ALICE")] == ["approve", "reject"]
    assert harness.deploy(deploy.id).approvals == ()

    await harness.click(harness.message_of(deploy), "U0SRE2", ACTION_APPROVE)  # a member of @sre
    assert harness.deploy(deploy.id).approvers == ["U0SRE2"]
    assert harness.deploy(deploy.id).status == "succeeded"


async def test_approve_role_defaults_to_the_approvers(harness: Harness) -> None:
    harness.mark_succeeded("api", "staging", "2.7.0")
    await harness.command("api 2.7.0 canary", user="U0DAVE")
    deploy = harness.latest_deploy()
    await harness.click(harness.message_of(deploy), "U0CAROL", ACTION_APPROVE)
    assert f"held by <@U0ALICE>, {SRE}." in told(harness, "U0CAROL")
    await harness.click(harness.message_of(deploy), "U0SRE1", ACTION_APPROVE)
    assert harness.deploy(deploy.id).approvers == ["U0SRE1"]


async def test_rollback_role_where_set_excludes_even_whoever_deployed(harness: Harness) -> None:
    await harness.ship("api", "2.6.3", "U0CAROL")
    current = (await harness.ship("api", "2.7.0", "U0CAROL")).id
    for outsider in ("U0DAVE", "U0CAROL"):  # who deployed it; who approved it
        await harness.click(harness.message_of(current), outsider, ACTION_ROLLBACK)
        assert told(harness, outsider) == ("You may not roll back api on production: that takes the `rollback` "
                                           f"role on production, held by {ONCALL}, <@U0ALICE>.")
    assert harness.latest_deploy().id == current
    assert [e.detail for e in harness.store.audit.events(current) if e.action == "refused"] == [
        {"attempted": "rollback"}, {"attempted": "rollback"}]
    # /deploy rollback asks the role before it offers anything
    refused = await harness.command("rollback api production", user="U0DAVE")
    assert said(refused).startswith("You may not roll back api on production") and "deploy_rollback" not in refused
    offer = json.loads(await harness.command("rollback api production", user="U0PAGER"))
    assert offer["text"] == "Confirm: api production: 2.7.0 → 2.6.3"

    await harness.click(harness.message_of(current), "U0PAGER", ACTION_ROLLBACK)  # @oncall
    assert harness.latest_deploy().rollback_of == current


async def test_rollback_role_defaults_to_approvers_and_whoever_deployed(harness: Harness) -> None:
    for version in ("2.6.3", "2.7.0"):
        harness.mark_succeeded("api", "staging", version)
        await harness.command(f"api {version} canary", user="U0DAVE")
        await harness.click(harness.message_of(harness.latest_deploy()), "U0ALICE", ACTION_APPROVE)
    current = harness.latest_deploy()
    await harness.click(harness.message_of(current), "U0MALLORY", ACTION_ROLLBACK)
    assert told(harness, "U0MALLORY") == ("You may not roll back api on canary: that takes the `rollback` role on "
                                          f"canary, held by <@U0ALICE>, {SRE}, <@U0DAVE> (who deployed it).")
    await harness.click(harness.message_of(current), "U0SRE2", ACTION_ROLLBACK)
    assert harness.latest_deploy().rollback_of == current.id


async def test_lock_role_per_environment(harness: Harness) -> None:
    refused = said(await harness.command('lock api staging "load test"', user="U0MALLORY"))
    assert refused == ("You may not lock api on staging: that takes the `lock` role on staging, held by <@U0ERIN>, "
                       f"{ONCALL}.")
    assert refusals(harness, "U0MALLORY") == [{"attempted": "lock", "service": "api", "environment": "staging"}]
    assert harness.store.locks.all() == []

    assert ":lock:" in said(await harness.command('lock api staging "load test"', user="U0PAGER"))  # @oncall
    assert said(await harness.command("unlock api staging", user="U0MALLORY")).startswith(
        "You may not unlock api on staging: that takes the `lock` role")
    assert [lock.reason for lock in harness.store.locks.all()] == ["load test"]
    # canary keeps the default: anyone may lock
    assert ":lock:" in said(await harness.command("lock api canary smoke tests flaky", user="U0MALLORY"))
    assert "released" in said(await harness.command("unlock api staging", user="U0ERIN"))
    assert [lock.environment for lock in harness.store.locks.all()] == ["canary"]


async def test_lock_everywhere_needs_the_role_on_each_environment(harness: Harness) -> None:
    refused = said(await harness.command("lock api release freeze", user="U0ERIN"))
    assert refused == ("You may not lock api on every environment: that takes the `lock` role on production, "
                       f"held by {SRE}.")
    assert harness.store.locks.all() == []


@pytest.mark.parametrize(("edit", "expected"), [
    (('    roles:\n      request: [U0DAVE, "@sre"]', '    roles:\n      request: [dave]'),
     "environments[2].roles.request (line 15): not a Slack user id (U…) or usergroup handle (@name): 'dave'"),
    (('      lock: [U0ERIN, "@oncall"]', '      approve: [U0ERIN]'),
     "environments[0].roles.approve (line 5): approving needs an approvals block"),
    (('      lock: ["@sre"]', '      locks: ["@sre"]'), "environments[2].roles.locks (line 18): unknown key"),
])
def test_role_config_problems_name_their_key_and_line(edit: tuple[str, str], expected: str) -> None:
    text = CONFIG.replace(*edit)
    assert text != CONFIG
    found = config_problems(text)
    assert any(p.startswith(expected) for p in found), found
