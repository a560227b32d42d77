"""``/deploy stats``: the four DORA figures from deploy records with known
timestamps (the test clock dates every record), checked exactly."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from bot.deploys.stats import dora, percentile_90
from bot.sandbox.fake_slack import block_kit_problem
from store import Deploy, DeployTimes
from tests.conftest import Clock, Harness

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
T = NOW - timedelta(days=10)
H = timedelta(hours=1)
D = timedelta(days=1)


def record(harness: Harness, clock: Clock, service: str, environment: str, version: str, *, requested: datetime,
           finished: datetime, outcome: str = "succeeded", rollback_of: int | None = None) -> Deploy:
    """A deploy requested and finished at the given moments, through the store's own transitions."""
    assert harness.store is not None
    clock.now = requested
    deploy = harness.store.deploys.create(
        service=service, environment=environment, version=version, version_prefixed=False, requested_by="U0DAVE",
        previous_version=None, checklist=[], needs_approval=False, rollback_of=rollback_of)
    clock.now = finished
    for state in ("deploying", "verifying", outcome):
        deploy = harness.store.deploys.transition(deploy.id, allowed_from=(deploy.status,), to=state, actor=None,
                                                  action=state)
    return deploy


def roll_back(harness: Harness, clock: Clock, undone: Deploy, version: str, *, requested: datetime,
              finished: datetime) -> Deploy:
    """A rollback deploy of ``undone`` that succeeds, marking ``undone`` rolled back (as bot/deploys/runner.py does)."""
    assert harness.store is not None
    rollback = record(harness, clock, undone.service, undone.environment, version, requested=requested,
                      finished=finished, rollback_of=undone.id)
    harness.store.deploys.transition(undone.id, allowed_from=("succeeded",), to="rolled_back", actor="U0DAVE",
                                     action="rolled_back")
    return rollback


def history(harness: Harness, clock: Clock) -> None:
    record(harness, clock, "api", "production", "0.9.0", requested=NOW - 40 * D, finished=NOW - 40 * D + H)
    record(harness, clock, "api", "production", "1.0.0", requested=T, finished=T + H)  # lead 1h
    bad = record(harness, clock, "api", "production", "1.1.0", requested=T + D, finished=T + D + 3 * H)  # lead 3h
    # undone 2h after it went live: a failed change, an outage of 2h, and the rollback is no change
    roll_back(harness, clock, bad, "1.0.0", requested=T + D + 4 * H, finished=T + D + 5 * H)
    # fails; the fix forward succeeds 1h30m later (outage of 1h30m, lead 1h)
    record(harness, clock, "api", "production", "1.2.0", requested=T + 2 * D, finished=T + 2 * D + H / 2,
           outcome="failed")
    record(harness, clock, "api", "production", "1.2.1", requested=T + 2 * D + H, finished=T + 2 * D + 2 * H)
    # cancelled before it ran: not counted anywhere
    assert harness.store is not None
    clock.now = T + 3 * D
    waiting = harness.store.deploys.create(
        service="api", environment="production", version="1.3.0", version_prefixed=False, requested_by="U0DAVE",
        previous_version=None, checklist=[], needs_approval=True)
    harness.store.deploys.transition(waiting.id, allowed_from=("awaiting_approval",), to="cancelled", actor="U0DAVE",
                                     action="cancelled")
    record(harness, clock, "web", "production", "2.0.0", requested=NOW - 7 * D, finished=NOW - 7 * D + H / 2)
    # staging: one failure nobody has fixed yet
    record(harness, clock, "api", "staging", "1.4.0", requested=NOW - 2 * H, finished=NOW - H, outcome="failed")
    clock.now = NOW


async def stats(harness: Harness, text: str) -> dict[str, dict[str, str]]:
    """environment -> figure title -> what it says."""
    assert harness.slack is not None
    code, body = await harness.slack.command(text, "U0DAVE")
    assert code == 200, body
    assert "Working out the deploy stats" in body  # the ack comes first, at once
    await harness.settle()
    reply = harness.fake.responses[-1]  # the figures, through the command's response URL
    assert reply["response_type"] == "ephemeral"
    assert block_kit_problem(reply["blocks"]) is None
    figures: dict[str, dict[str, str]] = {}
    for block in reply["blocks"]:
        if block["type"] == "section" and block.get("fields"):
            figures[block["text"]["text"].strip("*")] = {
                f["text"].split("\n")[0].strip("*").split("*")[0]: f["text"].split("\n", 1)[1] for f in block["fields"]}
    return figures


async def test_the_four_figures_per_environment(harness: Harness, clock: Clock) -> None:
    history(harness, clock)
    figures = await stats(harness, "stats")
    assert list(figures) == ["staging", "production"]
    assert figures["production"] == {
        # 1.0.0, 1.1.0 (went live, later rolled back), 1.2.1 and web 2.0.0: 4 in 30 days
        "Deploy frequency": "0.9 per week (4 in 30 days)",
        # 30m, 1h, 1h, 3h: median 1h, p90 interpolated 1h + 0.7 × 2h = 2h 24m
        "Lead time": "median 1h · p90 2h 24m (4 deploy(s))",
        # 1.1.0 rolled back and 1.2.0 failed, of 5 changes that finished (the rollback is not one)
        "Change failure rate": "40% (2 of 5 failed or rolled back)",
        # 2h (1.1.0 live → rollback succeeded) and 1h 30m (1.2.0 failed → 1.2.1): median 1h 45m
        "Time to restore": "median 1h 45m (2 outage(s))",
    }
    assert figures["staging"] == {
        "Deploy frequency": "no data (no successful deploy in 30 days)",
        "Lead time": "no data",
        "Change failure rate": "100% (1 of 1 failed or rolled back)",
        "Time to restore": "no data; 1 not restored yet",
    }


async def test_the_days_window_leaves_older_deploys_out(harness: Harness, clock: Clock) -> None:
    history(harness, clock)
    production = (await stats(harness, "stats 7"))["production"]
    assert production == {
        "Deploy frequency": "1.0 per week (1 in 7 days)",  # web 2.0.0 only
        "Lead time": "median 30m · p90 30m (1 deploy(s))",
        "Change failure rate": "0% (0 of 1 failed or rolled back)",
        "Time to restore": "no data",
    }
    year = (await stats(harness, "stats api 365"))["production"]
    assert year["Deploy frequency"] == "0.1 per week (4 in 365 days)"  # 0.9.0 counts now; web does not


async def test_a_service_filter_and_its_environments(harness: Harness, clock: Clock) -> None:
    history(harness, clock)
    web = await stats(harness, "stats web")
    assert web["production"]["Deploy frequency"] == "0.2 per week (1 in 30 days)"
    assert web["staging"]["Change failure rate"] == "no data"


async def test_a_fresh_install_has_no_data_anywhere(harness: Harness) -> None:
    for environment in (await stats(harness, "stats")).values():
        assert environment["Lead time"] == environment["Change failure rate"] == "no data"
        assert environment["Time to restore"] == "no data"


@pytest.mark.parametrize(("text", "expected"), [
    ("stats api 0", "`0` is not a number of days from 1 to 365"),
    ("stats 366", "`366` is not a number of days from 1 to 365"),
    ("stats -3", "`-3` is not a number of days"),
    ("stats api soon", "`soon` is not a number of days"),
    ("stats api 30 production", "Usage: `/deploy stats [service] [days]`"),
    ("stats payments", "I don't know a service called `payments`"),
])
async def test_bad_arguments_are_refused_saying_what_to_type(harness: Harness, text: str, expected: str) -> None:
    reply = await harness.command(text)
    assert expected in reply


# -- the computation alone ------------------------------------------------------------------


def times(id: int, status: str, requested: datetime, finished: datetime, *, went_live: datetime | None = None,
          rollback_of: int | None = None, service: str = "api") -> DeployTimes:
    live = went_live or (finished if status == "succeeded" else None)
    return DeployTimes(id, service, "production", status, rollback_of, requested.isoformat(), finished.isoformat(),
                       live.isoformat() if live else None)


def test_failures_before_a_success_are_one_outage_timed_from_the_first() -> None:
    records = [
        times(1, "failed", T, T + H),
        times(2, "failed", T + 2 * H, T + 3 * H),
        times(3, "succeeded", T + 4 * H, T + 5 * H),
    ]
    (production,) = dora(records, ["production"], NOW, 30)
    assert production.restore_times == [4 * 3600.0] and production.unrestored == 0
    assert (production.failures, production.finished, production.deploys) == (2, 3, 1)


def test_a_failed_rollback_keeps_the_outage_open_and_is_no_change() -> None:
    records = [
        times(1, "failed", T, T + H),
        times(2, "failed", T + H, T + 2 * H, rollback_of=1),
        times(3, "succeeded", T + 3 * H, T + 4 * H, rollback_of=1),
    ]
    (production,) = dora(records, ["production"], NOW, 30)
    assert production.restore_times == [3 * 3600.0]
    assert (production.failures, production.finished, production.deploys) == (1, 1, 0)
    assert production.per_day is None and production.lead_times == []


def test_a_rollout_aborted_before_full_traffic_is_a_failed_change_restored_at_the_abort() -> None:
    from dataclasses import replace

    aborted = replace(times(1, "failed", T, T + 2 * H), aborted_from=(T + H).isoformat())  # stage began at T+1h
    records = [aborted, times(2, "succeeded", T + 5 * H, T + 6 * H)]
    (production,) = dora(records, ["production"], NOW, 30)
    assert (production.failures, production.finished) == (1, 2)  # a failed change
    # restored at the abort (the stable version never left), not at the next success
    assert production.restore_times == [3600.0] and production.unrestored == 0


def test_outages_are_per_service() -> None:
    records = [times(1, "failed", T, T + H, service="api"), times(2, "succeeded", T, T + 2 * H, service="web")]
    (production,) = dora(records, ["production"], NOW, 30)
    assert production.restore_times == [] and production.unrestored == 1


def test_p90_of_one_sample_is_that_sample_and_of_none_is_no_data() -> None:
    assert percentile_90([42.0]) == 42.0
    assert percentile_90([]) is None
    assert percentile_90([float(n) for n in range(1, 11)]) == pytest.approx(9.1)
