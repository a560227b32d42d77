"""Baselines from a (local stand-in for the) Prometheus HTTP API, queried
over the window before the deploy an alert is tied to."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest
from aiohttp import web

from bot.sandbox.fake_server import FakeServer
from tests.conftest import Harness, approvals, config_yaml, engine
from tests.test_alerts import am_alert, am_payload, finished, posts, send, ship, text_of


class FakePrometheus(FakeServer):
    """``GET /api/v1/query`` answering a fixed value, recording each query."""

    def __init__(self) -> None:
        super().__init__()
        self.queries: list[dict[str, str]] = []
        self.value: str | None = "0.01"

    def web_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/api/v1/query", self._query)
        return app

    async def _query(self, request: web.Request) -> web.Response:
        self.queries.append(dict(request.query))
        result = [] if self.value is None else [{"metric": {}, "value": [float(request.query.get("time", 0)),
                                                                         self.value]}]
        return web.json_response({"status": "success", "data": {"resultType": "vector", "result": result}})


@pytest.fixture
async def prometheus() -> FakePrometheus:
    fake = await FakePrometheus().start()
    yield fake
    await fake.stop()


@pytest.fixture
def environ() -> dict[str, str]:
    return {"SLIPWAY_ALERTMANAGER_TOKEN": "am-token"}


@pytest.fixture
def config_text(record: Path, prometheus: FakePrometheus) -> str:
    query = 'avg_over_time(job:error_rate{service="{service}",env="{environment}"}[{window}])'
    return config_yaml(
        production={"approvals": approvals("U0ALICE")},
        services={"api": {"deploy": engine("--record", record)}},
        alerts={"channel": "C0ALERTS", "prometheus_url": prometheus.url, "baseline_window": "30m",
                "rules": [{"metric": "error_rate", "notify_above": 2, "page_above": 5, "min_value": 0.01,
                           "baseline_query": query}]})


async def test_the_baseline_is_the_window_before_the_deploy(harness: Harness, prometheus: FakePrometheus) -> None:
    deploy = await ship(harness, "2.7.0")
    alert = am_alert(starts=finished(deploy) + timedelta(minutes=3), value=0.09, baseline=None)
    await send(harness, "/webhooks/alertmanager", am_payload(alert))
    [query] = prometheus.queries
    assert query["query"] == 'avg_over_time(job:error_rate{service="api",env="production"}[1800s])'
    assert float(query["time"]) == datetime.fromisoformat(deploy.started_at).timestamp()
    shown = text_of(next(p for p in posts(harness, "C0DEPLOYS", deploy.message_ts) if "HighErrorRate" in p["text"]))
    assert "error_rate 0.09 is 9.0× its baseline 0.01" in shown and "PAGE" in shown


async def test_without_a_baseline_from_prometheus_the_severity_decides(harness: Harness, prometheus: FakePrometheus,
                                                                      clock) -> None:
    prometheus.value = None
    await send(harness, "/webhooks/alertmanager",
               am_payload(am_alert(starts=clock.now, value=0.09, baseline=None, severity="warning")))
    shown = text_of(posts(harness, "C0ALERTS")[0])
    assert "no baseline to compare with" in shown and "Warning" in shown


async def test_a_nan_baseline_from_prometheus_is_no_baseline(harness: Harness, prometheus: FakePrometheus,
                                                            clock) -> None:
    prometheus.value = "NaN"  # 0/0: no traffic in the window
    await send(harness, "/webhooks/alertmanager",
               am_payload(am_alert(starts=clock.now, value=0.5, baseline=None, severity="critical")))
    shown = text_of(posts(harness, "C0ALERTS")[0])
    assert "PAGE" in shown and "no baseline to compare with" in shown
