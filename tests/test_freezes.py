"""Freezes with exceptions: weekly windows and dates in a named time zone
(edges at midnight and across DST), the freeze-override request and the
extra approval it needs, and a freeze that begins after approval."""

from __future__ import annotations

import textwrap
from datetime import date, datetime, timedelta, timezone

import pytest

from bot.config import Freeze
from bot.slack.blocks import ACTION_APPROVE, ACTION_CANCEL
from store import Store, approval_slots
from tests.conftest import WEEKEND_FREEZE, Harness, approvals, config_problems, config_yaml, engine, said

UTC = timezone.utc


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def freeze(**fields) -> Freeze:
    return Freeze.model_validate({"reason": "test", "timezone": "Europe/Berlin", **fields})


# -- when a window covers a moment -----------------------------------------------------

SATURDAY_TO_MONDAY = {"weekly": {"from": "Sat 00:00", "until": "Mon 00:00"}}


@pytest.mark.parametrize(("moment", "covered"), [
    # 2026-03-29: Berlin goes from +01:00 to +02:00; the window starts at CET midnight, ends at CEST midnight
    ("2026-03-27T22:59:59", False), ("2026-03-27T23:00:00", True),
    ("2026-03-29T21:59:59", True), ("2026-03-29T22:00:00", False),
    # 2026-10-25: back from +02:00 to +01:00
    ("2026-10-23T21:59:59", False), ("2026-10-23T22:00:00", True),
    ("2026-10-25T22:59:59", True), ("2026-10-25T23:00:00", False),
    # an ordinary week in winter
    ("2026-11-27T22:59:59", False), ("2026-11-27T23:00:00", True), ("2026-11-29T23:00:00", False),
])
def test_a_weekly_window_starts_and_ends_at_local_midnight_across_dst(moment: str, covered: bool) -> None:
    assert freeze(**SATURDAY_TO_MONDAY).covers("production", at(moment)) is covered


def test_a_window_over_a_dst_change_is_as_long_as_the_clocks_say() -> None:
    spring = freeze(**SATURDAY_TO_MONDAY).window_at("production", at("2026-03-28T12:00:00"))
    autumn = freeze(**SATURDAY_TO_MONDAY).window_at("production", at("2026-10-24T12:00:00"))
    assert spring.until - spring.starts == timedelta(hours=47)
    assert autumn.until - autumn.starts == timedelta(hours=49)
    assert (autumn.starts, autumn.until) == (at("2026-10-23T22:00:00"), at("2026-10-25T23:00:00"))


@pytest.mark.parametrize(("moment", "covered"), [
    # Fri 15:00 to Mon 09:00 wraps the week end
    ("2026-11-27T13:59:59", False), ("2026-11-27T14:00:00", True), ("2026-11-29T12:00:00", True),
    ("2026-11-30T07:59:59", True), ("2026-11-30T08:00:00", False), ("2026-11-25T12:00:00", False),
])
def test_a_weekly_window_may_wrap_the_week_end(moment: str, covered: bool) -> None:
    window = freeze(weekly={"from": "Fri 15:00", "until": "Mon 09:00"})
    assert window.covers("production", at(moment)) is covered


@pytest.mark.parametrize(("moment", "covered"), [
    # 02:30 does not exist on 2026-03-29: the window ends when the clocks jump (01:00 UTC)
    ("2026-03-29T00:59:59", True), ("2026-03-29T01:00:00", False),
    # on 2026-10-25 02:30 happens twice: the window ends at the first, and the repeated hour stays open
    ("2026-10-25T00:29:59", True), ("2026-10-25T00:30:00", False), ("2026-10-25T01:15:00", False),
])
def test_a_boundary_in_the_hour_dst_skips_or_repeats(moment: str, covered: bool) -> None:
    window = freeze(weekly={"from": "Sat 12:00", "until": "Sun 02:30"})
    assert window.covers("production", at(moment)) is covered


@pytest.mark.parametrize(("moment", "covered"), [
    ("2026-03-28T22:59:59", False), ("2026-03-28T23:00:00", True),  # a 23-hour day
    ("2026-03-29T21:59:59", True), ("2026-03-29T22:00:00", False),
    ("2026-10-24T21:59:59", False), ("2026-10-24T22:00:00", True),  # a 25-hour day
    ("2026-10-25T22:59:59", True), ("2026-10-25T23:00:00", False),
])
def test_dates_are_whole_local_days(moment: str, covered: bool) -> None:
    window = freeze(dates=["2026-03-29", "2026-10-25"])
    assert window.covers("production", at(moment)) is covered


def test_consecutive_dates_are_one_window_and_environments_are_respected() -> None:
    window = freeze(dates=["2026-12-24", "2026-12-25", "2026-12-31"], environments=["production"])
    found = window.window_at("production", at("2026-12-24T10:00:00"))
    assert (found.starts, found.until) == (at("2026-12-23T23:00:00"), at("2026-12-25T23:00:00"))
    assert window.window_at("staging", at("2026-12-24T10:00:00")) is None
    assert window.covers("production", at("2026-12-31T12:00:00"))
    assert not window.covers("production", at("2026-12-28T12:00:00"))


# -- validation ------------------------------------------------------------------------

BASE = textwrap.dedent("""\
    channel: C0DEPLOYS
    environments:
      - name: production
    freeze:
      - weekly: {from: "Fri 15:00", until: "Mon 09:00"}
        timezone: Europe/Berlin
        reason: Weekend
    services:
      api: {}
    """)


@pytest.mark.parametrize(("edit", "expected"), [
    (('"Fri 15:00"', '"Fry 15:00"'), "freeze[0].weekly.from (line 5): 'Fry 15:00' is not a time of the week"),
    (('"Mon 09:00"', '"Mon 25:00"'), "freeze[0].weekly.until (line 5): 'Mon 25:00' is not a time of the week"),
    (('"Mon 09:00"', '"Fri 15:00"'), "freeze[0].weekly (line 5): from and until are the same time of the week"),
    (("Europe/Berlin", "Europe/Berln"), "freeze[0].timezone (line 6): 'Europe/Berln' is not a time zone"),
    (("    timezone: Europe/Berlin\n", ""), "freeze[0] (line 5): weekly are read in a named time zone"),
    (("    reason: Weekend",
      '    reason: Weekend\n    from: "2026-12-24T00:00:00Z"\n    until: "2026-12-25T00:00:00Z"'),
     "freeze[0] (line 5): give exactly one of from/until (one window), weekly (a window every week) or dates "
     "(whole days); found from/until and weekly"),
    (('  - weekly: {from: "Fri 15:00", until: "Mon 09:00"}\n    timezone: Europe/Berlin\n',
      '  - from: "2026-12-24T00:00:00Z"\n'), "freeze[0] (line 5): a one-off window needs both from and until"),
    (('  - weekly: {from: "Fri 15:00", until: "Mon 09:00"}\n', "  - dates: [2026-12-24, christmas]\n"),
     "freeze[0].dates[1] (line 5): Input should be a valid date"),
])
def test_freeze_problems_name_their_key_and_line(edit: tuple[str, str], expected: str) -> None:
    text = BASE.replace(*edit)
    assert text != BASE
    found = config_problems(text)
    assert any(p.startswith(expected) for p in found), found


# -- through the bot ------------------------------------------------------------------------

CONFIG = config_yaml(
    environments=[
        {"name": "dev"},
        {"name": "staging", "roles": {"override": ["U0CAROL", "U0ERIN"]}},
        {"name": "production", "requires": "staging", "approvals": approvals("U0ALICE", "U0BOB"),
         "roles": {"override": ["U0CAROL", "@oncall"]}},
    ],
    freeze=[WEEKEND_FREEZE, {"environments": ["dev", "staging"], "dates": [date(2026, 12, 24), date(2026, 12, 25)],
                             "timezone": "Europe/Berlin", "reason": "Holidays"}],
    services={"api": {"deploy": engine()}, "web": {"deploy": engine()}})

FRIDAY_AFTERNOON = at("2026-11-27T15:00:00")  # 16:00 in Berlin


@pytest.fixture
def config_text() -> str:
    return CONFIG


def told(harness: Harness, user: str) -> str:
    return harness.fake.ephemerals_for(user)[-1].text


def sections(harness: Harness, deploy_id: int) -> str:
    message = harness.message_of(deploy_id)
    return "\n".join(b["text"]["text"] for b in message.blocks if b["type"] == "section" and "text" in b)


async def test_the_weekend_freeze_runs_from_friday_15_00_to_monday_09_00_berlin_time(harness: Harness,
                                                                                       clock) -> None:
    harness.mark_succeeded("api", "staging", "2.7.0")
    clock.now = at("2026-11-27T13:59:59")  # 14:59:59 in Berlin
    assert "waiting for approval" in said(await harness.command("api 2.7.0 production"))
    await harness.click(harness.message_of(harness.latest_deploy()), "U0DAVE", ACTION_CANCEL)

    clock.now = at("2026-11-27T14:00:00")
    refused = said(await harness.command("api 2.7.0 production"))
    assert refused.startswith("production is frozen until <!date^") and "|2026-11-30 08:00 UTC>" in refused
    assert "No production deploys over the weekend (every Fri 15:00 to Mon 09:00 (Europe/Berlin))" in refused
    assert '`/deploy api 2.7.0 production --override "why"`' in refused
    clock.now = at("2026-11-30T07:59:59")
    assert "production is frozen" in said(await harness.command("api 2.7.0 production"))
    clock.now = at("2026-11-30T08:00:00")
    assert "waiting for approval" in said(await harness.command("api 2.7.0 production"))


async def test_an_override_needs_the_extra_approval_from_the_override_role(harness: Harness, clock) -> None:
    harness.mark_succeeded("api", "staging", "2.7.0")
    clock.now = FRIDAY_AFTERNOON
    reply = said(await harness.command("api 2.7.0 production --override “fix for INC-42”", user="U0DAVE"))
    assert "waiting for approval" in reply
    deploy = harness.latest_deploy()
    assert deploy.override_reason == "fix for INC-42"
    assert [f["reason"] for f in deploy.overridden_freezes] == ["No production deploys over the weekend"]
    text = sections(harness, deploy.id)
    assert ":snowflake: *Freeze override* — production is frozen: No production deploys over the weekend" in text
    assert "*Reason:* “fix for INC-42”" in text and "*Approvals:* 0 of 2" in text
    assert "*Override approval:* still needed" in text

    await harness.click(harness.message_of(deploy), "U0ALICE", ACTION_APPROVE)
    assert harness.deploy(deploy.id).status == "awaiting_approval"  # the usual approval alone is not enough
    assert "*Approvals:* 1 of 2" in sections(harness, deploy.id)
    await harness.click(harness.message_of(deploy), "U0BOB", ACTION_APPROVE)
    assert told(harness, "U0BOB") == (
        f"#{deploy.id} has the approvals it needs from approvers; what it still needs is the freeze-override "
        "approval, from the `override` role: <@U0CAROL>, <!subteam^SONCALL|@oncall>.")
    await harness.click(harness.message_of(deploy), "U0MALLORY", ACTION_APPROVE)
    assert "`override` role" in told(harness, "U0MALLORY") and "<@U0CAROL>" in told(harness, "U0MALLORY")
    assert harness.deploy(deploy.id).approvers == ["U0ALICE"]

    await harness.click(harness.message_of(deploy), "U0PAGER", ACTION_APPROVE)  # @oncall holds override
    done = harness.deploy(deploy.id)
    assert done.approvers == ["U0ALICE", "U0PAGER"] and done.status == "succeeded"
    assert "*Override approval:* given by <@U0PAGER>" in sections(harness, deploy.id)
    events = harness.store.audit.events(deploy.id)
    overridden = next(e for e in events if e.action == "freeze_overridden")
    assert overridden.actor == "U0DAVE" and overridden.detail["reason"] == "fix for INC-42"
    assert overridden.detail["freezes"][0]["until"] == "2026-11-30T08:00:00+00:00"
    assert [e.detail.get("counts_as") for e in events if e.action == "approval"] == ["approve", "override"]
    assert ("U0BOB", "approve_not_needed") in [(e.actor, e.detail["attempted"]) for e in events if e.action == "refused"]
    shown = said(await harness.command(f"show {deploy.id}"))
    assert "• Freeze override: “fix for INC-42”, inside No production deploys over the weekend" in shown


async def test_without_an_approvals_block_the_override_needs_exactly_that_one_approval(harness: Harness,
                                                                                         clock) -> None:
    clock.now = at("2026-12-24T10:00:00")
    assert "staging is frozen" in said(await harness.command("api 2.7.0 staging"))
    assert "waiting for approval" in said(await harness.command('api 2.7.0 staging --override "cert expires"',
                                                                user="U0CAROL"))
    deploy = harness.latest_deploy()
    assert deploy.status == "awaiting_approval" and deploy.approved_at is None
    await harness.click(harness.message_of(deploy), "U0CAROL", ACTION_APPROVE)  # holds override, but requested it
    assert told(harness, "U0CAROL").startswith(f"You requested #{deploy.id}, so you cannot approve it")
    await harness.click(harness.message_of(deploy), "U0ALICE", ACTION_APPROVE)
    assert told(harness, "U0ALICE") == (f"You may not approve #{deploy.id}: it needs one approval for the freeze "
                                        "override from <@U0CAROL>, <@U0ERIN> (the `override` role).")
    assert harness.deploy(deploy.id).status == "awaiting_approval"
    await harness.click(harness.message_of(deploy), "U0ERIN", ACTION_APPROVE)
    assert harness.deploy(deploy.id).status == "succeeded"


async def test_the_override_role_is_reminded_of_an_override_waiting_for_it(harness: Harness, clock) -> None:
    clock.now = at("2026-12-24T10:00:00")
    await harness.command('api 2.7.0 staging --override "cert expires"', user="U0DAVE")
    deploy = harness.latest_deploy()
    clock.advance(hours=2)  # staging has no approvals block: the default reminder interval
    await harness.slipway.nudges.sweep()
    await harness.settle()
    [reminder] = [c.args["text"] for c in harness.fake.calls_to("chat.postMessage")
                  if c.args.get("thread_ts") == deploy.message_ts and "Reminder" in c.args["text"]]
    assert "needs 1 more approval from <@U0CAROL>, <@U0ERIN>" in reminder


async def test_an_override_nobody_can_approve_is_refused_up_front(harness: Harness, clock) -> None:
    clock.now = at("2026-12-24T10:00:00")
    refused = said(await harness.command('api 2.7.0 dev --override "cert expires"'))
    assert refused.startswith("dev is frozen until") and "nobody holds it" in refused
    assert "`roles.override`" in refused
    assert harness.store.db.execute("SELECT count(*) FROM deploys").fetchone()[0] == 0


async def test_an_override_outside_any_freeze_is_an_ordinary_request(harness: Harness) -> None:
    harness.mark_succeeded("api", "staging", "2.7.0")
    reply = said(await harness.command('api 2.7.0 production --override "just in case"'))
    assert "waiting for approval" in reply and "`--override` was not used" in reply
    deploy = harness.latest_deploy()
    assert deploy.override_reason is None and "Freeze override" not in sections(harness, deploy.id)
    assert [e.detail for e in harness.store.audit.events(deploy.id) if e.action == "override_unused"] == [
        {"reason": "just in case"}]
    await harness.click(harness.message_of(deploy), "U0ALICE", ACTION_APPROVE)
    assert harness.deploy(deploy.id).status == "succeeded"


@pytest.mark.parametrize(("text", "expected"), [
    ('api 2.7.0 production --override "unclosed', "A quote is left open"),
    ("api 2.7.0 production --override", "`--override` needs a reason"),
    ('api 2.7.0 production --override ""', "`--override` needs a reason"),
])
async def test_a_malformed_override_is_a_usage_error(harness: Harness, text: str, expected: str) -> None:
    assert expected in said(await harness.command(text))
    assert harness.store.db.execute("SELECT count(*) FROM deploys").fetchone()[0] == 0


def approved_while_down(store: Store, clock, service: str, version: str, override: dict | None) -> int:
    """A production request approved by Alice (and, for an override, by
    @oncall's Pager) while no Slipway ran to start it."""
    deploy = store.deploys.create(service=service, environment="production", version=version,
                                  version_prefixed=False, requested_by="U0DAVE", previous_version=None,
                                  checklist=[], needs_approval=True, override_reason="fix" if override else None,
                                  override_freeze=[override] if override else None)
    store.deploys.record_approval(deploy.id, "U0ALICE", required=1, counts_as="approve")
    if override:
        store.deploys.record_approval(deploy.id, "U0PAGER", required=1, counts_as="override")
    assert store.deploys.get(deploy.id).status == "approved"
    return deploy.id


async def test_a_freeze_that_began_after_approval_stops_the_deploy_unless_it_was_overridden(
        harness: Harness, clock) -> None:
    for service, version in (("web", "1.1.0"), ("api", "2.7.0"), ("api", "2.9.0")):
        harness.mark_succeeded(service, "staging", version)
    await harness.stop()
    this_weekend = harness.config.freezes_at("production", FRIDAY_AFTERNOON)[0].record()
    last_weekend = harness.config.freezes_at("production", FRIDAY_AFTERNOON - timedelta(days=7))[0].record()
    store = Store.open(harness.db_path, clock=clock)
    clock.now = at("2026-11-27T13:30:00")  # before the freeze
    plain = approved_while_down(store, clock, "web", "1.1.0", None)
    clock.now = FRIDAY_AFTERNOON  # inside it, with an override of this weekend's freeze
    overridden = approved_while_down(store, clock, "api", "2.7.0", this_weekend)
    store.close()
    clock.now = FRIDAY_AFTERNOON + timedelta(hours=1)
    await harness.start()
    await harness.settle()
    stopped = harness.deploy(plain)
    assert stopped.status == "cancelled"
    assert stopped.status_reason.startswith("stopped before it started: production is frozen until")
    assert harness.deploy(overridden).status == "succeeded"

    # an override is for one occurrence of a freeze, not for the next one
    await harness.stop()
    store = Store.open(harness.db_path, clock=clock)
    stale = approved_while_down(store, clock, "api", "2.9.0", last_weekend)
    store.close()
    await harness.start()
    await harness.settle()
    assert harness.deploy(stale).status == "cancelled"
    assert "production is frozen" in harness.deploy(stale).status_reason


@pytest.mark.parametrize(("kinds", "required", "override", "slots"), [
    (["approve"], 1, False, 1),
    (["approve", "approve"], 1, True, 1),  # the approvers' part is full; the override is missing
    (["approve", "override"], 1, True, 2),
    (["both"], 1, True, 1),  # one person counts once
    (["both", "both"], 1, True, 2),
    (["both", "approve"], 2, True, 2),  # Both must be an approver here: two approvers, no override yet
    (["override"], 0, True, 1),
])
def test_approval_slots(kinds: list[str], required: int, override: bool, slots: int) -> None:
    assert approval_slots(kinds, required, override) == slots



async def test_an_override_approval_given_too_long_ago_is_needed_again(harness: Harness, clock) -> None:
    harness.mark_succeeded("api", "staging", "2.7.0")
    clock.now = FRIDAY_AFTERNOON
    await harness.command('api 2.7.0 production --override "fix for INC-42"', user="U0DAVE")
    deploy = harness.latest_deploy()
    await harness.click(harness.message_of(deploy), "U0PAGER", ACTION_APPROVE)
    assert "*Override approval:* given by <@U0PAGER>" in sections(harness, deploy.id)
    clock.advance(hours=9)  # approvals count for 8 h
    await harness.click(harness.message_of(deploy), "U0ALICE", ACTION_APPROVE)
    assert harness.deploy(deploy.id).status == "awaiting_approval"
    text = sections(harness, deploy.id)
    assert "*Override approval:* still needed" in text and "given by" not in text
    await harness.click(harness.message_of(deploy), "U0PAGER", ACTION_APPROVE)
    assert harness.deploy(deploy.id).status == "succeeded"
