"""Slipway's own metrics, for ``GET /metrics`` (Prometheus text format).

Each Slipway has its own :class:`Metrics` (its own registry, never
prometheus_client's global one: several Slipways share a process in the
tests). Counters and histograms are kept as things happen; what the
database already knows (deploys by state, outbox depth, the stage of each
staged rollout in progress, analysis verdicts) is read at scrape time by :class:`StoreCollector`, with a few indexed queries that give up
quickly when the database is busy: a scrape then reports what it could read
and ``slipway_store_up 0``, and never fails.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any
from urllib.parse import urlparse

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from slack_bolt.request.payload_utils import (
    is_block_actions,
    is_event,
    is_slash_command,
    is_view_submission,
)
from slack_sdk.http_retry.async_handler import AsyncRetryHandler
from slack_sdk.http_retry.request import HttpRequest
from slack_sdk.http_retry.response import HttpResponse
from slack_sdk.http_retry.state import RetryState

from bot.events import AlertsRelayed
from bot.runtime.loop_monitor import LoopMonitor
from store import Store
from store.outbox import FAILED, PENDING, SENDING
from store.status import ACTIVE_STATES, FINISHED_STATES, WAITING_STATES

log = logging.getLogger(__name__)

SURFACES = ("command", "block_actions", "view_submission", "event", "other")
ALERT_SOURCES = ("alertmanager", "grafana", "generic")
# Slack wants an ack within 3 s; ours take milliseconds, so the buckets are
# fine below 100 ms and stop a little past Slack's deadline.
ACK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 3.0, 5.0)
# Engines take seconds to an hour (a command's default timeout is 10 minutes).
EXECUTOR_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600)
# How late the event loop woke a 10 ms sleep: under a millisecond when it is free.
LOOP_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
OUTBOX_STATES = (PENDING, SENDING, FAILED)  # not "sent": that is history, not depth
STORE_BUSY_MS = 250  # how long a scrape or health probe waits for a locked database


def http_outcome(status: int) -> str:
    """A short outcome label for an HTTP answer."""
    return {200: "ok", 400: "invalid", 401: "unauthorized", 404: "not_found", 409: "conflict",
            413: "too_large"}.get(status, "error" if status >= 500 else f"http_{status}")


def surface_of(body: dict[str, Any]) -> str:
    """Which Slack surface a request body (as bolt parsed it) comes from."""
    if is_slash_command(body):
        return "command"
    if is_block_actions(body):
        return "block_actions"
    if is_view_submission(body):
        return "view_submission"
    if is_event(body):
        return "event"
    return "other"


class Metrics:
    """The instruments one Slipway records into, and its registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.slack_requests = Counter(
            "slipway_slack_requests", "Requests Slack sent to /slack/events, by surface and outcome",
            ["surface", "outcome"], registry=r)
        self.slack_ack_seconds = Histogram(
            "slipway_slack_ack_seconds", "From a Slack request's arrival to its response being ready",
            ["surface"], buckets=ACK_BUCKETS, registry=r)
        self.slack_api_rate_limited = Counter(
            "slipway_slack_api_rate_limited", "Slack Web API calls answered 429 (then retried after Retry-After)",
            ["method"], registry=r)
        self.executor_duration = Histogram(
            "slipway_executor_duration_seconds", "How long a deploy engine ran, by engine kind and outcome",
            ["kind", "outcome"], buckets=EXECUTOR_BUCKETS, registry=r)
        self.alerts_received = Counter(
            "slipway_alerts_received", "Alerts in accepted monitor deliveries", ["source"], registry=r)
        self.alerts_relayed = Counter(
            "slipway_alerts_relayed", "Alerts whose change was queued for Slack (a post, an edit, a thread line)",
            ["source"], registry=r)
        self.alerts_deduplicated = Counter(
            "slipway_alerts_deduplicated", "Alerts recognised as a repeat or HA duplicate (repeat) or as a stale "
            "firing of an occurrence already resolved (stale), and not reposted", ["source", "reason"], registry=r)
        self.outbox_rate_limited = Counter(
            "slipway_outbox_rate_limited", "Outbox deliveries Slack answered 429 (waited for, never dropped)",
            registry=r)
        self.webhook_requests = Counter(
            "slipway_webhook_requests", "Requests to the engine-callback and alert webhooks, by door and outcome",
            ["door", "outcome"], registry=r)
        self.event_loop_lag = Histogram(
            "slipway_event_loop_lag_seconds", "How late the event loop woke a task that slept 10 ms: how long "
            "something else held the loop (a Slack ack arriving then waited as long)", buckets=LOOP_LAG_BUCKETS,
            registry=r)
        # started and stopped with the web app (bot/runtime/composition.py)
        self.loop_monitor = LoopMonitor(self.event_loop_lag.observe)
        Gauge("slipway_event_loop_stall_max_seconds", "The longest the event loop was held in the last minute",
              registry=r).set_function(self.loop_monitor.longest_recent)
        for surface in SURFACES:  # a series exists from the start, so rate() sees the first request
            self.slack_ack_seconds.labels(surface)
        for source in ALERT_SOURCES:
            self.alerts_received.labels(source)
            self.alerts_relayed.labels(source)

    def watch_store(self, store: Store, environments: Iterable[str] = ()) -> None:
        """Report deploys by state and outbox depth from ``store`` at each scrape."""
        self.registry.register(StoreCollector(store, tuple(environments)))

    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """The scrape's body and content type, in the format the scraper's
        ``Accept`` header asks for (Prometheus text 0.0.4 by default,
        OpenMetrics when asked)."""
        encode, content_type = choose_encoder(accept or "")
        return encode(self.registry), content_type

    # -- recording ------------------------------------------------------------------

    def observe_slack_request(self, surface: str, status: int, seconds: float) -> None:
        self.slack_requests.labels(surface, http_outcome(status)).inc()
        self.slack_ack_seconds.labels(surface).observe(seconds)

    def count_alerts(self, event: AlertsRelayed) -> None:
        """Count a monitor's delivery: received, relayed, and deduplicated (repeats and stale firings)."""
        self.alerts_received.labels(event.source).inc(event.received)
        self.alerts_relayed.labels(event.source).inc(event.relayed)
        if event.duplicates:
            self.alerts_deduplicated.labels(event.source, "repeat").inc(event.duplicates - event.stale)
            self.alerts_deduplicated.labels(event.source, "stale").inc(event.stale)

    def observe_executor(self, kind: str, outcome: str, seconds: float) -> None:
        self.executor_duration.labels(kind, outcome).observe(seconds)

    def count_webhook(self, door: str, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                      ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """``handler``, counting each answer it gives under ``door``."""
        async def counted(request: web.Request) -> web.StreamResponse:
            try:
                response = await handler(request)
            except web.HTTPException as answer:
                self.webhook_requests.labels(door, http_outcome(answer.status)).inc()
                raise
            except Exception:
                self.webhook_requests.labels(door, "error").inc()
                raise
            self.webhook_requests.labels(door, http_outcome(response.status)).inc()
            return response
        return counted

    def rate_limit_counter(self) -> AsyncRetryHandler:
        """A slack_sdk retry handler that counts 429s and leaves the retry to
        the handlers after it (put it first)."""
        return _RateLimitCounter(self.slack_api_rate_limited)


class _RateLimitCounter(AsyncRetryHandler):
    def __init__(self, counter: Counter) -> None:
        super().__init__(max_retry_count=0)
        self._counter = counter

    async def can_retry_async(self, *, state: RetryState, request: HttpRequest,
                              response: HttpResponse | None = None, error: Exception | None = None) -> bool:
        if response is not None and response.status_code == 429:
            self._counter.labels(urlparse(request.url).path.rsplit("/", 1)[-1] or "unknown").inc()
        return False  # never retries by itself


@contextlib.contextmanager
def impatient(store: Store, busy_ms: int = STORE_BUSY_MS) -> Iterator[None]:
    """Reads that wait at most ``busy_ms`` for a locked database (instead of
    the store's 10 s), so a probe never holds the event loop for long. The
    store's own timeout is back in place before anything else runs."""
    conn = store.db.conn
    previous = conn.execute("PRAGMA busy_timeout").fetchone()[0]
    conn.execute(f"PRAGMA busy_timeout = {int(busy_ms)}")
    try:
        yield
    finally:
        conn.execute(f"PRAGMA busy_timeout = {int(previous)}")


class StoreCollector(Collector):
    """Gauges read from the database at scrape time."""

    def __init__(self, store: Store, environments: tuple[str, ...] = ()) -> None:
        self.store = store
        self.environments = environments

    def describe(self) -> list[Metric]:  # so registering does not query the database
        return [self._deploys({}), self._outbox({}), self._stages([]), self._verdicts({}), self._queues({}),
                self._up(True)]

    def collect(self) -> Iterator[Metric]:
        readable = True
        for query, family in ((self._deploy_counts, self._deploys), (self._outbox_counts, self._outbox),
                              (self._rollout_stages, self._stages), (self._verdict_counts, self._verdicts),
                              (self._queue_depths, self._queues)):
            try:
                with impatient(self.store):
                    counts = query()
            except Exception as exc:  # noqa: BLE001 — a scrape reports what it can, never fails
                log.warning("metrics: cannot read the store: %s", exc)
                readable = False
                continue
            yield family(counts)
        yield self._up(readable)

    def _deploy_counts(self) -> dict[tuple[str, ...], int]:
        return dict(self.store.reads.deploy_counts())

    def _outbox_counts(self) -> dict[tuple[str, ...], int]:
        return {(state,): count for state, count in self.store.outbox.depth(OUTBOX_STATES).items()}

    def _rollout_stages(self) -> list[tuple[list[str], int]]:
        """Each rollout in progress: its labels and the position of its stage under way."""
        found = []
        for rollout in self.store.rollouts.in_progress():
            stage = rollout.current
            if stage is None:
                continue
            deploy = self.store.deploys.get(rollout.deploy_id)
            state = "paused" if rollout.paused and stage.state == "watching" else stage.state
            found.append(([str(deploy.id), deploy.service, deploy.environment, rollout.strategy, stage.label, state],
                          stage.position))
        return found

    def _verdict_counts(self) -> dict[tuple[str, str], int]:
        return self.store.rollouts.verdict_counts()

    def _queue_depths(self) -> dict[tuple[str, str], int]:
        rows = self.store.db.execute("SELECT service, environment, count(*) FROM deploys WHERE status = 'queued' "
                                     "GROUP BY service, environment").fetchall()
        return {(service, environment): count for service, environment, count in rows}

    @staticmethod
    def _queues(depths: dict[tuple[str, str], int]) -> GaugeMetricFamily:
        family = GaugeMetricFamily("slipway_queue_depth", "Requests waiting in line, by service and environment "
                                   "(environments with queue: true), read at scrape", labels=["service", "environment"])
        for (service, environment), depth in sorted(depths.items()):
            family.add_metric([service, environment], depth)
        return family

    @staticmethod
    def _stages(rollouts: list[tuple[list[str], int]]) -> GaugeMetricFamily:
        family = GaugeMetricFamily(
            "slipway_rollout_stage", "The stage each staged rollout in progress is at: its position (1-based), "
            "labelled with its name and state (pending, applying, watching, paused), read at scrape",
            labels=["deploy_id", "service", "environment", "strategy", "stage", "state"])
        for labels, position in rollouts:
            family.add_metric(labels, position)
        return family

    @staticmethod
    def _verdicts(counts: dict[tuple[str, str], int]) -> CounterMetricFamily:
        family = CounterMetricFamily("slipway_analysis_verdicts", "Measurements of rollouts' metric gates, by "
                                     "check and verdict (pass, fail, inconclusive), read at scrape",
                                     labels=["check", "verdict"])
        for (check, verdict), count in sorted(counts.items()):
            family.add_metric([check, verdict], count)
        return family

    def _deploys(self, counts: dict[tuple[str, ...], int]) -> GaugeMetricFamily:
        family = GaugeMetricFamily("slipway_deploys", "Deploy records by state and environment (read at scrape)",
                                   labels=["state", "environment"])
        # every known state is reported, 0 included, so a dashboard's series do not come and go
        known = {(state, env): 0 for state in ACTIVE_STATES + WAITING_STATES + FINISHED_STATES
                 for env in self.environments}
        for (state, env), count in sorted({**known, **counts}.items()):
            family.add_metric([state, env], count)
        return family

    def _outbox(self, counts: dict[tuple[str, ...], int]) -> GaugeMetricFamily:
        family = GaugeMetricFamily("slipway_outbox_depth", "Outbox items waiting (pending), in flight (sending) "
                                   "or given up on (failed), read at scrape", labels=["state"])
        for state in OUTBOX_STATES:
            family.add_metric([state], counts.get((state,), 0))
        return family

    @staticmethod
    def _up(readable: bool) -> GaugeMetricFamily:
        return GaugeMetricFamily("slipway_store_up", "1 when this scrape could read the database, else 0",
                                 value=1 if readable else 0)
