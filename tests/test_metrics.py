"""``GET /metrics``: what a Prometheus scrape of a real Slipway shows after
real requests, deploys, alerts and rate limits (counts and labels, never
timings)."""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import urlencode

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bot.slack.blocks import ACTION_APPROVE
from tests.conftest import Harness, approvals, config_yaml, engine
from tests.test_alerts import ALERTS, AM_TOKEN, am_alert, am_payload, send

Scrape = list[tuple[str, dict[str, str], float]]


async def scrape(harness: Harness) -> Scrape:
    async with aiohttp.ClientSession() as session:
        async with session.get(harness.url + "/metrics") as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            text = await response.text()
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples]


def value(samples: Scrape, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` (0 when none)."""
    return sum(v for n, sample_labels, v in samples if n == name and labels.items() <= sample_labels.items())


def names(samples: Scrape) -> set[str]:
    return {name for name, _, _ in samples}


async def test_a_fresh_slipway_exposes_every_family_at_zero(harness: Harness) -> None:
    samples = await scrape(harness)
    assert {"slipway_slack_ack_seconds_count", "slipway_deploys", "slipway_outbox_depth", "slipway_store_up",
            "slipway_outbox_rate_limited_total"} <= names(samples)
    assert value(samples, "slipway_slack_requests_total") == 0
    assert value(samples, "slipway_store_up") == 1
    # every state of every environment is there from the start, at 0
    assert ("slipway_deploys", {"state": "succeeded", "environment": "production"}, 0) in samples
    assert value(samples, "slipway_outbox_depth", state="pending") == 0


async def test_commands_clicks_and_a_deploy_are_counted(harness: Harness) -> None:
    deploy_id = (await harness.request_and_approve("api", "2.7.0")).id
    assert harness.deploy(deploy_id).status == "succeeded"

    samples = await scrape(harness)
    assert value(samples, "slipway_slack_requests_total", surface="command", outcome="ok") == 1
    assert value(samples, "slipway_slack_requests_total", surface="block_actions", outcome="ok") == 4
    assert value(samples, "slipway_slack_ack_seconds_count", surface="command") == 1
    assert value(samples, "slipway_slack_ack_seconds_count", surface="block_actions") == 4
    assert value(samples, "slipway_executor_duration_seconds_count", kind="command", outcome="succeeded") == 1
    assert value(samples, "slipway_executor_duration_seconds_count", outcome="failed") == 0
    # read from the database at scrape time
    assert value(samples, "slipway_deploys", state="succeeded", environment="production") == 1
    assert value(samples, "slipway_deploys", state="succeeded", environment="staging") == 1
    assert value(samples, "slipway_deploys", state="awaiting_approval") == 0


async def test_a_failed_engine_is_counted_as_failed(harness: Harness) -> None:
    await harness.command("broken 1.0.0 staging")
    samples = await scrape(harness)
    assert value(samples, "slipway_executor_duration_seconds_count", kind="command", outcome="failed") == 1
    assert value(samples, "slipway_deploys", state="failed", environment="staging") == 1


async def test_refused_and_malformed_slack_requests_are_counted_with_their_outcome(harness: Harness) -> None:
    body = harness.slack.command_body("help", "U0DAVE")
    forged = {**harness.slack.signed_headers(body), "X-Slack-Signature": "v0=" + "0" * 64}
    assert (await harness.slack.post(body, forged))[0] == 401
    assert (await harness.slack.post(body, {**forged, "X-Slack-Request-Timestamp": "soon"}))[0] == 401
    assert (await harness.slack.post(urlencode({"payload": "{not json"})))[0] == 400
    await harness.command("help")

    samples = await scrape(harness)
    # an unsigned body is never parsed, not even to label it: both refusals are "other"
    assert value(samples, "slipway_slack_requests_total", surface="command", outcome="unauthorized") == 0
    assert value(samples, "slipway_slack_requests_total", surface="other", outcome="unauthorized") == 2
    assert value(samples, "slipway_slack_requests_total", surface="other", outcome="invalid") == 1
    assert value(samples, "slipway_slack_requests_total", surface="command", outcome="ok") == 1
    assert value(samples, "slipway_slack_ack_seconds_count") == 4


async def test_engine_callbacks_are_counted_by_outcome(harness: Harness) -> None:
    async with aiohttp.ClientSession() as session:
        for path in ("/webhooks/deploys/999", "/webhooks/deploys/nope"):
            async with session.post(harness.url + path, data=b"{}") as response:
                assert response.status == 404
    samples = await scrape(harness)
    assert value(samples, "slipway_webhook_requests_total", door="deploy_report", outcome="not_found") == 2


async def test_scrapes_survive_an_unreadable_database(harness: Harness) -> None:
    await harness.command("help")
    harness.store.close()
    samples = await scrape(harness)
    assert value(samples, "slipway_store_up") == 0
    assert "slipway_deploys" not in names(samples)  # what could not be read is left out, not made up
    assert value(samples, "slipway_slack_requests_total", surface="command") == 1  # the rest is there


# -- alerts ----------------------------------------------------------------------------


@pytest.fixture
def environ() -> dict[str, str]:
    return {"SLIPWAY_ALERTMANAGER_TOKEN": AM_TOKEN}


@pytest.fixture
def config_text() -> str:
    return config_yaml(
        production={"requires": "staging", "approvals": approvals("U0ALICE", "U0BOB", required=2),
                    "checklist": ["Migrations tested on staging", "Rollback plan documented"]},
        services={"api": {"deploy": engine()}, "web": {"deploy": engine()}, "broken": {"deploy": engine("--exit", 3)}},
        alerts={"channel": ALERTS})


async def test_alerts_received_relayed_and_deduplicated_by_source(harness: Harness, clock) -> None:
    firing = am_payload(am_alert(starts=clock.now))
    await send(harness, "/webhooks/alertmanager", firing)
    await send(harness, "/webhooks/alertmanager", firing)  # the HA peer's copy
    await send(harness, "/webhooks/alertmanager", am_payload(am_alert(starts=clock.now, status="resolved")))
    await send(harness, "/webhooks/alertmanager", firing)  # the peer's late "firing": stale
    quiet = am_alert("Quiet", starts=clock.now, value=0.03, baseline=0.02)  # below every threshold
    await send(harness, "/webhooks/alertmanager", am_payload(quiet, group_key="quiet"))
    assert (await send(harness, "/webhooks/alertmanager", firing, token="wrong"))[0] == 401
    assert (await send(harness, "/webhooks/alertmanager", b"{not json"))[0] == 400

    samples = await scrape(harness)
    assert value(samples, "slipway_alerts_received_total", source="alertmanager") == 5
    assert value(samples, "slipway_alerts_relayed_total", source="alertmanager") == 2  # the breach and its resolve
    assert value(samples, "slipway_alerts_deduplicated_total", source="alertmanager", reason="repeat") == 1
    assert value(samples, "slipway_alerts_deduplicated_total", source="alertmanager", reason="stale") == 1
    assert value(samples, "slipway_alerts_received_total", source="grafana") == 0
    assert value(samples, "slipway_webhook_requests_total", door="alertmanager", outcome="ok") == 5
    assert value(samples, "slipway_webhook_requests_total", door="alertmanager", outcome="unauthorized") == 1
    assert value(samples, "slipway_webhook_requests_total", door="alertmanager", outcome="invalid") == 1


async def test_outbox_depth_is_what_waits_to_be_sent(harness: Harness, clock) -> None:
    await harness.slipway.outbox.close()  # nothing is delivered for now
    body = am_payload(am_alert(starts=clock.now))
    async with aiohttp.ClientSession() as session:
        async with session.post(harness.url + "/webhooks/alertmanager", json=body,
                                headers={"Authorization": f"Bearer {AM_TOKEN}"}) as response:
            assert response.status == 200
    assert value(await scrape(harness), "slipway_outbox_depth", state="pending") == 1

    harness.slipway.outbox.start()
    await harness.slipway.outbox.drain(timeout=20)
    samples = await scrape(harness)
    assert value(samples, "slipway_outbox_depth", state="pending") == 0
    assert value(samples, "slipway_outbox_depth", state="failed") == 0


async def test_every_429_is_counted_once_where_it_was_seen(harness: Harness, clock,
                                                           slack_sdk_waits: list[float]) -> None:
    harness.fake.rate_limit_every = 2  # every other call to the fake Slack is answered 429
    harness.fake.retry_after = 0  # the outbox waits it out for real
    for number in range(2):  # two posts in a row through the outbox: one of them meets a 429
        alert = am_alert(f"Alert{number}", starts=clock.now + timedelta(seconds=number))
        await send(harness, "/webhooks/alertmanager", am_payload(alert, group_key=f"g{number}"))
    by_outbox = len([c for c in harness.fake.calls if c.status == 429])
    samples = await scrape(harness)
    assert by_outbox >= 1
    assert value(samples, "slipway_outbox_rate_limited_total") == by_outbox
    assert value(samples, "slipway_slack_api_rate_limited_total") == 0

    # the calls made on the spot, by the app's own client (slack_sdk retries after Retry-After): here the
    # ephemeral answers to refused clicks, every other one of which meets a 429
    await harness.slipway.outbox.wait_quiet()
    harness.fake.rate_limit_methods = {"chat.postEphemeral"}
    harness.mark_succeeded("web", "staging", "1.0.0")
    await harness.command("web 1.0.0 production")
    before = len([c for c in harness.fake.calls if c.status == 429])
    for _ in range(2):  # the requester may not approve their own deploy: refused, told ephemerally
        await harness.click(harness.message_of(harness.latest_deploy()), "U0DAVE", ACTION_APPROVE)
    by_client = [c for c in harness.fake.calls if c.status == 429][before:]
    samples = await scrape(harness)
    assert by_client and {c.method for c in by_client} == {"chat.postEphemeral"}
    assert len(slack_sdk_waits) == len(by_client)  # the outbox's own 429s never reach slack_sdk
    assert value(samples, "slipway_slack_api_rate_limited_total") == len(by_client)
    assert value(samples, "slipway_slack_api_rate_limited_total", method="chat.postEphemeral") == len(by_client)
    by_outbox = len([c for c in harness.fake.calls if c.status == 429]) - len(by_client)
    assert value(samples, "slipway_outbox_rate_limited_total") == by_outbox
