"""Baselines from Prometheus, for alerts that carry a value but no baseline.

A rule's ``baseline_query`` (PromQL with ``{service}``, ``{environment}`` and
``{window}`` filled in) is evaluated through the HTTP API's instant query at
the start of the deploy the alert is tied to, so "normal" means the window
before that deploy; an alert tied to no deploy is compared with the window
before it started. A query that fails, times out or returns nothing leaves
the baseline empty, and the alert is judged by its severity instead: a slow
Prometheus must not hold up the monitor's answer for long.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
from datetime import datetime

import aiohttp

from bot.alerts.model import Alert
from bot.config import Alerts
from store import Store

log = logging.getLogger(__name__)
QUERY_TIMEOUT = 2.0


async def fill_baselines(alerts: list[Alert], settings: Alerts, store: Store,
                         session: aiohttp.ClientSession | None = None) -> list[Alert]:
    """``alerts``, with baselines from Prometheus where one is missing and a
    rule says how to get it."""
    if settings.prometheus_url is None:
        return alerts
    queries = {rule.metric: rule.baseline_query for rule in settings.rules if rule.baseline_query}
    wanted = [a for a in alerts if a.value is not None and a.baseline is None and a.metric in queries
              and a.service and a.environment]
    if not wanted:
        return alerts
    own_session = session is None
    session = session or aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=QUERY_TIMEOUT))
    try:
        # one query per distinct (query, time), all at once, under one deadline
        asks = {}
        for alert in wanted:
            query = queries[alert.metric].replace("{service}", alert.service).replace(
                "{environment}", alert.environment).replace("{window}", f"{int(settings.baseline_window)}s")
            asks[id(alert)] = (query, _evaluation_time(alert, settings, store))
        distinct = list(dict.fromkeys(asks.values()))
        try:
            answers = await asyncio.wait_for(asyncio.gather(
                *(_instant(session, settings.prometheus_url, query, at) for query, at in distinct)), QUERY_TIMEOUT)
        except TimeoutError:
            log.warning("baseline queries took longer than %.0f s; judging without them", QUERY_TIMEOUT)
            return alerts
        baselines = dict(zip(distinct, answers, strict=True))
        return [dataclasses.replace(alert, baseline=baselines[asks[id(alert)]])
                if id(alert) in asks and baselines[asks[id(alert)]] is not None else alert for alert in alerts]
    finally:
        if own_session:
            await session.close()


def _evaluation_time(alert: Alert, settings: Alerts, store: Store) -> datetime | None:
    if alert.starts_at is None:
        return None
    moment = alert.starts_at.isoformat(timespec="milliseconds")
    deploy = store.deploys.behind(alert.service, alert.environment, moment, settings.correlation_window)
    if deploy is not None and deploy.started_at:
        return datetime.fromisoformat(deploy.started_at)
    return alert.starts_at


async def _instant(session: aiohttp.ClientSession, url: str, query: str, at: datetime | None) -> float | None:
    params = {"query": query}
    if at is not None:
        params["time"] = f"{at.timestamp():.3f}"
    try:
        async with session.get(url.rstrip("/") + "/api/v1/query", params=params,
                               timeout=aiohttp.ClientTimeout(total=QUERY_TIMEOUT)) as response:
            body = await response.json(content_type=None)
        result = body["data"]["result"]
        if body.get("status") != "success" or not result:
            log.warning("baseline query %r returned nothing", query)
            return None
        value = float(result[0]["value"][1])
        if not math.isfinite(value) or value < 0:
            # Prometheus answers NaN for 0/0 (no traffic): no baseline, not a
            # number that would make every ratio NaN and the alert quiet
            log.warning("baseline query %r returned %s; ignored", query, value)
            return None
        return value
    except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, IndexError, TypeError) as exc:
        log.warning("baseline query %r failed: %s", query, exc or type(exc).__name__)
        return None
