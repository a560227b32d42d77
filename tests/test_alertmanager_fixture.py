"""The RealAlertmanager helper itself, end to end: the real Alertmanager
delivers its webhook to a tiny local receiver standing in for Slipway."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web

from tests.alertmanager import (
    AlertmanagerError,
    RealAlertmanager,
    alert,
    ensure_installed,
    parse_time,
)

TOKEN = "am-webhook-token"
PATH = "/webhooks/alertmanager"
ZERO_TIME = "0001-01-01T00:00:00Z"  # endsAt of a firing alert, as notified


class Receiver:
    """Slipway's alert webhook, reduced to recording what arrives."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], dict[str, Any]]] = []
        self._arrived = asyncio.Event()

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post(PATH, self._hook)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}{PATH}"
        return self

    async def _hook(self, request: web.Request) -> web.Response:
        self.received.append((dict(request.headers), json.loads(await request.read())))
        self._arrived.set()
        return web.Response(status=200)

    @property
    def bodies(self) -> list[dict[str, Any]]:
        return [body for _, body in self.received]

    async def wait_for(self, count: int, where: Callable[[dict[str, Any]], bool] = lambda b: True,
                       timeout: float = 10) -> list[dict[str, Any]]:
        """The first ``count`` notifications matching ``where``, once they are in."""
        async def arrived() -> list[dict[str, Any]]:
            while True:
                matching = [body for body in self.bodies if where(body)]
                if len(matching) >= count:
                    return matching[:count]
                self._arrived.clear()
                await self._arrived.wait()
        try:
            return await asyncio.wait_for(arrived(), timeout)
        except TimeoutError:
            raise AssertionError(f"{count} matching notification(s) not received in "
                                 f"{timeout}s; got {json.dumps(self.bodies, indent=1)}") from None


@pytest.fixture
async def receiver() -> Receiver:
    running = await Receiver().start()
    yield running
    await running._runner.cleanup()


def timed(body: dict[str, Any]) -> dict[str, Any]:
    """The notification with its alerts' timestamps parsed (Go trims trailing
    zeros, so "….810Z" is sent back as "….81Z")."""
    return {**body, "alerts": [times(a) for a in body["alerts"]]}


def times(alert_: dict[str, Any]) -> dict[str, Any]:
    return {**alert_, **{key: parse_time(alert_[key])
                         for key in ("startsAt", "endsAt") if key in alert_}}


def firing(body: dict[str, Any]) -> bool:
    return body["status"] == "firing"


def resolved(body: dict[str, Any]) -> bool:
    return body["status"] == "resolved"


async def test_a_firing_alert_and_its_resolution_reach_the_webhook(receiver: Receiver) -> None:
    async with RealAlertmanager(receiver.url, TOKEN) as am:
        # A whole second: Alertmanager sends it back as "…:05Z", not "…:05.000Z".
        whole_second = datetime.now(UTC).replace(microsecond=0)
        pushed = await am.fire("HighErrorRate", service="api", env="production",
                               starts_at=whole_second, labels={"severity": "page"},
                               annotations={"summary": "5xx above 5%", "runbook": "r/1"},
                               generator_url="http://prometheus.test/graph?g0.expr=x")
        [notification] = await receiver.wait_for(1, firing)

        headers, _ = receiver.received[0]
        assert headers["Authorization"] == f"Bearer {TOKEN}"
        assert headers["Content-Type"] == "application/json"
        assert headers["User-Agent"].startswith("Alertmanager/")

        group_key = '{}:{alertname="HighErrorRate", env="production", service="api"}'
        group_labels = {"alertname": "HighErrorRate", "service": "api", "env": "production"}
        [held] = await am.alerts()
        fingerprint = held["fingerprint"]
        assert re.fullmatch(r"[0-9a-f]{16}", fingerprint)
        assert timed(notification) == timed({
            "version": "4",
            "receiver": "slipway",
            "status": "firing",
            "groupKey": group_key,
            "truncatedAlerts": 0,
            "groupLabels": group_labels,
            "commonLabels": pushed["labels"],
            "commonAnnotations": pushed["annotations"],
            "externalURL": am.url,
            "alerts": [{
                "status": "firing",
                "labels": pushed["labels"],
                "annotations": pushed["annotations"],
                "startsAt": pushed["startsAt"],
                "endsAt": ZERO_TIME,
                "generatorURL": pushed["generatorURL"],
                "fingerprint": fingerprint,
            }],
        })

        ended = await am.resolve(pushed["labels"])
        [notification] = await receiver.wait_for(1, resolved)
        assert notification["groupKey"] == group_key
        assert timed(notification)["alerts"] == [times({
            "status": "resolved",
            "labels": pushed["labels"],
            "annotations": pushed["annotations"],
            "startsAt": pushed["startsAt"],
            "endsAt": ended["endsAt"],
            "generatorURL": pushed["generatorURL"],
            "fingerprint": fingerprint,
        })]
        assert all(headers["Authorization"] == f"Bearer {TOKEN}"
                   for headers, _ in receiver.received)
        assert [body["status"] for body in receiver.bodies] == ["firing", "resolved"]


async def test_the_alerts_of_one_push_arrive_in_one_notification(receiver: Receiver) -> None:
    async with RealAlertmanager(receiver.url, TOKEN) as am:
        await am.push([alert("PodCrashLooping", service="api", env="staging",
                             labels={"pod": f"api-{n}"}) for n in range(3)])
        [notification] = await receiver.wait_for(1)
        assert sorted(a["labels"]["pod"] for a in notification["alerts"]) == [
            "api-0", "api-1", "api-2"]
        assert notification["groupLabels"] == {
            "alertname": "PodCrashLooping", "service": "api", "env": "staging"}


async def test_two_unclustered_alertmanagers_deliver_the_same_alert_twice(
        receiver: Receiver) -> None:
    async with RealAlertmanager(receiver.url, TOKEN) as one, \
            RealAlertmanager(receiver.url, TOKEN) as two:
        pushed = alert("HighLatency", service="web", env="production")
        await one.push([pushed])
        await two.push([pushed])
        first, second = await receiver.wait_for(2, firing)
        assert first["groupKey"] == second["groupKey"]
        assert first["alerts"] == second["alerts"]
        assert {first["externalURL"], second["externalURL"]} == {one.url, two.url}


async def test_cluster_members_settle_and_notify(receiver: Receiver) -> None:
    async with RealAlertmanager(receiver.url, TOKEN, cluster_peers=[]) as one, \
            RealAlertmanager(receiver.url, TOKEN, cluster_peers=[one.cluster_address]) as two:
        status = await two.status()
        assert status["cluster"]["status"] == "ready"
        assert len(status["cluster"]["peers"]) == 2
        pushed = alert("DiskFull", service="db", env="production")
        await one.push([pushed])
        await two.push([pushed])
        [notification] = await receiver.wait_for(1, firing)
        assert notification["alerts"][0]["labels"] == pushed["labels"]


async def test_a_config_alertmanager_rejects_fails_start_with_its_log(
        receiver: Receiver) -> None:
    with pytest.raises(AlertmanagerError, match="group_interval cannot be zero"):
        async with RealAlertmanager(receiver.url, TOKEN, group_interval="0s"):
            pass


def test_a_missing_binary_fails_rather_than_skips(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALERTMANAGER_BIN", "/nonexistent/alertmanager")
    with pytest.raises(pytest.fail.Exception,
                       match=r"apt-get install -y prometheus-alertmanager"):
        ensure_installed()
