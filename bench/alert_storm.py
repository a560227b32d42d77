#!/usr/bin/env python
"""Alert storm: thousands of Alertmanager alerts through Slipway's webhook,
delivered to a fake Slack through the paced outbox.

Run from the repository root::

    python bench/alert_storm.py [--alerts 10000] [--services 100] [--batch 100] [--interval 1.0]
                                [--concurrency 6] [--probes 40] [--drain-timeout 600] [--tracemalloc]
                                [--json PATH]

It imports Slipway from the checkout it sits in (the repository root is put
first on ``sys.path``), not from wherever the editable install points.

What runs
---------
One process, one event loop: a fake Slack (``bot.sandbox.fake_slack.FakeSlack``,
port 0, every Web API call time-stamped on arrival), a real SQLite file in a
temporary directory, and Slipway's own aiohttp server (``create_web_app``,
port 0) with an ``alerts:`` block (channel ``C0ALERTS``, default rules:
error_rate notify above 2x / page above 5x with a 0.01 floor, latency_p95
warn above 3x with a 0.05 s floor; on-call ``@oncall``) and services
``svc0`` ... ``svcN`` whose deploy engine is ``[true]``. The outbox paces
each channel at one call per ``--interval`` seconds (Slipway's default, 1.0).

Before the storm (unmeasured), every ``--ship-every``-th service (default:
every 10th, so svc0, svc10, ... svc90) is shipped to production over the
real ``/slack/events`` endpoint (``/deploy svcN 1.0.0 production`` then
``2.0.0``; production needs no approval here), so its alerts start within
the correlation window after a succeeded deploy: they are tied to it and go
into the deploy's thread in ``C0DEPLOYS`` (with a Rollback to 1.0.0 button),
the others into ``C0ALERTS``. Also unmeasured, 2 x ``--probes`` deploys
are requested on ``gated`` (two approvals needed) and posted: what the
Approve probes click. The outbox is not paced during this setup (its
interval is set to ``--interval`` before anything is measured), and garbage
is collected and frozen before each measured phase (see ``settle_heap``).

The acks
--------
``/deploy`` and Approve, one request at a time (one every
``--probe-every`` seconds), alternately: ``/deploy probeN 1.0.0 gated`` (an
accepted request: checked, recorded, queued, acked "waiting for approval")
and an Approve click on one of the waiting deploys (the first of two
approvals: recorded and redrawn after the ack). Timed from sending to
reading the ack (signing excluded). First ``--probes`` of each on the idle
Slipway; then ``heldN`` services are deployed to staging with an engine
that runs until the benchmark releases it (five deploys in flight), and the
same probes run alongside the storm's four waves until they end (at most
``--probes`` of each). The ratio storm/idle of p50 and p99 is the figure.

The storm
---------
``--alerts`` distinct alerts (distinct fingerprints) over ``--services``
services, as Alertmanager groups them with ``group_by: [alertname,
service]``: each service's alerts are split into groups of ``--batch``
alerts (one per pod, ``instance`` label), one alertname per group, and
every POST is one group's notification (``version: "4"``, the whole group
as Alertmanager sends it, ``Bearer $SLIPWAY_ALERTMANAGER_TOKEN``). With the
defaults: 100 groups of 100 alerts, one per service.

Each group is of one kind (shuffled over the groups with ``--seed``):

===============  ====  ==================================================================
kind             share alerts in the group (by pod index i % 10)
===============  ====  ==================================================================
HighErrorRate    50%   error_rate, baseline 0.02: 20% 0.005 (below the floor), 40% 0.03
                       (1.5x, quiet), 30% 0.062 (3.1x, notify), 10% 0.15 (7.5x, page)
ErrorRateQuiet   10%   error_rate, baseline 0.02: 0.005 / 0.03 only: every alert quiet
HighLatency      20%   latency_p95, baseline 0.1 s: 30% 0.04 (floor), 40% 0.2 (2x, quiet),
                       30% 0.42 (4.2x, warn)
InstanceDown     10%   no metric, by severity: 80% warning (warn), 20% critical (page)
DiskFillingUp    10%   no metric, by severity: 50% warning (warn), 50% info (info)
===============  ====  ==================================================================

Four waves are sent back to back (each waits for the previous one's
answers; the outbox delivers all along, as it would in a real storm):

1. ``fire``: every group once, every alert firing: the distinct alerts.
2. ``repeat``: 25% of the groups re-sent unchanged (a repeat_interval
   repeat, or the HA peer's copy): every alert in them is a duplicate.
3. ``escalate``: 20% of the groups re-sent with every 4th alert changed
   (value x3; severity info->warning->critical); the rest duplicates.
4. ``resolve``: 30% of the groups re-sent with alerts resolved (all of
   them in half of these groups, every other one in the rest), the group's
   still-firing alerts alongside, as Alertmanager sends them.

Within a wave the groups are sent in a shuffled order with ``--concurrency``
POSTs in flight (closed loop).

What is measured
----------------
* Per POST, the HTTP answer latency (POST sent -> response read).
* How long the event loop was held during ingest: a 10 ms sleep's lateness
  (p50, p99, max), and ``slipway_event_loop_stall_max_seconds`` as
  ``GET /metrics`` reports it right after the waves (its own monitor).
* The store writer thread (``store/writer.py``): its transactions during
  ingest (p50, p99, max: the longest the loop's own writes can wait), and
  how many of the loop's writes waited for their turn, how long.
* The acks above: p50, p99, max on the idle Slipway and during the storm,
  and the ratios.
* Ingest: distinct alerts / wall time of the four waves, and alert
  notifications (every alert in every POST, repeats included) per second.
  Process CPU seconds over the same span.
* Memory: ``tracemalloc`` peak over the storm (ingest + drain; reset just
  before the storm; the whole process: load generator, its prebuilt
  bodies, fake Slack and its call records included), the traced size when the
  storm began, and ``ru_maxrss`` before and after, with ``--tracemalloc``
  only: it slows Python several times over, so the rates, latencies and
  stalls it prints then measure tracemalloc (by default, off: maxrss only).
* The drain: after the last answer, ``Slipway.outbox.drain`` waits until no
  message is pending; its duration.
* Slack calls per channel (``chat.postMessage`` / ``chat.update``, as the
  fake Slack received them): the most in any 1-second sliding window (the
  target is about one per second per channel, so it should be ~1/interval),
  the shortest gap between two calls, the mean rate during the drain and over
  the channel's busy span; 429 answers (only with ``--rate-limit-every``).
* Loss (must be 0): distinct alerts sent - rows in ``alerts``; alerts whose
  stored status/value/severity is not the last one sent; outbox rows not
  ``sent`` at the end; loud alert messages (a message key with any alert
  above "quiet") that Slack never got; messages whose text in the fake
  Slack is not the last text queued for them; POSTs not answered 200; and
  duplicates Slipway reported vs the number the generator expected.
* The machine's load average at the start, after ingest and at the end:
  other processes on the same cores change every figure.

This is a benchmark: it asserts nothing, it prints what it saw.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import hashlib
import io
import itertools
import json
import logging
import math
import os
import pstats
import random
import resource
import shutil
import sqlite3
import sys
import tempfile
import time
import tracemalloc
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from benchlib import checkout, percentile, versions  # noqa: E402  (first: puts this checkout on sys.path)

from bot.config import parse_config
from bot.runtime.composition import (
    SLACK_EVENTS_PATH,
    Slipway,
    create_slipway,
    create_web_app,
)
from bot.runtime.settings import Settings
from bot.sandbox.fake_slack import Call, FakeSlack, Message, SlackSender
from bot.slack.blocks import ACTION_APPROVE
from store import Store

SIGNING_SECRET = "bench-signing-secret"
BOT_TOKEN = "xoxb-bench-token"
AM_TOKEN = "bench-alertmanager-token"
DEPLOY_CHANNEL = "C0DEPLOYS"
ALERT_CHANNEL = "C0ALERTS"
REQUESTER = "U0DAVE"
APPROVER = "U0ALICE"
ENVIRONMENT = "production"
PROBE_ENV = "gated"  # where the /deploy probes request (two approvals needed)
HELD_DEPLOYS = 5  # deploys in flight during the storm
# The engine of the held deploys: runs until the file named in its argv exists.
HOLD = "import os, sys, time\nwhile not os.path.exists(sys.argv[1]):\n    time.sleep(0.05)"
WAVES = ("fire", "repeat", "escalate", "resolve")
SLACK_WRITES = ("chat.postMessage", "chat.update")

# kind -> (alertname, metric, baseline, values or severities by i % 10)
KINDS: dict[str, tuple[str | None, float | None, list[Any]]] = {
    "HighErrorRate": ("error_rate", 0.02, [0.005, 0.005, 0.03, 0.03, 0.03, 0.03, 0.062, 0.062, 0.062, 0.15]),
    "ErrorRateQuiet": ("error_rate", 0.02, [0.005, 0.03] * 5),
    "HighLatency": ("latency_p95", 0.1, [0.04] * 3 + [0.2] * 4 + [0.42] * 3),
    "InstanceDown": (None, None, ["warning"] * 8 + ["critical"] * 2),
    "DiskFillingUp": (None, None, ["warning", "info"] * 5),
}
KIND_SHARES = ["HighErrorRate"] * 5 + ["ErrorRateQuiet", "HighLatency", "HighLatency", "InstanceDown",
                                       "DiskFillingUp"]
LOUDER_SEVERITY = {"info": "warning", "warning": "critical", "critical": "critical"}


def config_text(services: int, engine: list[str], probes: int = 0, held_engine: list[str] | None = None) -> str:
    """The storm's services ``svcN``; ``probes`` services ``probeN`` for the
    acks measured (requested on ``gated``, which needs two approvals), and
    ``heldN`` services whose engine runs until the bench releases it (the
    deploys in flight during the storm)."""
    lines = [
        f"channel: {DEPLOY_CHANNEL}",
        "environments:",
        "  - name: staging",
        f"  - name: {ENVIRONMENT}",  # no approvals: the pre-storm ships run at once
        f"  - name: {PROBE_ENV}",
        "    approvals:",
        "      required: 2",  # an Approve probe gives the first: recorded and redrawn, nothing runs
        f"      approvers: [{APPROVER}, U0BOB]",
        "services:",
    ]
    for i in range(services):
        lines += [f"  svc{i}:", "    deploy:", f"      command: {json.dumps(engine)}"]
    for i in range(probes):
        lines += [f"  probe{i}:", "    deploy:", f"      command: {json.dumps(engine)}"]
    for i in range(HELD_DEPLOYS if held_engine else 0):
        lines += [f"  held{i}:", "    deploy:", f"      command: {json.dumps(held_engine)}"]
    lines += ["alerts:", f"  channel: {ALERT_CHANNEL}", '  oncall: "@oncall"']
    return "\n".join(lines) + "\n"


# -- the fake Slack, time-stamped ----------------------------------------------------------


@dataclass
class Stamp:
    at: float  # time.monotonic() when the fake Slack recorded the call
    method: str
    channel: str | None
    thread: bool
    status: int


def time_outbox_calls(slipway: Slipway) -> list[tuple[float, str, str | None]]:
    """Note when the outbox *starts* each Web API call (before slack_sdk and
    aiohttp run): wraps ``api_call`` on the outbox's own client instance only,
    so the pacing the outbox decides can be told apart from when the calls
    reach Slack (the fake Slack is served by the same event loop)."""
    client = slipway.outbox.client
    original = client.api_call
    started: list[tuple[float, str, str | None]] = []

    async def api_call(api_method: str, **kwargs: Any) -> Any:
        started.append((time.monotonic(), api_method, (kwargs.get("json") or kwargs.get("data") or {}).get("channel")))
        return await original(api_method, **kwargs)

    client.api_call = api_call  # type: ignore[method-assign]
    return started


class TimedFakeSlack(FakeSlack):
    """FakeSlack that notes when each call arrived (monotonic clock)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stamps: list[Stamp] = []

    async def _record(self, call: Call) -> None:
        self.stamps.append(Stamp(time.monotonic(), call.method, call.args.get("channel"),
                                 bool(call.args.get("thread_ts")), call.status))
        await super()._record(call)


# -- the storm ---------------------------------------------------------------------------------


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class AmAlert:
    """One alert (one pod of one group) and what was last sent for it."""

    labels: dict[str, str]
    fingerprint: str
    metric: str | None
    baseline: float | None
    value: float | None
    severity: str | None
    status: str = "firing"
    ends_at: str = "0001-01-01T00:00:00Z"

    def state(self) -> tuple[Any, ...]:
        return (self.status, self.value, self.severity)

    def to_json(self, starts: str) -> dict[str, Any]:
        labels = dict(self.labels)
        if self.severity:
            labels["severity"] = self.severity
        annotations = {"summary": f"{labels['alertname']} on {labels['service']} ({labels['instance']})"}
        if self.metric:
            annotations["metric"] = self.metric
        if self.value is not None:
            annotations["value"] = repr(self.value)
        if self.baseline is not None:
            annotations["baseline"] = repr(self.baseline)
        return {"status": self.status, "labels": labels, "annotations": annotations, "startsAt": starts,
                "endsAt": self.ends_at, "generatorURL": "http://prometheus.example/graph?g0.expr=bench",
                "fingerprint": self.fingerprint}


@dataclass
class Group:
    index: int
    service: str
    alertname: str
    kind: str
    alerts: list[AmAlert]

    @property
    def group_key(self) -> str:
        return f'{{}}:{{alertname="{self.alertname}", service="{self.service}"}}'


@dataclass
class Post:
    wave: str
    group: int
    body: bytes
    alerts: int
    expected_new_or_changed: int


@dataclass
class Answer:
    wave: str
    latency: float
    status: int
    received: int = 0
    duplicates: int = 0
    error: str = ""


class Storm:
    """The groups and the prebuilt POST bodies of every wave."""

    def __init__(self, args: argparse.Namespace, starts: datetime) -> None:
        self.rng = random.Random(args.seed)
        self.starts = iso(starts)
        self.groups: list[Group] = []
        per_service = [args.alerts // args.services + (1 if s < args.alerts % args.services else 0)
                       for s in range(args.services)]
        sizes: list[tuple[int, int, int]] = []  # (service, group number in service, size)
        for s, count in enumerate(per_service):
            chunks = max(1, math.ceil(count / args.batch))
            for j in range(chunks):
                size = min(args.batch, count - j * args.batch)
                if size > 0:
                    sizes.append((s, j, size))
        kinds = [KIND_SHARES[k % len(KIND_SHARES)] for k in range(len(sizes))]
        self.rng.shuffle(kinds)
        for g, ((s, j, size), kind) in enumerate(zip(sizes, kinds)):
            service = f"svc{s}"
            alertname = kind if j == 0 else f"{kind}{j}"  # group_by alertname+service: one name per group
            metric, baseline, cycle = KINDS[kind]
            alerts = []
            for i in range(size):
                labels = {"alertname": alertname, "service": service, "env": ENVIRONMENT,
                          "instance": f"{service}-pod-{j}-{i}"}
                fingerprint = hashlib.sha256(json.dumps(labels, sort_keys=True).encode()).hexdigest()[:16]
                picked = cycle[i % len(cycle)]
                alerts.append(AmAlert(labels, fingerprint, metric, baseline,
                                      value=picked if metric else None, severity=None if metric else picked))
            self.groups.append(Group(g, service, alertname, kind, alerts))
        self.distinct = sum(len(g.alerts) for g in self.groups)
        n = len(self.groups)
        ids = list(range(n))
        self.chosen = {
            "repeat": sorted(self.rng.sample(ids, round(0.25 * n))),
            "escalate": sorted(self.rng.sample(ids, round(0.20 * n))),
            "resolve": sorted(self.rng.sample(ids, round(0.30 * n))),
        }
        self.fully_resolved = set(self.chosen["resolve"][::2])
        self.last_sent: dict[str, tuple[Any, ...]] = {}
        self.waves: dict[str, list[Post]] = {wave: self._wave(wave) for wave in WAVES}

    def _wave(self, wave: str) -> list[Post]:
        chosen = range(len(self.groups)) if wave == "fire" else self.chosen[wave]
        order = list(chosen)
        self.rng.shuffle(order)
        posts = []
        for g in order:
            group = self.groups[g]
            for i, alert in enumerate(group.alerts):
                if wave == "escalate" and i % 4 == 0:
                    if alert.metric:
                        alert.value = round(alert.value * 3, 6)
                    else:
                        alert.severity = LOUDER_SEVERITY[alert.severity]
                if wave == "resolve" and (g in self.fully_resolved or i % 2 == 0):
                    alert.status = "resolved"
                    alert.ends_at = iso(datetime.now(UTC))
            fresh = 0
            for alert in group.alerts:
                if self.last_sent.get(alert.fingerprint) != alert.state():
                    fresh += 1
                self.last_sent[alert.fingerprint] = alert.state()
            items = [a.to_json(self.starts) for a in group.alerts]
            status = "firing" if any(a["status"] == "firing" for a in items) else "resolved"
            payload = {"version": "4", "groupKey": group.group_key, "truncatedAlerts": 0, "status": status,
                       "receiver": "slipway", "groupLabels": {"alertname": group.alertname, "service": group.service},
                       "commonLabels": {"alertname": group.alertname, "service": group.service, "env": ENVIRONMENT},
                       "commonAnnotations": {}, "externalURL": "http://alertmanager.example", "alerts": items}
            posts.append(Post(wave, g, json.dumps(payload).encode(), len(items), fresh))
        return posts

    def final_states(self) -> dict[str, AmAlert]:
        return {a.fingerprint: a for g in self.groups for a in g.alerts}


async def send_wave(session: aiohttp.ClientSession, url: str, posts: list[Post], concurrency: int) -> list[Answer]:
    pending = list(reversed(posts))
    answers: list[Answer] = []
    headers = {"Authorization": f"Bearer {AM_TOKEN}", "Content-Type": "application/json"}

    async def client() -> None:
        while pending:
            post = pending.pop()
            started = time.perf_counter()
            try:
                async with session.post(url, data=post.body, headers=headers) as response:
                    text = await response.text()
                    status = response.status
            except aiohttp.ClientError as exc:
                answers.append(Answer(post.wave, time.perf_counter() - started, 0, error=repr(exc)))
                continue
            answer = Answer(post.wave, time.perf_counter() - started, status)
            try:
                body = json.loads(text)
                answer.received, answer.duplicates = body.get("received", 0), body.get("duplicates", 0)
                if status != 200:
                    answer.error = text[:300]
            except ValueError:
                answer.error = text[:300]
            answers.append(answer)

    await asyncio.gather(*(client() for _ in range(min(concurrency, len(posts)))))
    return answers


# -- the acks measured during the storm ---------------------------------------------------------


class AckProbe:
    """Slack requests sent one at a time, as people would, each timed from
    sending the POST to reading its response (the ack): alternately
    ``/deploy probeN 1.0.0 gated`` (an accepted request: checked, recorded,
    its message queued, acked with "waiting for approval") and an Approve
    click on a deploy awaiting approval on ``gated`` (the first of two
    approvals: recorded and redrawn after the ack, nothing runs). A request
    starts ``every`` seconds after the previous one started, or when it was
    answered if that took longer. Signing is not timed."""

    def __init__(self, url: str, fake: FakeSlack, commands: list[str], targets: list[Message],
                 every: float) -> None:
        self.url = url
        self.sender = SlackSender(url, SIGNING_SECRET, fake)  # builds and signs bodies only
        self.commands = commands  # services never requested yet
        self.targets = targets  # posted messages of deploys awaiting approval, never clicked yet
        self.every = every
        self.refused: list[str] = []

    async def run(self, session: aiohttp.ClientSession, per_surface: int,
                  until: asyncio.Event | None = None) -> dict[str, list[float]]:
        """Up to ``per_surface`` requests of each kind (fewer if ``until`` is
        set first); their ack latencies by surface."""
        latencies: dict[str, list[float]] = {"/deploy": [], "Approve": []}
        for _ in range(per_surface):
            for surface in latencies:
                if until is not None and until.is_set():
                    return latencies
                if surface == "/deploy":
                    body = self.sender.command_body(f"{self.commands.pop(0)} 1.0.0 {PROBE_ENV}", REQUESTER)
                else:
                    body = self.sender.click_body(self.targets.pop(0), APPROVER, ACTION_APPROVE)
                headers = self.sender.signed_headers(body)
                started = time.perf_counter()
                async with session.post(self.url, data=body.encode(), headers=headers) as response:
                    text = await response.text()
                latency = time.perf_counter() - started
                if response.status != 200 or (surface == "/deploy" and "waiting for approval" not in text):
                    self.refused.append(f"{surface}: HTTP {response.status} {text[:160]}")
                else:
                    latencies[surface].append(latency)
                await asyncio.sleep(max(0.0, self.every - latency))
        return latencies


def ack_summary(idle: dict[str, list[float]], storm: dict[str, list[float]]) -> list[dict[str, Any]]:
    rows = []
    for surface in idle:
        a, b = latency_summary(idle[surface]), latency_summary(storm[surface])
        rows.append({"surface": surface, "idle_n": len(idle[surface]), "storm_n": len(storm[surface]),
                     "idle_p50_ms": a["p50_ms"], "idle_p99_ms": a["p99_ms"], "idle_max_ms": a["max_ms"],
                     "storm_p50_ms": b["p50_ms"], "storm_p99_ms": b["p99_ms"], "storm_max_ms": b["max_ms"],
                     "ratio_p50": round(b["p50_ms"] / a["p50_ms"], 2) if a["p50_ms"] and b["p50_ms"] else None,
                     "ratio_p99": round(b["p99_ms"] / a["p99_ms"], 2) if a["p99_ms"] and b["p99_ms"] else None})
    return rows


# -- statistics ----------------------------------------------------------------------------------


def max_in_window(times: list[float], window: float = 1.0) -> int:
    """The most calls in any half-open window [t, t + window) (sliding)."""
    best, j = 0, 0
    for i in range(len(times)):
        while times[i] - times[j] >= window:
            j += 1
        best = max(best, i - j + 1)
    return best


def latency_summary(values: list[float]) -> dict[str, float | None]:
    values = sorted(values)
    ms = lambda s: round(s * 1000, 2)
    if not values:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    return {"p50_ms": ms(percentile(values, 0.5)), "p99_ms": ms(percentile(values, 0.99)), "max_ms": ms(values[-1])}


class LoopLag:
    """How late a 10 ms sleep wakes up: how long the event loop was held by
    something else (a Slack ack waiting on the same loop waits as long)."""

    def __init__(self, tick: float = 0.01) -> None:
        self.tick = tick
        self.lags: list[float] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(self.tick)
            self.lags.append(max(0.0, time.perf_counter() - before - self.tick))

    def stop(self) -> dict[str, Any]:
        if self._task is not None:
            self._task.cancel()
        lags = sorted(self.lags)
        return {"loop_lag_p50_ms": round(percentile(lags, 0.5) * 1000, 1),
                "loop_lag_p99_ms": round(percentile(lags, 0.99) * 1000, 1),
                "loop_lag_max_ms": round(lags[-1] * 1000, 1) if lags else None,
                "loop_blocked_over_1s": sum(1 for lag in lags if lag > 1.0),
                "loop_blocked_over_3s": sum(1 for lag in lags if lag > 3.0)}


class WarningCounter(logging.Handler):
    """Counts Slipway's warnings and errors (and keeps a few)."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.counts: Counter[str] = Counter()
        self.samples: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        key = f"{record.levelname} {record.name}"
        self.counts[key] += 1
        if len(self.samples) < 8:
            self.samples.append(f"{key}: {record.getMessage()[:200]}")


# -- the benchmark --------------------------------------------------------------------------------


@dataclass
class Results:
    setup: dict[str, Any] = field(default_factory=dict)
    waves: list[dict[str, Any]] = field(default_factory=list)
    ingest: dict[str, Any] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)
    drain: dict[str, Any] = field(default_factory=dict)
    channels: list[dict[str, Any]] = field(default_factory=list)
    other_calls: dict[str, int] = field(default_factory=dict)
    loss: dict[str, Any] = field(default_factory=dict)
    stored: dict[str, Any] = field(default_factory=dict)
    acks: list[dict[str, Any]] = field(default_factory=list)
    idle_loop: dict[str, Any] = field(default_factory=dict)  # the loop's lag while the idle acks were measured
    turns: dict[str, Any] = field(default_factory=dict)  # the writer thread's transactions, the loop's waits
    load: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    profile: str = ""
    elapsed: float = 0.0


class Bench:
    def __init__(self, args: argparse.Namespace, warnings: WarningCounter) -> None:
        self.args = args
        self.warnings = warnings
        self.fake: TimedFakeSlack | None = None
        self.store: Store | None = None
        self.slipway: Slipway | None = None
        self.runner: web.AppRunner | None = None
        self.url = ""
        self.results = Results()
        self.outbox_starts: list[tuple[float, str, str | None]] = []
        self.release: Path | None = None  # created when the held deploys may finish
        self.probe: AckProbe | None = None

    async def start(self, workdir: Path) -> None:
        self.fake = await TimedFakeSlack(token=BOT_TOKEN, usergroups={"oncall": ["U0PAGER"]}).start()
        self.fake.rate_limit_every = self.args.rate_limit_every
        self.fake.retry_after = 1
        settings = Settings(bot_token=BOT_TOKEN, signing_secret=SIGNING_SECRET, api_url=self.fake.api_url)
        self.store = Store.open(workdir / "slipway.db")
        engine = [shutil.which("true") or "/bin/true"]
        self.release = workdir / "release"
        held = [sys.executable, "-S", "-c", HOLD, str(self.release)]
        config = parse_config(config_text(self.args.services, engine, 4 * self.args.probes, held))
        self.slipway = create_slipway(config, self.store, settings, environ={"SLIPWAY_ALERTMANAGER_TOKEN": AM_TOKEN},
                                      outbox_interval=self.args.interval)
        self.outbox_starts = time_outbox_calls(self.slipway)
        self.runner = web.AppRunner(create_web_app(self.slipway))
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()  # Slipway's cleanup closes the outbox and its session
        if self.store is not None:
            self.store.close()
        if self.fake is not None:
            await self.fake.stop()

    async def ship(self) -> list[str]:
        """Unmeasured: 1.0.0 then 2.0.0 of every --ship-every-th service to
        production, over the real /slack/events endpoint, run to the end."""
        assert self.fake is not None and self.slipway is not None and self.store is not None
        if self.args.ship_every <= 0:
            return []
        shipped = [f"svc{i}" for i in range(0, self.args.services, self.args.ship_every)]
        async with SlackSender(self.url + SLACK_EVENTS_PATH, SIGNING_SECRET, self.fake) as slack:
            for version in ("1.0.0", "2.0.0"):
                for service in shipped:
                    status, text = await slack.command(f"{service} {version} {ENVIRONMENT}", REQUESTER)
                    if status != 200:
                        self.results.notes.append(f"ship {service} {version}: HTTP {status} {text[:200]}")
                await self.slipway.tasks.wait_idle()
        rows = self.store.db.execute("SELECT service, version, status FROM deploys ORDER BY id").fetchall()
        bad = [r for r in rows if r[2] != "succeeded"]
        if bad:
            self.results.notes.append(f"setup: {len(bad)} pre-storm deploy(s) did not succeed: {bad[:5]}")
        await self.quickly_drained()
        return shipped

    async def quickly_drained(self) -> None:
        """Unmeasured: deliver everything queued without the outbox's pacing
        (set back to --interval before anything is measured)."""
        assert self.slipway is not None
        await self.slipway.tasks.wait_idle()
        paced, self.slipway.outbox.interval = self.slipway.outbox.interval, 0.0
        try:
            await self.slipway.outbox.drain(timeout=120)
        finally:
            self.slipway.outbox.interval = paced
        await self.slipway.tasks.wait_idle()

    @staticmethod
    def settle_heap() -> None:
        """Unmeasured, before each measured phase: collect garbage and freeze
        what survives (as bench/ack_latency.py does), so that no phase pays for
        a full collection of the heap the benchmark itself built (the storm's
        prebuilt bodies, the fake Slack's records of every call). A full
        collection holds the GIL, and so the event loop, for tens of
        milliseconds; Slipway's own garbage is still collected as it comes."""
        gc.collect()
        gc.freeze()

    async def prepare_acks(self) -> None:
        """Unmeasured: 2 x --probes deploys awaiting approval on ``gated``
        (what the Approve probes click), their messages posted."""
        assert self.fake is not None and self.slipway is not None and self.store is not None
        if self.args.probes <= 0:
            return
        services = [f"probe{i}" for i in range(4 * self.args.probes)]
        waiting, fresh = services[:2 * self.args.probes], services[2 * self.args.probes:]
        async with SlackSender(self.url + SLACK_EVENTS_PATH, SIGNING_SECRET, self.fake) as slack:
            for service in waiting:
                status, text = await slack.command(f"{service} 1.0.0 {PROBE_ENV}", REQUESTER)
                if status != 200 or "waiting for approval" not in text:
                    self.results.notes.append(f"setup: {service} not accepted: HTTP {status} {text[:200]}")
        await self.quickly_drained()
        targets = []
        for (deploy_id,) in self.store.db.execute(
                "SELECT id FROM deploys WHERE environment = ? AND status = 'awaiting_approval' ORDER BY id",
                [PROBE_ENV]).fetchall():
            deploy = self.store.deploys.get(deploy_id)
            message = self.fake.messages.get((deploy.channel, deploy.message_ts))
            if message is not None:
                targets.append(message)
        if len(targets) < len(waiting):
            self.results.notes.append(f"setup: only {len(targets)} of {len(waiting)} probe deploys were posted")
        self.probe = AckProbe(self.url + SLACK_EVENTS_PATH, self.fake, fresh, targets, self.args.probe_every)

    async def hold_deploys(self) -> None:
        """Unmeasured: HELD_DEPLOYS deploys on staging whose engine runs until
        released; returns once every one is deploying."""
        assert self.fake is not None and self.store is not None
        async with SlackSender(self.url + SLACK_EVENTS_PATH, SIGNING_SECRET, self.fake) as slack:
            for i in range(HELD_DEPLOYS):
                await slack.command(f"held{i} 1.0.0 staging", REQUESTER)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            running = self.store.db.execute("SELECT count(*) FROM deploys WHERE service LIKE 'held%' "
                                            "AND status = 'deploying'").fetchone()[0]
            if running == HELD_DEPLOYS:
                return
            await asyncio.sleep(0.05)
        self.results.notes.append(f"setup: only {running} of {HELD_DEPLOYS} held deploys were in flight")

    async def run(self) -> None:
        assert self.fake is not None and self.store is not None and self.slipway is not None
        args, res = self.args, self.results
        t_begin = time.perf_counter()
        res.load["at_start"] = os.getloadavg()
        self.slipway.outbox.interval = 0.0  # the setup's messages are not paced (--interval is set back below)
        shipped = await self.ship()
        await self.prepare_acks()
        await self.quickly_drained()
        self.slipway.outbox.interval = args.interval
        idle_acks: dict[str, list[float]] = {"/deploy": [], "Approve": []}
        self.settle_heap()
        if self.probe is not None:  # the idle Slipway: nothing else going on
            async with aiohttp.ClientSession() as session:
                idle_lag = LoopLag()
                idle_lag.start()
                idle_acks = await self.probe.run(session, args.probes)
                res.idle_loop = idle_lag.stop()
            await self.quickly_drained()
            await self.hold_deploys()
        # built in a thread: a second of JSON that would otherwise hold the loop (and show in its stall figures)
        storm = await asyncio.to_thread(Storm, args, datetime.now(UTC))
        res.setup = {
            "services": args.services, "groups": len(storm.groups), "distinct_alerts": storm.distinct,
            "shipped_services": len(shipped), "kinds": dict(Counter(g.kind for g in storm.groups)),
            "posts_per_wave": {w: len(p) for w, p in storm.waves.items()},
            "groups_fully_resolved": len(storm.fully_resolved),
            "body_bytes": sum(len(p.body) for posts in storm.waves.values() for p in posts),
        }
        print(f"setup: {len(shipped)} services shipped, {len(storm.groups)} groups / {storm.distinct} alerts "
              f"built in {time.perf_counter() - t_begin:.1f}s", file=sys.stderr, flush=True)

        self.settle_heap()
        maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if tracemalloc.is_tracing():
            traced_start, _ = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
        storm_t0 = time.monotonic()
        calls_before = len(self.fake.stamps)
        profiler = cProfile.Profile() if args.profile else None

        connector = aiohttp.TCPConnector(limit=args.concurrency)
        answers: list[Answer] = []
        storm_over = asyncio.Event()
        async with aiohttp.ClientSession(connector=connector) as session, aiohttp.ClientSession() as probing:
            lags_before = (await self._scrape_loop(session))[1]
            lag = LoopLag()
            lag.start()
            turns = self._turn_marks()
            cpu0, wall0 = time.process_time(), time.perf_counter()
            acks = asyncio.create_task(self.probe.run(probing, args.probes, until=storm_over)) if self.probe else None
            if profiler:
                profiler.enable()
            for wave in WAVES:
                posts = storm.waves[wave]
                w0 = time.perf_counter()
                got = await send_wave(session, self.url + "/webhooks/alertmanager", posts, args.concurrency)
                wall = time.perf_counter() - w0
                answers += got
                ok = [a for a in got if a.status == 200]
                lat = latency_summary([a.latency for a in ok])
                notifications = sum(p.alerts for p in posts)
                expected_dups = sum(p.alerts - p.expected_new_or_changed for p in posts)
                res.waves.append({
                    "wave": wave, "posts": len(posts), "alerts_in_posts": notifications,
                    "new_or_changed_sent": sum(p.expected_new_or_changed for p in posts),
                    "duplicates_expected": expected_dups,
                    "duplicates_reported": sum(a.duplicates for a in ok),
                    "received_reported": sum(a.received for a in ok),
                    "errors": len(got) - len(ok), "wall_s": round(wall, 3),
                    "alerts_per_s": round(notifications / wall, 1) if wall else None, **lat,
                    "outbox_pending_after": self.store.outbox.pending_count(),
                })
                print(f"wave {wave}: {len(posts)} POSTs, {notifications} alerts in {wall:.2f}s "
                      f"(p99 {lat['p99_ms']} ms), outbox pending {self.store.outbox.pending_count()}",
                      file=sys.stderr, flush=True)
            if profiler:
                profiler.disable()
            ingest_wall, ingest_cpu = time.perf_counter() - wall0, time.process_time() - cpu0
            lags = lag.stop()
            res.turns = self._turns_since(turns)
            storm_over.set()
            storm_acks = await acks if acks is not None else {"/deploy": [], "Approve": []}
            metrics_stall, lags_after = await self._scrape_loop(session)
        if self.release is not None:
            self.release.touch()  # the held deploys may finish now
        res.load["after_ingest"] = os.getloadavg()
        if self.probe is not None:
            res.acks = ack_summary(idle_acks, storm_acks)
            if self.probe.refused:
                res.notes.append(f"{len(self.probe.refused)} probe request(s) not accepted, e.g. "
                                 f"{self.probe.refused[0]}")
        errors = [a for a in answers if a.status != 200]
        notifications = sum(p.alerts for posts in storm.waves.values() for p in posts)
        res.ingest = {
            "posts": len(answers), "non_200": len(errors), "wall_s": round(ingest_wall, 3),
            "cpu_s": round(ingest_cpu, 3),
            "distinct_alerts_per_s": round(storm.distinct / ingest_wall, 1),
            "alert_notifications": notifications,
            "notifications_per_s": round(notifications / ingest_wall, 1),
            "posts_per_s": round(len(answers) / ingest_wall, 1),
            **latency_summary([a.latency for a in answers if a.status == 200]), **lags,
            "metrics_stall_max_ms": metrics_stall,
            # what slipway_event_loop_lag_seconds counted during the waves, by bucket
            "metrics_lags_over_ms": {f"{bound * 1000:g}": lags_after[-1][1] - lags_before[-1][1]
                                     - (dict(lags_after)[bound] - dict(lags_before).get(bound, 0))
                                     for bound, _ in lags_after if bound in (0.025, 0.05, 0.1)}
            if lags_before and lags_after else {},
        }
        if errors:
            res.notes.append(f"{len(errors)} POST(s) not answered 200, e.g. {errors[0].status} {errors[0].error}")
        if profiler:
            out = io.StringIO()
            stats = pstats.Stats(profiler, stream=out)
            stats.sort_stats("tottime").print_stats(25)
            stats.sort_stats("cumulative").print_stats(30)
            res.profile = out.getvalue()

        # The drain: everything the storm queued, delivered at the outbox's pace.
        drain_t0 = time.monotonic()
        pending_at_start = self.store.outbox.pending_count()
        progress = asyncio.create_task(self._progress(drain_t0))
        timed_out = False
        try:
            await self.slipway.outbox.drain(timeout=args.drain_timeout)
        except TimeoutError:
            timed_out = True
            res.notes.append(f"the outbox did not drain within --drain-timeout {args.drain_timeout:g}s")
        finally:
            progress.cancel()
        await self.slipway.tasks.wait_idle()
        drain_t1 = time.monotonic()
        res.drain = {"pending_at_start": pending_at_start, "seconds": round(drain_t1 - drain_t0, 2),
                     "timed_out": timed_out, "pending_at_end": self.store.outbox.pending_count(),
                     "storm_to_drained_s": round(drain_t1 - storm_t0, 2)}

        if tracemalloc.is_tracing():
            traced_end, peak = tracemalloc.get_traced_memory()
            res.memory = {"tracemalloc": True, "traced_at_storm_start_mb": round(traced_start / 2**20, 1),
                          "traced_peak_mb": round(peak / 2**20, 1),
                          "peak_over_start_mb": round((peak - traced_start) / 2**20, 1),
                          "traced_at_end_mb": round(traced_end / 2**20, 1)}
        else:
            res.memory = {"tracemalloc": False}
        res.memory["maxrss_before_storm_mb"] = round(maxrss_before / 1024, 1)
        res.memory["maxrss_end_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)

        self._channels(self.fake.stamps[calls_before:], drain_t0, drain_t1,
                       [o for o in self.outbox_starts if o[0] >= storm_t0])
        self._loss(storm, answers)
        res.load["at_end"] = os.getloadavg()
        res.elapsed = time.perf_counter() - t_begin

    def _turn_marks(self) -> tuple[int, int] | None:
        # (getattr: the same bench measures checkouts from before the writer, for the baseline)
        turn = getattr(getattr(self.slipway.alert_relay, "writer", None), "turn", None)
        return (turn.writer_holds.count, turn.loop_waits.count) if turn is not None else None

    def _turns_since(self, marks: tuple[int, int] | None) -> dict[str, Any]:
        """The writer thread's transactions during the storm, and the waits
        of the loop's connection for its turn to write (store/writer.py)."""
        if marks is None:
            return {}
        turn = self.slipway.alert_relay.writer.turn  # type: ignore[union-attr]
        holds = sorted(list(turn.writer_holds.recent)[-(turn.writer_holds.count - marks[0]):]
                       if turn.writer_holds.count > marks[0] else [])
        waits = sorted(list(turn.loop_waits.recent)[-(turn.loop_waits.count - marks[1]):]
                       if turn.loop_waits.count > marks[1] else [])
        def ms(seconds: float) -> float:
            return round(seconds * 1000, 1)
        return {"writer_transactions": len(holds), "writer_p50_ms": ms(percentile(holds, 0.5)) if holds else None,
                "writer_p99_ms": ms(percentile(holds, 0.99)) if holds else None,
                "writer_max_ms": ms(holds[-1]) if holds else None,
                "loop_writes": len(waits), "loop_waited": sum(1 for w in waits if w > 0),
                "loop_wait_p99_ms": ms(percentile(waits, 0.99)) if waits else None,
                "loop_wait_total_ms": ms(sum(waits)),
                "loop_wait_max_ms": ms(waits[-1]) if waits else None}

    async def _scrape_loop(self, session: aiohttp.ClientSession) -> tuple[float | None, list[tuple[float, float]]]:
        """From GET /metrics: ``slipway_event_loop_stall_max_seconds`` (ms; the
        last minute's, so it also sees the unmeasured setup just before) and
        the cumulative buckets of ``slipway_event_loop_lag_seconds``
        ((upper bound, count), +Inf last; empty before issue 11)."""
        async with session.get(self.url + "/metrics") as response:
            text = await response.text()
        stall, buckets = None, []
        for line in text.splitlines():
            if line.startswith("slipway_event_loop_stall_max_seconds "):
                stall = round(float(line.split()[1]) * 1000, 1)
            elif line.startswith("slipway_event_loop_lag_seconds_bucket{"):
                bound = line.split('le="', 1)[1].split('"', 1)[0]
                buckets.append((math.inf if bound == "+Inf" else float(bound), float(line.rsplit(" ", 1)[1])))
        return stall, sorted(buckets)

    async def _progress(self, t0: float) -> None:
        assert self.store is not None
        while True:
            await asyncio.sleep(15)
            print(f"  draining: {self.store.outbox.pending_count()} pending after {time.monotonic() - t0:.0f}s",
                  file=sys.stderr, flush=True)

    def _channels(self, stamps: list[Stamp], drain_t0: float, drain_t1: float,
                  outbox_starts: list[tuple[float, str, str | None]]) -> None:
        res = self.results
        started: dict[str, list[float]] = defaultdict(list)
        for at, method, channel in outbox_starts:
            if method in SLACK_WRITES and channel:
                started[channel].append(at)
        by_channel: dict[str, list[Stamp]] = defaultdict(list)
        other: Counter[str] = Counter()
        for stamp in stamps:
            if stamp.method in SLACK_WRITES and stamp.channel:
                by_channel[stamp.channel].append(stamp)
            else:
                other[f"{stamp.method} ({stamp.status})"] += 1
        res.other_calls = dict(other)
        drain_span = max(drain_t1 - drain_t0, 1e-9)
        for channel in sorted(by_channel):
            calls = by_channel[channel]
            times = sorted(s.at for s in calls)
            gaps = [b - a for a, b in itertools.pairwise(times)]
            busy = times[-1] - times[0]
            in_drain = sum(1 for t in times if drain_t0 <= t <= drain_t1)
            sent = sorted(started[channel])
            res.channels.append({
                "channel": channel, "calls": len(calls),
                "posts": sum(1 for s in calls if s.method == "chat.postMessage" and not s.thread),
                "replies": sum(1 for s in calls if s.method == "chat.postMessage" and s.thread),
                "updates": sum(1 for s in calls if s.method == "chat.update"),
                "status_429": sum(1 for s in calls if s.status == 429),
                "other_errors": sum(1 for s in calls if s.status not in (200, 429)),
                "max_per_1s_window": max_in_window(times),
                "min_gap_s": round(min(gaps), 3) if gaps else None,
                "gaps_under_interval": sum(1 for g in gaps if g < self.args.interval * 0.99),
                "outbox_max_per_1s_window": max_in_window(sent),
                "outbox_min_gap_s": round(min(b - a for a, b in itertools.pairwise(sent)), 3)
                if len(sent) > 1 else None,
                "mean_per_s_drain": round(in_drain / drain_span, 3),
                "mean_per_s_busy": round((len(times) - 1) / busy, 3) if busy > 0 else None,
                "busy_s": round(busy, 1),
            })

    def _loss(self, storm: Storm, answers: list[Answer]) -> None:
        assert self.store is not None and self.fake is not None
        res, db = self.results, self.store.db
        stored_count = db.execute("SELECT count(*) FROM alerts").fetchone()[0]
        want = storm.final_states()
        mismatched = []
        for fingerprint, status, value, severity in db.execute(
                "SELECT fingerprint, status, value, severity FROM alerts WHERE source = 'alertmanager'"):
            alert = want.get(fingerprint)
            if alert is None:
                continue
            if (status, value, severity) != (alert.status, alert.value, alert.severity):
                mismatched.append((fingerprint, (status, value, severity), alert.state()))
        stored_fps = {row[0] for row in db.execute("SELECT fingerprint FROM alerts")}
        missing = [fp for fp in want if fp not in stored_fps]
        outbox_states = dict(db.execute("SELECT state, count(*) FROM outbox GROUP BY state").fetchall())
        unsent = db.execute("SELECT message_key, op, state, attempts, last_error FROM outbox WHERE state != 'sent' "
                            "ORDER BY id LIMIT 5").fetchall()
        loud_keys = [r[0] for r in db.execute(
            "SELECT DISTINCT message_key FROM alerts WHERE level != 'quiet' AND message_key IS NOT NULL")]
        known = {r[0]: (r[1], r[2]) for r in db.execute("SELECT key, channel, ts FROM slack_messages")}
        never_posted = [k for k in loud_keys if k not in known]
        # What Slack shows now vs the last text queued for each alert message the outbox posted
        # (a deploy's message and its DMs are drawn from the deploy when sent: their queued text is not it).
        last_text = {}
        for key, text in db.execute(
                "SELECT message_key, text FROM outbox WHERE id IN (SELECT max(id) FROM outbox "
                "WHERE state = 'sent' AND (message_key LIKE 'alert-%' OR message_key LIKE 'digest-%') "
                "GROUP BY message_key)"):
            last_text[key] = text
        stale = []
        for key, text in last_text.items():
            where = known.get(key)
            message = self.fake.messages.get(where) if where else None
            if message is None or message.text != text:
                stale.append(key)
        expected_dups = sum(w["duplicates_expected"] for w in res.waves)
        reported_dups = sum(w["duplicates_reported"] for w in res.waves)
        lost_in_posts = sum(a.received == 0 for a in answers if a.status != 200)
        res.loss = {
            "alerts_sent_distinct": storm.distinct,
            "alerts_stored": stored_count,
            "alerts_lost": storm.distinct - stored_count,
            "fingerprints_missing": len(missing),
            "alerts_not_in_last_sent_state": len(mismatched),
            "outbox_not_sent": sum(v for k, v in outbox_states.items() if k != "sent"),
            "outbox_by_state": outbox_states,
            "loud_messages": len(loud_keys),
            "loud_messages_never_posted": len(never_posted),
            "messages_not_showing_last_text": len(stale),
            "posts_not_200": lost_in_posts,
            "duplicates_expected": expected_dups,
            "duplicates_reported": reported_dups,
        }
        if mismatched:
            res.notes.append(f"stored state differs from the last sent for {len(mismatched)} alert(s), e.g. "
                             f"{mismatched[0][0]}: stored {mismatched[0][1]}, sent {mismatched[0][2]}")
        if unsent:
            res.notes.append(f"outbox rows not sent, e.g. {unsent}")
        if never_posted:
            res.notes.append(f"loud message keys never posted, e.g. {never_posted[:3]}")
        if stale:
            res.notes.append(f"messages whose Slack text is not the last queued, e.g. {stale[:3]}")
        res.stored = {
            "by_level": dict(db.execute("SELECT level, count(*) FROM alerts GROUP BY level").fetchall()),
            "by_status": dict(db.execute("SELECT status, count(*) FROM alerts GROUP BY status").fetchall()),
            "tied_to_a_deploy": db.execute("SELECT count(*) FROM alerts WHERE deploy_id IS NOT NULL").fetchone()[0],
            "alert_events": db.execute("SELECT count(*) FROM alert_events").fetchone()[0],
            "message_keys": db.execute("SELECT count(DISTINCT message_key) FROM alerts").fetchone()[0],
            "digests": db.execute("SELECT count(*) FROM outbox WHERE message_key LIKE 'digest-%' "
                                  "AND op = 'post'").fetchone()[0],
            "outbox_rows": db.execute("SELECT count(*) FROM outbox").fetchone()[0],
        }


# -- output ---------------------------------------------------------------------------------------


def environment() -> dict[str, Any]:
    return {**versions(), "checkout": checkout(), "sqlite": sqlite3.sqlite_version}


def fmt(value: Any) -> str:
    return "-" if value is None else str(value)


def print_report(bench: Bench, env: dict[str, Any], warnings: WarningCounter) -> None:
    args, res = bench.args, bench.results
    print(f"Python {env['python']} ({env['implementation']}), slack_bolt {env['slack_bolt']}, slack_sdk "
          f"{env['slack_sdk']}, aiohttp {env['aiohttp']}, SQLite {env['sqlite']}, os.cpu_count()={env['cpu_count']}, "
          f"{env['platform']}")
    print(f"Slipway from {env['slipway_source']} at {env['checkout']}")
    s = res.setup
    print(f"Storm: {s['distinct_alerts']} distinct Alertmanager alerts over {s['services']} services, "
          f"{s['groups']} groups (group_by alertname+service, --batch {args.batch}), kinds {s['kinds']}; "
          f"{s['shipped_services']} services shipped to production first (their alerts go to deploy threads). "
          f"Outbox interval {args.interval:g}s per channel, {args.concurrency} POSTs in flight, seed {args.seed}"
          + (f", fake Slack answers every {args.rate_limit_every}th call 429" if args.rate_limit_every else "")
          + (", tracemalloc on" if res.memory.get("tracemalloc") else ", tracemalloc off") + ".")
    print()
    header = (f"{'wave':<9} {'POSTs':>5} {'alerts':>7} {'new/chg':>7} {'dups exp':>8} {'dups got':>8} {'err':>3} "
              f"{'wall s':>7} {'alerts/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'outbox':>6}")
    print(header)
    print("-" * len(header))
    for w in res.waves:
        print(f"{w['wave']:<9} {w['posts']:>5} {w['alerts_in_posts']:>7} {w['new_or_changed_sent']:>7} "
              f"{w['duplicates_expected']:>8} {w['duplicates_reported']:>8} {w['errors']:>3} {w['wall_s']:>7.2f} "
              f"{fmt(w['alerts_per_s']):>8} {fmt(w['p50_ms']):>8} {fmt(w['p99_ms']):>8} {fmt(w['max_ms']):>8} "
              f"{w['outbox_pending_after']:>6}")
    i = res.ingest
    print(f"{'all':<9} {i['posts']:>5} {i['alert_notifications']:>7} {'':>7} {'':>8} {'':>8} {i['non_200']:>3} "
          f"{i['wall_s']:>7.2f} {i['notifications_per_s']:>8} {fmt(i['p50_ms']):>8} {fmt(i['p99_ms']):>8} "
          f"{fmt(i['max_ms']):>8}")
    print("(outbox: messages pending when the wave's last answer came back)")
    print()
    print(f"Ingest: {res.setup['distinct_alerts']} distinct alerts in {i['wall_s']:.2f}s = "
          f"{i['distinct_alerts_per_s']} alerts/s ({i['notifications_per_s']} alert notifications/s incl. repeats, "
          f"{i['posts_per_s']} POSTs/s); process CPU {i['cpu_s']:.2f}s over that span")
    print(f"Event loop held during ingest (a 10 ms sleep woke this late; Slack acks share the loop): p50 "
          f"{i['loop_lag_p50_ms']} ms, p99 {i['loop_lag_p99_ms']} ms, max {i['loop_lag_max_ms']} ms; "
          f"{i['loop_blocked_over_1s']} stall(s) > 1 s, {i['loop_blocked_over_3s']} > 3 s; GET /metrics "
          f"slipway_event_loop_stall_max_seconds after the storm: {fmt(i.get('metrics_stall_max_ms'))} ms (the last "
          f"minute's, setup included); slipway_event_loop_lag_seconds during the waves, wake-ups later than "
          + (", ".join(f"{bound} ms: {int(n)}" for bound, n in i["metrics_lags_over_ms"].items())
             if i.get("metrics_lags_over_ms") else "-"))
    if res.turns:
        t = res.turns
        print(f"Writer thread (store/writer.py) during ingest: {t['writer_transactions']} transactions, p50 "
              f"{t['writer_p50_ms']} ms, p99 {t['writer_p99_ms']} ms, max {t['writer_max_ms']} ms; the loop's own "
              f"writes: {t['loop_writes']}, {t['loop_waited']} waited for the writer's turn, p99 "
              f"{t['loop_wait_p99_ms']} ms, max {t['loop_wait_max_ms']} ms, {t['loop_wait_total_ms']} ms in all")
    if res.acks:
        il = res.idle_loop
        print(f"Acks, one request every {args.probe_every:g}s, alternately /deploy (accepted, awaiting approval) "
              f"and Approve (first of two approvals), on the idle Slipway and while the storm ran with "
              f"{HELD_DEPLOYS} deploys in flight (loop lag while idle: p99 {il.get('loop_lag_p99_ms')} ms, "
              f"max {il.get('loop_lag_max_ms')} ms):")
        header = (f"{'ack':<8} {'idle n':>6} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'storm n':>7} {'p50 ms':>7} "
                  f"{'p99 ms':>7} {'max ms':>7} {'x p50':>6} {'x p99':>6}")
        print(header)
        print("-" * len(header))
        for a in res.acks:
            print(f"{a['surface']:<8} {a['idle_n']:>6} {fmt(a['idle_p50_ms']):>7} {fmt(a['idle_p99_ms']):>7} "
                  f"{fmt(a['idle_max_ms']):>7} {a['storm_n']:>7} {fmt(a['storm_p50_ms']):>7} "
                  f"{fmt(a['storm_p99_ms']):>7} {fmt(a['storm_max_ms']):>7} {fmt(a['ratio_p50']):>6} "
                  f"{fmt(a['ratio_p99']):>6}")
    m = res.memory
    if m.get("tracemalloc"):
        print(f"Memory: tracemalloc peak {m['traced_peak_mb']} MB during the storm (traced {m['traced_at_storm_start_mb']} "
              f"MB when it began, +{m['peak_over_start_mb']} MB; {m['traced_at_end_mb']} MB at the end); "
              f"maxrss {m['maxrss_before_storm_mb']} MB before -> {m['maxrss_end_mb']} MB after")
    else:
        print(f"Memory: maxrss {m['maxrss_before_storm_mb']} MB before the storm -> {m['maxrss_end_mb']} MB after "
              "(tracemalloc off)")
    d = res.drain
    print(f"Drain: {d['pending_at_start']} messages pending after the last answer, drained in {d['seconds']}s"
          + (" (TIMED OUT)" if d["timed_out"] else "") + f"; first POST -> all delivered {d['storm_to_drained_s']}s")
    print()
    header = (f"{'channel':<10} {'calls':>5} {'posts':>5} {'replies':>7} {'updates':>7} {'429':>4} {'err':>3} "
              f"{'max/1s':>6} {'min gap s':>9} {'<ival':>5} {'mean/s drain':>12} {'mean/s busy':>11} {'busy s':>7} "
              f"{'sent max/1s':>11} {'sent min gap':>12}")
    print("Slack calls per channel since the storm began (chat.postMessage + chat.update, as the fake Slack got them;")
    print(f"max/1s: most calls in any sliding 1-second window, target ~1/interval = {1 / args.interval:g}; <ival: gaps")
    print("shorter than the interval; sent ...: the same, timed when the outbox started each call):")
    print(header)
    print("-" * len(header))
    for c in res.channels:
        print(f"{c['channel']:<10} {c['calls']:>5} {c['posts']:>5} {c['replies']:>7} {c['updates']:>7} "
              f"{c['status_429']:>4} {c['other_errors']:>3} {c['max_per_1s_window']:>6} {fmt(c['min_gap_s']):>9} "
              f"{c['gaps_under_interval']:>5} {c['mean_per_s_drain']:>12} {fmt(c['mean_per_s_busy']):>11} "
              f"{c['busy_s']:>7} {c['outbox_max_per_1s_window']:>11} {fmt(c['outbox_min_gap_s']):>12}")
    print(f"Other Web API calls since the storm began: {res.other_calls or 'none'}")
    print()
    lo = res.loss
    print(f"Lost (must be 0): alerts {lo['alerts_lost']} ({lo['alerts_sent_distinct']} sent, {lo['alerts_stored']} "
          f"stored; {lo['fingerprints_missing']} fingerprints missing); outbox rows not sent {lo['outbox_not_sent']} "
          f"{lo['outbox_by_state']}; loud messages never posted {lo['loud_messages_never_posted']} of "
          f"{lo['loud_messages']}; POSTs refused {lo['posts_not_200']}")
    print(f"Consistency: alerts not in their last-sent state {lo['alerts_not_in_last_sent_state']}; alert messages whose "
          f"Slack text is not the last queued {lo['messages_not_showing_last_text']}; duplicates reported "
          f"{lo['duplicates_reported']} vs expected {lo['duplicates_expected']}")
    st = res.stored
    print(f"Stored: by level {st['by_level']}, by status {st['by_status']}, {st['tied_to_a_deploy']} tied to a deploy, "
          f"{st['alert_events']} alert events, {st['message_keys']} message keys, {st['digests']} storm digest(s), "
          f"{st['outbox_rows']} outbox rows")
    if warnings.counts:
        print(f"Slipway log warnings/errors: {dict(warnings.counts)}; e.g. {warnings.samples[:3]}")
    for note in res.notes:
        print(f"note: {note}")
    lo, ld = res.loss, res.load
    acks = "; ".join(f"{a['surface']} x{a['ratio_p50']} p50, x{a['ratio_p99']} p99" for a in res.acks) or "not measured"
    print(f"Summary: {i['distinct_alerts_per_s']} distinct alerts/s; POST p50 {i['p50_ms']} ms, p99 {i['p99_ms']} ms; "
          f"loop stall max {i['loop_lag_max_ms']} ms, p99 {i['loop_lag_p99_ms']} ms; lost "
          f"{lo['alerts_lost'] + lo['fingerprints_missing'] + lo['outbox_not_sent'] + lo['loud_messages_never_posted'] + lo['posts_not_200']}; "
          f"acks during the storm vs idle: {acks}")
    print("Load average (1, 5, 15 min): " + ", ".join(
        f"{when.replace('_', ' ')} {' '.join(f'{x:.2f}' for x in ld[when])}" for when in ("at_start", "after_ingest", "at_end")
        if when in ld) + f" on {os.cpu_count()} CPUs (other processes share them: read the figures with it)")
    print(f"(total run {res.elapsed:.1f}s)")
    if res.profile:
        print()
        print("cProfile of the ingest phase (the whole event loop: client, server, outbox, fake Slack):")
        print(res.profile)


async def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.ERROR)
    warnings = WarningCounter()
    logging.getLogger().addHandler(warnings)
    for name in ("bot", "handlers", "store"):
        logging.getLogger(name).setLevel(logging.WARNING)
    env = environment()
    if args.tracemalloc:
        tracemalloc.start()
    bench = Bench(args, warnings)
    with tempfile.TemporaryDirectory(prefix="slipway-storm-") as workdir:
        try:
            await bench.start(Path(workdir))
            await bench.run()
        finally:
            await bench.stop()
    print_report(bench, env, warnings)
    if args.json:
        res = bench.results
        payload = {"environment": env, "parameters": vars(args), "setup": res.setup, "waves": res.waves,
                   "ingest": res.ingest, "memory": res.memory, "drain": res.drain, "channels": res.channels,
                   "other_calls": res.other_calls, "loss": res.loss, "stored": res.stored, "notes": res.notes,
                   "acks": res.acks, "idle_loop": res.idle_loop, "turns": res.turns, "load": res.load,
                   "log_warnings": dict(warnings.counts), "elapsed_s": round(res.elapsed, 1)}
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--alerts", type=int, default=10_000, help="distinct alerts in the storm")
    parser.add_argument("--services", type=int, default=100, help="services the alerts are spread over")
    parser.add_argument("--batch", type=int, default=100, help="alerts per Alertmanager group (= per POST), <= 1000")
    parser.add_argument("--interval", type=float, default=1.0,
                        help="the outbox's seconds between two calls to one channel (Slipway's default 1.0)")
    parser.add_argument("--concurrency", type=int, default=6, help="POSTs in flight")
    parser.add_argument("--ship-every", type=int, default=10,
                        help="ship every Nth service to production before the storm (0: none)")
    parser.add_argument("--drain-timeout", type=float, default=600.0, help="seconds to wait for the outbox")
    parser.add_argument("--rate-limit-every", type=int, default=0,
                        help="the fake Slack answers every Nth call 429 with Retry-After 1 (default: never)")
    parser.add_argument("--seed", type=int, default=1, help="seed for the kinds and the waves' choices and order")
    parser.add_argument("--tracemalloc", action="store_true",
                        help="trace allocations for the memory figure (slows Python several times: the rates, "
                             "latencies and stalls then measure tracemalloc, not Slipway)")
    parser.add_argument("--no-tracemalloc", action="store_true",
                        help="the default (kept so older command lines still run)")
    parser.add_argument("--probes", type=int, default=40,
                        help="/deploy and Approve acks measured on the idle Slipway, and at most as many of each "
                             "during the storm (0: none)")
    parser.add_argument("--probe-every", type=float, default=0.05,
                        help="seconds between the starts of two probe requests (one at a time)")
    parser.add_argument("--profile", action="store_true", help="cProfile the ingest phase and print the top")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    if args.alerts < 1 or args.services < 1 or args.concurrency < 1:
        parser.error("--alerts, --services and --concurrency must be at least 1")
    if not 1 <= args.batch <= 1000:
        parser.error("--batch must be between 1 and 1000 (Slipway takes at most 1000 alerts per body)")
    if args.interval <= 0:
        parser.error("--interval must be positive")
    return args


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
