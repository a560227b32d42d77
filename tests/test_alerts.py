"""Monitors' alerts through Slipway's real webhook doors, judged, tied to
deploys, and delivered to the fake Slack through the outbox."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import aiohttp
import pytest

from bot.slack.blocks import ACTION_APPROVE, ACTION_ROLLBACK
from store import Deploy
from store.intents import AUTO_ROLLBACK
from tests.conftest import Harness, approvals, config_yaml, engine

AM_TOKEN = "am-token"
GRAFANA_SECRET = "grafana-secret"
GENERIC_TOKEN = "generic-token"
ALERTS = "C0ALERTS"


@pytest.fixture
def environ() -> dict[str, str]:
    return {"SLIPWAY_ALERTMANAGER_TOKEN": AM_TOKEN, "SLIPWAY_GRAFANA_SECRET": GRAFANA_SECRET,
            "SLIPWAY_GENERIC_TOKEN": GENERIC_TOKEN}


@pytest.fixture
def auto_rollback() -> bool:
    return False


@pytest.fixture
def config_text(record: Path, auto_rollback: bool) -> str:
    return config_yaml(production={"approvals": approvals("U0ALICE"), "auto_rollback": auto_rollback},
                       services={"api": {"deploy": engine("--record", record)}},
                       alerts={"channel": ALERTS, "oncall": "@oncall", "storm_threshold": 3})


def iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def am_alert(name: str = "HighErrorRate", *, service: str = "api", env: str = "production", status: str = "firing",
             value: float | None = 0.062, baseline: float | None = 0.02, metric: str | None = "error_rate",
             severity: str | None = None, starts: datetime, fingerprint: str | None = None) -> dict:
    labels = {"alertname": name, "service": service, "env": env}
    if severity:
        labels["severity"] = severity
    annotations = {"summary": f"{name} on {service}"}
    if metric:
        annotations["metric"] = metric
    if value is not None:
        annotations["value"] = str(value)
    if baseline is not None:
        annotations["baseline"] = str(baseline)
    ends = "0001-01-01T00:00:00Z" if status == "firing" else iso(starts + timedelta(minutes=5))
    return {"status": status, "labels": labels, "annotations": annotations, "startsAt": iso(starts), "endsAt": ends,
            "generatorURL": "http://prometheus.example/graph?g0.expr=errors",
            "fingerprint": fingerprint or hashlib.sha256(json.dumps(labels, sort_keys=True).encode()).hexdigest()[:16]}


def am_payload(*alerts: dict, group_key: str = '{}:{alertname="HighErrorRate"}') -> dict:
    status = "firing" if any(a["status"] == "firing" for a in alerts) else "resolved"
    return {"version": "4", "groupKey": group_key, "truncatedAlerts": 0, "status": status, "receiver": "slipway",
            "groupLabels": {"alertname": alerts[0]["labels"]["alertname"]}, "commonLabels": {},
            "commonAnnotations": {}, "externalURL": "http://alertmanager.example", "alerts": list(alerts)}


async def send(harness: Harness, path: str, payload: dict | bytes, headers: dict | None = None,
               token: str | None = AM_TOKEN) -> tuple[int, dict]:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    sent = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {}),
            **(headers or {})}
    async with aiohttp.ClientSession() as session:
        async with session.post(harness.url + path, data=body, headers=sent) as response:
            answer = await response.json()
    await harness.slipway.outbox.drain(timeout=20)
    await harness.settle()
    return response.status, answer


def posts(harness: Harness, channel: str, thread_ts: str | None = None) -> list[dict]:
    return [c.args for c in harness.fake.calls_to("chat.postMessage")
            if c.args.get("channel") == channel and c.args.get("thread_ts") == thread_ts]


def text_of(args: dict) -> str:
    return json.dumps(args.get("blocks") or [], ensure_ascii=False) + args.get("text", "")


def alert_count(harness: Harness) -> int:
    return harness.store.db.execute("SELECT count(*) FROM alerts").fetchone()[0]


async def ship(harness: Harness, version: str) -> object:
    await harness.command(f"api {version} production")
    deploy = harness.latest_deploy()
    await harness.click(harness.message_of(deploy), "U0ALICE", ACTION_APPROVE)
    return harness.deploy(deploy.id)


def finished(deploy) -> datetime:
    return datetime.fromisoformat(deploy.finished_at)


# -- the doors ------------------------------------------------------------------------


@pytest.mark.parametrize(("token", "reason"), [(None, "missing or wrong bearer token"),
                                               ("wrong", "missing or wrong bearer token")])
async def test_unauthenticated_alerts_get_401_and_store_nothing(harness: Harness, clock, token, reason) -> None:
    status, answer = await send(harness, "/webhooks/alertmanager", am_payload(am_alert(starts=clock.now)),
                                token=token)
    assert status == 401 and answer["error"] == reason
    assert alert_count(harness) == 0 and posts(harness, ALERTS) == []


@pytest.mark.parametrize(("body", "reason"), [
    (b"{not json", "malformed alertmanager payload: "),
    (json.dumps({"version": "4", "alerts": "nope"}).encode(), "malformed alertmanager payload: "),
])
async def test_malformed_alerts_get_400_with_the_reason_and_store_nothing(harness: Harness, body, reason) -> None:
    status, answer = await send(harness, "/webhooks/alertmanager", body)
    assert status == 400 and answer["error"].startswith(reason) and len(answer["error"]) > len(reason)
    assert alert_count(harness) == 0


async def test_an_oversized_payload_is_refused(harness: Harness) -> None:
    status, answer = await send(harness, "/webhooks/alertmanager", b"x" * (1024 * 1024 + 1))
    assert status == 400 and answer["error"] == "payload larger than 1048576 bytes"


# -- judging and posting ----------------------------------------------------------------


async def test_a_breach_not_tied_to_a_deploy_opens_its_own_thread_with_the_numbers(harness: Harness, clock) -> None:
    status, answer = await send(harness, "/webhooks/alertmanager", am_payload(am_alert(starts=clock.now)))
    assert status == 200 and answer == {"ok": True, "received": 1, "duplicates": 0}
    [post] = posts(harness, ALERTS)
    shown = text_of(post)
    assert "error_rate 0.062 is 3.1× its baseline 0.02" in shown
    assert "notify above 2×, page above 5×" in shown and "Breach" in shown
    assert ACTION_ROLLBACK not in shown  # no deploy to roll back


async def test_an_alert_soon_after_a_deploy_goes_into_its_thread_with_rollback(harness: Harness, clock) -> None:
    await ship(harness, "2.6.3")
    deploy = await ship(harness, "2.7.0")
    starts = finished(deploy) + timedelta(minutes=4)
    await send(harness, "/webhooks/alertmanager", am_payload(am_alert(starts=starts)))
    shown = next(text_of(p) for p in posts(harness, "C0DEPLOYS", thread_ts=deploy.message_ts) if "Breach" in text_of(p))
    assert f"Started 4m after api 2.7.0 reached production (deploy #{deploy.id})" in shown
    assert ACTION_ROLLBACK in shown and f'"{deploy.id}:2.6.3"' in shown
    assert posts(harness, ALERTS) == []


async def test_once_the_deploy_is_rolled_back_its_alert_stops_offering_to_roll_it_back(harness: Harness,
                                                                                       clock) -> None:
    await ship(harness, "2.6.3")
    deploy = await ship(harness, "2.7.0")
    await send(harness, "/webhooks/alertmanager", am_payload(am_alert(starts=finished(deploy) + timedelta(minutes=1))))
    [alert] = [m for m in harness.fake.channel_messages("C0DEPLOYS")
               if m.thread_ts == deploy.message_ts and "Breach" in json.dumps(m.blocks)]
    assert ACTION_ROLLBACK in json.dumps(alert.blocks)

    await harness.click(alert, "U0ALICE", ACTION_ROLLBACK)  # from the alert, as the thread offers
    assert harness.deploy(deploy.id).status == "rolled_back"
    await harness.slipway.outbox.drain(timeout=20)
    shown = json.dumps(alert.blocks)
    assert ACTION_ROLLBACK not in shown and "Breach" in shown  # redrawn in place, the alert itself still shown


async def test_an_alert_outside_the_window_is_not_tied_to_the_deploy(harness: Harness, clock) -> None:
    deploy = await ship(harness, "2.7.0")
    await send(harness, "/webhooks/alertmanager", am_payload(am_alert(starts=finished(deploy) + timedelta(hours=2))))
    assert len(posts(harness, ALERTS)) == 1
    assert not [p for p in posts(harness, "C0DEPLOYS", deploy.message_ts) if "Breach" in text_of(p)]


async def test_repeats_and_ha_duplicates_are_not_reposted(harness: Harness, clock) -> None:
    payload = am_payload(am_alert(starts=clock.now))
    await send(harness, "/webhooks/alertmanager", payload)
    status, answer = await send(harness, "/webhooks/alertmanager", payload)  # the second Alertmanager of an HA pair
    assert answer == {"ok": True, "received": 1, "duplicates": 1}
    await send(harness, "/webhooks/alertmanager", payload)  # a repeat_interval repeat
    assert len(posts(harness, ALERTS)) == 1 and harness.fake.calls_to("chat.update") == []


async def test_a_resolved_alert_updates_the_same_message(harness: Harness, clock) -> None:
    firing = am_alert(starts=clock.now)
    await send(harness, "/webhooks/alertmanager", am_payload(firing))
    [post] = posts(harness, ALERTS)
    await send(harness, "/webhooks/alertmanager", am_payload({**am_alert(starts=clock.now, status="resolved")}))
    [update] = harness.fake.calls_to("chat.update")
    assert "Resolved" in text_of(update.args)
    ts = harness.fake.channel_messages(ALERTS)[0].ts
    assert any("Resolved" in p["text"] for p in posts(harness, ALERTS, thread_ts=ts))


async def test_escalation_edits_in_place_and_pages_the_oncall(harness: Harness, clock) -> None:
    await send(harness, "/webhooks/alertmanager", am_payload(am_alert(starts=clock.now)))
    await send(harness, "/webhooks/alertmanager", am_payload(am_alert(starts=clock.now, value=0.15)))
    assert len(posts(harness, ALERTS)) == 1
    update = harness.fake.calls_to("chat.update")[-1].args
    assert "PAGE" in text_of(update) and "7.5×" in text_of(update)
    # the on-call usergroup is mentioned so Slack notifies it, in a new post (edits notify nobody)
    assert "<!subteam^SONCALL>" in text_of(update)
    ts = harness.fake.channel_messages(ALERTS)[0].ts
    assert any("Paging <!subteam^SONCALL>" in p["text"] for p in posts(harness, ALERTS, thread_ts=ts))


@pytest.mark.parametrize(("value", "baseline"), [(0.004, 0.001), (0.03, 0.02)])
async def test_below_a_floor_or_a_threshold_stays_quiet(harness: Harness, clock, value, baseline) -> None:
    status, _ = await send(harness, "/webhooks/alertmanager",
                           am_payload(am_alert(starts=clock.now, value=value, baseline=baseline)))
    assert status == 200 and alert_count(harness) == 1  # recorded
    assert posts(harness, ALERTS) == []  # but not posted


async def test_an_alert_with_only_a_severity_is_relayed_by_it(harness: Harness, clock) -> None:
    alert = am_alert("InstanceDown", starts=clock.now, value=None, baseline=None, metric=None, severity="critical")
    await send(harness, "/webhooks/alertmanager", am_payload(alert))
    [post] = posts(harness, ALERTS)
    assert "PAGE" in text_of(post) and "relayed by the monitor's severity critical" in text_of(post)


async def test_an_alert_storm_becomes_a_digest(harness: Harness, clock) -> None:
    for number in range(7):
        alert = am_alert(f"Alert{number}", starts=clock.now, severity="warning", value=None, baseline=None,
                         metric=None)
        await send(harness, "/webhooks/alertmanager", am_payload(alert, group_key=f"group-{number}"))
    top = posts(harness, ALERTS)
    assert len(top) == 4  # three threads of their own, then one digest
    assert "more alert(s) for api, see thread" in top[-1]["text"]
    digest_ts = next(m.ts for m in harness.fake.channel_messages(ALERTS) if "Alert storm" in m.text)
    assert len(posts(harness, ALERTS, thread_ts=digest_ts)) == 4
    assert "4 more alert(s) for api" in harness.fake.messages[(ALERTS, digest_ts)].text


async def test_rate_limited_slack_loses_no_alert(harness: Harness, clock) -> None:
    harness.fake.rate_limit_every = 2
    harness.fake.retry_after = 0
    for number in range(3):
        alert = am_alert(f"Alert{number}", starts=clock.now, severity="warning", value=None, baseline=None,
                         metric=None)
        await send(harness, "/webhooks/alertmanager", am_payload(alert, group_key=f"g{number}"))
    assert len(posts(harness, ALERTS)) == 3
    assert [c for c in harness.fake.calls if c.status == 429]


async def test_alerts_pending_at_a_restart_are_delivered_once(harness: Harness, clock) -> None:
    harness.fake.missing_channels.add(ALERTS)  # Slack refuses for now: the messages wait in the outbox
    body = json.dumps(am_payload(am_alert(starts=clock.now))).encode()
    async with aiohttp.ClientSession() as session:
        async with session.post(harness.url + "/webhooks/alertmanager", data=body,
                                headers={"Authorization": f"Bearer {AM_TOKEN}"}) as response:
            assert response.status == 200
    await harness.stop()
    harness.fake.missing_channels.clear()
    await harness.start()
    await harness.slipway.outbox.drain(timeout=20)
    assert len(posts(harness, ALERTS)) == 1


# -- other monitors -----------------------------------------------------------------------


async def test_grafana_alerts_are_checked_by_signature(harness: Harness, clock) -> None:
    payload = {"receiver": "slipway", "status": "firing", "orgId": 1, "version": "1", "groupKey": "{}:{}",
               "truncatedAlerts": 0, "title": "[FIRING:1] LatencyHigh", "state": "alerting", "message": "",
               "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {}, "externalURL": "http://grafana",
               "alerts": [{"status": "firing", "labels": {"alertname": "LatencyHigh", "service": "api",
                                                          "env": "production", "metric": "latency_p95"},
                           "annotations": {"summary": "p95 latency high", "baseline": "0.1"},
                           "startsAt": iso(clock.now), "endsAt": "0001-01-01T00:00:00Z",
                           "generatorURL": "http://grafana/alerting", "fingerprint": "abc123",
                           "silenceURL": "", "dashboardURL": "", "panelURL": "",
                           "values": {"B": 0.42}, "valueString": "[ var='B' value=0.42 ]"}]}
    body = json.dumps(payload).encode()
    bad = {"X-Grafana-Alerting-Signature": "0" * 64}
    assert (await send(harness, "/webhooks/grafana", body, headers=bad, token=None))[0] == 401
    good = {"X-Grafana-Alerting-Signature": hmac.new(GRAFANA_SECRET.encode(), body, hashlib.sha256).hexdigest()}
    status, answer = await send(harness, "/webhooks/grafana", body, headers=good, token=None)
    assert status == 200, answer
    [post] = posts(harness, ALERTS)
    assert "latency_p95 0.42s is 4.2× its baseline 0.1s" in text_of(post) and "Warning" in text_of(post)


async def test_the_generic_door(harness: Harness, clock) -> None:
    alert = {"id": "checkout-errors", "service": "api", "environment": "production", "metric": "error_rate",
             "value": 0.3, "baseline": 0.02, "status": "firing", "summary": "checkout errors"}
    assert (await send(harness, "/webhooks/generic", alert, token="wrong"))[0] == 401
    status, _ = await send(harness, "/webhooks/generic", alert, token=GENERIC_TOKEN)
    assert status == 200
    assert "PAGE" in text_of(posts(harness, ALERTS)[0])
    # without started_at, a repeat is still the same alert, and so is its resolve
    assert (await send(harness, "/webhooks/generic", alert, token=GENERIC_TOKEN))[1]["duplicates"] == 1
    await send(harness, "/webhooks/generic", {**alert, "status": "resolved"}, token=GENERIC_TOKEN)
    assert len(posts(harness, ALERTS)) == 1
    assert "Resolved" in text_of(harness.fake.calls_to("chat.update")[-1].args)


async def page_soon_after(harness: Harness, deploy: Deploy) -> Deploy:
    """A page-level alert a minute after ``deploy`` finished; the latest
    deploy once Slipway has acted on it (the rollback, with auto_rollback)."""
    await send(harness, "/webhooks/alertmanager",
               am_payload(am_alert(starts=finished(deploy) + timedelta(minutes=1), value=0.5)))
    await harness.settle()
    return harness.latest_deploy()


@pytest.mark.parametrize("auto_rollback", [True])
async def test_auto_rollback_on_a_page_tied_to_a_deploy(harness: Harness, clock) -> None:
    await ship(harness, "2.6.3")
    deploy = await ship(harness, "2.7.0")
    rollback = await page_soon_after(harness, deploy)
    assert rollback.rollback_of == deploy.id and rollback.requested_by == "slipway"
    assert rollback.status == "succeeded" and harness.deploy(deploy.id).status == "rolled_back"
    notes = [c.args["text"] for c in harness.fake.calls_to("chat.postMessage")
             if c.args.get("thread_ts") == deploy.message_ts]
    assert any(f"Automatic rollback #{rollback.id}" in n for n in notes)


@pytest.mark.parametrize("auto_rollback", [True])
async def test_an_auto_rollback_decided_before_a_crash_is_carried_out_after_the_restart(
        harness: Harness, clock) -> None:
    """The decision is a row recorded with the alert: a Slipway that dies
    before acting on it leaves it to the next, and Alertmanager's repeat
    (deduplicated) does not have to bring it back."""
    await ship(harness, "2.6.3")
    deploy = await ship(harness, "2.7.0")
    # as if the alert had just been stored and Slipway killed before the rollback started:
    # the intent is there, nothing else happened
    with harness.store.transaction():
        harness.store.intents.add(AUTO_ROLLBACK, deploy.id)
    assert [i.deploy_id for i in harness.store.intents.pending(AUTO_ROLLBACK)] == [deploy.id]
    await harness.restart()
    await harness.settle()
    rollback = harness.latest_deploy()
    assert rollback.rollback_of == deploy.id and rollback.requested_by == "slipway"
    assert rollback.status == "succeeded" and harness.deploy(deploy.id).status == "rolled_back"
    assert harness.store.intents.pending(AUTO_ROLLBACK) == []  # settled with the rollback, carried out once
    await harness.restart()
    await harness.settle()
    assert harness.latest_deploy().id == rollback.id


async def test_a_stale_firing_after_the_resolve_is_ignored(harness: Harness, clock) -> None:
    """An Alertmanager HA peer can deliver its 'firing' after the other's 'resolved'."""
    await send(harness, "/webhooks/alertmanager", am_payload(am_alert(starts=clock.now)))
    await send(harness, "/webhooks/alertmanager", am_payload(am_alert(starts=clock.now, status="resolved")))
    status, answer = await send(harness, "/webhooks/alertmanager", am_payload(am_alert(starts=clock.now)))
    assert answer["duplicates"] == 1
    ts = harness.fake.channel_messages(ALERTS)[0].ts
    assert harness.fake.messages[(ALERTS, ts)].text.startswith("[resolved]")
    # a new occurrence (a new start) opens a new message: the old one, resolved, stays as it was
    await send(harness, "/webhooks/alertmanager", am_payload(am_alert(starts=clock.now + timedelta(minutes=30))))
    assert harness.fake.messages[(ALERTS, ts)].text.startswith("[resolved]")
    assert len(posts(harness, ALERTS)) == 2 and posts(harness, ALERTS)[1]["text"].startswith("[notify]")


async def test_a_thousand_alerts_in_one_group_make_one_message(harness: Harness, clock) -> None:
    alerts = [am_alert(f"Err{n}", starts=clock.now, severity="warning", value=None, baseline=None, metric=None,
                       fingerprint=f"fp{n}") for n in range(1000)]
    status, answer = await send(harness, "/webhooks/alertmanager", am_payload(*alerts, group_key="storm"))
    assert status == 200 and answer["received"] == 1000
    assert harness.store.db.execute("SELECT count(*) FROM alerts").fetchone()[0] == 1000
    # one message for the group (its alerts share the rule key: their severity), not a thousand
    assert len(posts(harness, ALERTS)) <= 3
    again = [dict(a, status="resolved", endsAt=iso(clock.now + timedelta(minutes=1))) for a in alerts]
    await send(harness, "/webhooks/alertmanager", am_payload(*again, group_key="storm"))
    lines = [p for m in harness.fake.channel_messages(ALERTS) for p in posts(harness, ALERTS, thread_ts=m.ts)]
    assert len(lines) <= 3 and any("more change(s)" in line["text"] for line in lines)


async def test_a_new_value_at_the_same_level_edits_the_message(harness: Harness, clock) -> None:
    await send(harness, "/webhooks/alertmanager", am_payload(am_alert(starts=clock.now, value=0.05)))
    await send(harness, "/webhooks/alertmanager", am_payload(am_alert(starts=clock.now, value=0.09)))
    assert "4.5×" in text_of(harness.fake.calls_to("chat.update")[-1].args)


async def test_a_quiet_alert_that_resolves_stays_unposted(harness: Harness, clock) -> None:
    await send(harness, "/webhooks/alertmanager", am_payload(am_alert(starts=clock.now, value=0.004, baseline=0.001)))
    await send(harness, "/webhooks/alertmanager",
               am_payload(am_alert(starts=clock.now, status="resolved", value=None, baseline=None)))
    assert posts(harness, ALERTS) == []


@pytest.mark.parametrize("auto_rollback", [True])
async def test_auto_rollback_never_rolls_back_a_rollback(harness: Harness, clock) -> None:
    await ship(harness, "2.5.0")
    await ship(harness, "2.6.3")
    deploy = await ship(harness, "2.7.0")
    rollback = await page_soon_after(harness, deploy)
    assert rollback.rollback_of == deploy.id and rollback.version == "2.6.3"
    # the trouble goes on after the rollback: it is tied to the rollback, which is not rolled back again
    await send(harness, "/webhooks/alertmanager", am_payload(am_alert(
        "StillFailing", starts=finished(rollback) + timedelta(minutes=2), value=0.5, fingerprint="other")))
    await harness.settle()
    assert harness.latest_deploy().id == rollback.id
    reply = next(p for p in posts(harness, "C0DEPLOYS", rollback.message_ts) if "StillFailing" in p["text"])
    assert ACTION_ROLLBACK not in text_of(reply)


async def test_monitor_text_cannot_ping_the_channel_or_forge_links(harness: Harness, clock) -> None:
    alert = am_alert(starts=clock.now)
    alert["annotations"]["summary"] = "<!channel> see <https://evil.example|Roll back>"
    alert["generatorURL"] = "https://x.example/a|b>c"
    await send(harness, "/webhooks/alertmanager", am_payload(alert))
    shown = text_of(posts(harness, ALERTS)[0])
    assert "<!channel>" not in shown and "&lt;!channel&gt;" in shown
    assert "<https://evil.example|" not in shown and "open in the monitor" not in shown
