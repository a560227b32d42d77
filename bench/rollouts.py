#!/usr/bin/env python
"""Progressive delivery under measurement: how fast a failing metric gate
aborts a canary, and what 50 canaries being analysed cost one Slipway.

Run from the repository root::

    python bench/rollouts.py [--json rollouts.json] [--canaries 50] [--interval 1] [--aborts 30]

It imports Slipway from the checkout it sits in (``benchlib`` puts the
repository root first on ``sys.path``) and prints which copy it measured.

What is measured
----------------
1. **Abort latency**: from the arrival of the failing measurement to the
   deploy engine starting the abort (``SLIPWAY_WEIGHT=0``). Each abort is a
   canary of its own service (``abortN``: steps 5% with a 1 h pause analysed
   by ``error_rate``, then 100%; ``failure_limit: 1``, ``on_failure: abort``)
   requested over the signed HTTP endpoint like any ``/deploy``, whose canary
   error rate is already high (0.2 against a stable 0.01): the first
   measurement of the 5% step, ``interval`` after its watch began, fails
   and aborts the rollout. Times (all ``CLOCK_MONOTONIC``, which is
   system-wide on Linux):

   * *arrival*: the Prometheus client's ``instant()`` returned the last of
     the measurement's two answers (the check's query and its
     ``baseline_query`` are asked at once). The bench's client is a
     subclass of ``bot.deploys.analysis.Prometheus`` that notes when each
     ``instant()`` returns; it is handed to the ``StageWatch`` through its
     public ``prometheus`` callable. No product code is edited.
   * *verdict*: ``StageWatch.watch()`` returned its ``failed`` verdict to
     the runner (the bench wraps the method on the instance): the
     measurement is recorded, its baselines kept, ``DeployChanged``
     published, the failure counted and posted (queued) in the thread.
   * *handover*: the runner published ``ExecutorStarted`` for the abort's
     engine call (``DeployRunner._abort`` → ``_execute``, just before
     ``executor.run``).
   * *engine*: the engine's first action. Every canary's
     ``deploy.command`` is a perl one-liner that reads ``CLOCK_MONOTONIC``
     (and ``CLOCK_REALTIME``) through the ``clock_gettime`` system call and
     appends them, with ``$SLIPWAY_DEPLOY_ID`` and ``$SLIPWAY_WEIGHT``, to a
     file (as in ``execution_latency.py``; ``python -S -I`` where perl
     cannot).

   Also, as a cross-check from what the store keeps: the failing
   measurement's ``measurements.at`` (wall clock, milliseconds, taken after
   the answers came) to the engine's ``CLOCK_REALTIME``. And the baseline:
   ``bot.executors.process.run_process`` called directly with the same
   probe, to the probe's first action (the engine's own start-up), measured
   after every abort. The aborts run one at a time, first on the idle
   Slipway, then again while the canaries of (2) are analysed.

2. **50 canaries analysing at once**: ``--canaries`` (50) canary deploys
   (``loadN``, the same strategy, error rate fine) are requested and left in
   their watched 5% step, every one measured every ``--interval`` (1 s: two
   queries per measurement, the check and its baseline). Before they start
   (idle) and while they run (loaded), the same ack probes go through the
   real signed ``POST /slack/events``, one at a time, one every
   ``--probe-every`` seconds, alternately ``/deploy help`` (no store work)
   and ``/deploy probeN 1.1.0`` (an accepted direct deploy of a service of
   its own, engine ``true``, its run after the ack). Reported: ack p50/p99
   idle and loaded and their ratio; measurements recorded per second (and
   the rate the interval asks for); how late each canary's measurements
   came (the gap between two measurements of one canary minus the
   interval); the event loop's stalls (``bot.runtime.loop_monitor``, a 10 ms
   sleep's lateness) and the event-loop thread's CPU in each window; and,
   in a short window of its own (``--census``), every SQL statement
   Slipway's connection ran, per measurement, by shape.

The Prometheus
--------------
A tiny Prometheus stand-in answers ``GET /api/v1/query`` (an instant vector
of one sample, Prometheus' JSON) from its own thread and event loop: the
value is the error rate the benchmark set for the query's ``service`` and
``track`` labels. A real Prometheus (``tests/prometheus.py``) scrapes a
target every second and ``rate(...[1m])`` only moves once new samples are
in, so a flipped error rate shows up seconds later; figure (1) starts when
the failing answer arrives, so those seconds are not Slipway's, and a real
one would add only its query time (and, for (2), its CPU for 100 queries a
second on the same two cores). Its own thread keeps its answering off
Slipway's event loop, as a separate server would be; it still shares the
GIL.

Fairness
--------
One process, one event loop for Slipway, the fake Slack (loopback) and the
load generator; idle and loaded are measured in the same run, in that
order, and read as ratios. Before each measured phase garbage is collected
and frozen (``gc.freeze()``), as the other benchmarks do.

The outbox is not paced by default (``--outbox-interval 0.001``, as in
``ack_latency.py``): the ``/deploy`` probes post ~5 Slack calls each, ten
times a second, which at Slipway's own 1 s per channel would pile up a
backlog (and make every new request wait ``ANNOUNCE_WAIT``, 10 s, for its
message). Unpaced, every measurement's redraw of its deploy's message is
actually sent (about 50 ``chat.update`` a second, each drawn from the
store): more Slack work than production does, where those edits coalesce
at one call a second per channel. So the loaded figures are an upper
bound. ``--outbox-interval 1 --kinds help`` is the production-like variant
(only ``/deploy help`` probes, so the channel carries the canaries' own
traffic; keep ``--aborts`` small then: each abort canary's request waits
up to 10 s for its message behind the canaries' edits).

``--history N`` records N passing measurements per load canary's step
before the loaded window, as if the step had been watched N intervals
already: the cost of a measurement grows with that (see bench/README.md).

This is a benchmark, not a test: nothing is asserted on timing.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import json
import logging
import math
import platform
import pstats
import re
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from itertools import pairwise
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from benchlib import checkout, percentile, summary_ms, versions  # noqa: E402  (first: this checkout)

from bot.config import parse_config  # noqa: E402
from bot.deploys.analysis import Prometheus  # noqa: E402
from bot.events import ExecutorStarted  # noqa: E402
from bot.executors.base import Job  # noqa: E402
from bot.executors.process import run_process  # noqa: E402
from bot.runtime.composition import SLACK_EVENTS_PATH, Slipway, create_slipway, create_web_app  # noqa: E402
from bot.runtime.loop_monitor import LoopMonitor  # noqa: E402
from bot.runtime.settings import Settings  # noqa: E402
from bot.sandbox.fake_slack import FakeSlack, SlackSender  # noqa: E402
from store import Store  # noqa: E402

SIGNING_SECRET = "bench-signing-secret"
BOT_TOKEN = "xoxb-bench-token"
CHANNEL = "C0DEPLOYS"
ENVIRONMENT = "production"
REQUESTER = "U0DAVE"
LIVE_VERSION = "1.0.0"  # recorded as succeeded before the run: the stable version
NEW_VERSION = "1.1.0"  # what every canary and probe asks for
CHECK = "error_rate"
STABLE_RATE = 0.01
GOOD_RATE = 0.01
BAD_RATE = 0.2  # > max 0.05 and > 2x stable
WARMUP_ABORTS = 2

# -- the engine probe -------------------------------------------------------------------

CLOCK_GETTIME_SYSCALL = {"x86_64": 228, "aarch64": 113}
CLOCK_REALTIME, CLOCK_MONOTONIC = 0, 1
PERL_SCRIPT = (
    'my $t = "\\0" x 16; syscall(%(n)d, %(mono)d, $t) == 0 or exit 3; my ($s, $ns) = unpack("q q", $t); '
    'my $r = "\\0" x 16; syscall(%(n)d, %(real)d, $r) == 0 or exit 3; my ($rs, $rns) = unpack("q q", $r); '
    'open(my $f, ">>", $ARGV[0]) or exit 2; '
    'printf $f "%%s %%s %%d.%%09d %%d.%%09d\\n", ($ENV{SLIPWAY_DEPLOY_ID} // "-"), ($ENV{SLIPWAY_WEIGHT} // "-"), '
    '$s, $ns, $rs, $rns; close($f) or exit 2;'
)
PYTHON_SCRIPT = (
    "import time;t=time.monotonic();r=time.time();import os,sys\n"
    "with open(sys.argv[1],'a') as f:f.write('%s %s %.9f %.9f\\n'%(os.environ.get('SLIPWAY_DEPLOY_ID','-'),"
    "os.environ.get('SLIPWAY_WEIGHT','-'),t,r))"
)


def probe_argv(stamps: Path) -> tuple[list[str], str]:
    perl = shutil.which("perl")
    syscall = CLOCK_GETTIME_SYSCALL.get(platform.machine())
    if perl and syscall and sys.platform == "linux":
        script = PERL_SCRIPT % {"n": syscall, "mono": CLOCK_MONOTONIC, "real": CLOCK_REALTIME}
        return [perl, "-e", script, str(stamps)], f"perl -e (clock_gettime via syscall {syscall}) [{perl}]"
    return ([sys.executable, "-S", "-I", "-c", PYTHON_SCRIPT, str(stamps)],
            f"python -S -I -c (time.monotonic()) [{sys.executable}]")


class Stamps:
    """The probe's lines: ``<deploy id> <weight> <monotonic> <realtime>``, keyed by (id, weight)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.seen: dict[tuple[str, str], tuple[float, float]] = {}

    def read(self) -> dict[tuple[str, str], tuple[float, float]]:
        if self.path.exists():
            with self.path.open("rb") as f:
                f.seek(self.offset)
                data = f.read()
            complete = data[:data.rfind(b"\n") + 1]
            self.offset += len(complete)
            for line in complete.decode().splitlines():
                deploy_id, weight, mono, real = line.split()
                self.seen[(deploy_id, weight)] = (float(mono), float(real))
        return self.seen

    async def wait_for(self, key: tuple[str, str], timeout: float) -> tuple[float, float] | None:
        deadline = time.monotonic() + timeout
        while key not in self.read():
            if time.monotonic() > deadline:
                return None
            await asyncio.sleep(0.002)
        return self.seen[key]


# -- Prometheus: a stand-in server, and a client that notes when answers arrive -----------

LABELS = re.compile(r'service="([^"]*)",track="([a-z]+)"')


class FakePrometheus:
    """Answers ``GET /api/v1/query`` as Prometheus does (an instant vector
    of one sample), from a thread and event loop of its own. The value is
    ``rates[(service, track)]`` for the query's labels (``STABLE_RATE`` /
    ``GOOD_RATE`` when unset)."""

    def __init__(self) -> None:
        self.rates: dict[tuple[str, str], float] = {}
        self.queries = 0
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    async def _query(self, request: web.Request) -> web.Response:
        self.queries += 1
        match = LABELS.search(request.query.get("query", ""))
        if match is None:
            return web.json_response({"status": "error", "errorType": "bad_data", "error": "unknown query"},
                                     status=400)
        service, track = match.groups()
        value = self.rates.get((service, track), STABLE_RATE if track == "stable" else GOOD_RATE)
        return web.json_response({"status": "success", "data": {"resultType": "vector", "result": [
            {"metric": {}, "value": [time.time(), f"{value:g}"]}]}})

    def start(self) -> FakePrometheus:
        ready = threading.Event()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            app = web.Application()
            app.router.add_get("/api/v1/query", self._query)
            self._runner = web.AppRunner(app, access_log=None)
            loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            loop.run_until_complete(site.start())
            self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=serve, name="fake-prometheus", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the fake Prometheus did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)


class TimedPrometheus(Prometheus):
    """Slipway's own client, noting when each answer arrived (per service)
    and how long each query took."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.last_return: dict[str, float] = {}
        self.durations: list[float] = []
        self.record_durations = False

    async def instant(self, query: str) -> float | None:
        began = time.monotonic()
        try:
            return await super().instant(query)
        finally:
            now = time.monotonic()
            match = LABELS.search(query)
            if match is not None:
                self.last_return[match.group(1)] = now
            if self.record_durations:
                self.durations.append(now - began)


# -- the config ----------------------------------------------------------------------------


def config_text(args: argparse.Namespace, prometheus_url: str, probes: int, aborts: int, argv: list[str]) -> str:
    rate = 'sum(rate(http_requests_total{{service="{{service}}",track="{track}",code=~"5.."}}[1m])) ' \
           '/ sum(rate(http_requests_total{{service="{{service}}",track="{track}"}}[1m]))'
    canary = {"deploy": {"command": argv}, "strategy": {ENVIRONMENT: {"canary": {
        "steps": [{"weight": 5, "pause": "1h"}, {"weight": 100}], "analysis": [CHECK], "on_failure": "abort"}}}}
    services: dict[str, Any] = {}
    services.update({f"probe{i}": {"deploy": {"command": [shutil.which("true") or "/bin/true"]}}
                     for i in range(probes)})
    services.update({f"load{i}": canary for i in range(args.canaries)})
    services.update({f"abort{i}": canary for i in range(aborts)})
    config = {
        "channel": CHANNEL,
        "analysis": {"prometheus_url": prometheus_url, "query_timeout": "5s", "checks": {CHECK: {
            "query": rate.format(track="canary"), "baseline_query": rate.format(track="stable"),
            "max": 0.05, "max_ratio": 2, "min_baseline": 0.001, "interval": f"{args.interval:g}s",
            "failure_limit": 1, "inconclusive": "pause"}}},
        "environments": [{"name": ENVIRONMENT}],
        "services": services,
    }
    return json.dumps(config, indent=1)  # JSON is YAML


# -- measurements ------------------------------------------------------------------------


@dataclass
class Abort:
    phase: str
    service: str
    deploy_id: int
    arrival: float  # monotonic: the failing measurement's last answer returned
    verdict: float  # monotonic: StageWatch.watch returned "failed"
    handover: float  # monotonic: ExecutorStarted for the abort's engine call
    engine: float  # the probe's CLOCK_MONOTONIC
    at_to_engine: float  # measurements.at -> the probe's CLOCK_REALTIME (ms resolution)

    @property
    def latency(self) -> float:
        return self.engine - self.arrival


@dataclass
class Window:
    """One measured phase of ack probes."""

    name: str
    acks: dict[str, list[float]] = field(default_factory=lambda: {"help": [], "deploy": []})
    errors: int = 0
    seconds: float = 0.0
    loop_cpu: float = 0.0  # the event loop thread's CPU time over the window
    process_cpu: float = 0.0
    lags: list[float] = field(default_factory=list)
    measurements: int = 0  # of the load canaries, recorded during the window
    queries: int = 0  # answered by the fake Prometheus during the window
    lateness: list[float] = field(default_factory=list)  # gap between two measurements of a canary - interval
    query_seconds: list[float] = field(default_factory=list)  # each instant() call, sent -> answer parsed


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.stamps = Stamps(workdir / "stamps.txt")
        self.argv, self.probe = probe_argv(self.stamps.path)
        self.probes = 2 * args.acks + 20  # distinct /deploy probe services (idle, loaded, warm-up)
        self.abort_services = WARMUP_ABORTS + args.aborts + args.loaded_aborts
        self.prometheus = FakePrometheus()
        self.fake: FakeSlack | None = None
        self.store: Store | None = None
        self.slipway: Slipway | None = None
        self.client: TimedPrometheus | None = None
        self.runner: web.AppRunner | None = None
        self.session: aiohttp.ClientSession | None = None
        self.sender: SlackSender | None = None
        self.url = ""
        self.verdicts: dict[int, tuple[float, str]] = {}
        self.handovers: dict[int, float] = {}
        self.aborts: list[Abort] = []
        self.baselines: dict[str, list[float]] = {"idle": [], "loaded": []}
        self.windows: dict[str, Window] = {}
        self.census: dict[str, Any] = {}
        self.notes: list[str] = []
        self.next_probe = 0
        self.next_abort = 0
        self.load_ids: list[int] = []
        self.ramp_seconds = 0.0
        self.loaded_rate = 0.0  # measurements/s over the whole loaded phase
        self.elapsed = 0.0
        self.profile_text = ""

    # -- set-up -------------------------------------------------------------------------

    async def start(self) -> None:
        self.prometheus.start()
        self.fake = await FakeSlack(token=BOT_TOKEN).start()
        settings = Settings(bot_token=BOT_TOKEN, signing_secret=SIGNING_SECRET, api_url=self.fake.api_url)
        self.store = Store.open(self.workdir / "slipway.db")
        config = parse_config(config_text(self.args, self.prometheus.url, self.probes, self.abort_services,
                                          self.argv))
        self.slipway = create_slipway(config, self.store, settings, outbox_interval=self.args.outbox_interval)
        watch = self.slipway.runner.watch
        assert watch is not None, "this checkout's runner has no StageWatch"
        assert config.analysis is not None
        self.client = TimedPrometheus(self.prometheus.url, config.analysis.query_timeout)
        watch.prometheus = lambda: self.client  # the watch's own callable, pointed at the timed client
        watched = watch.watch

        async def timed_watch(deploy: Any, position: int) -> Any:
            verdict = await watched(deploy, position)
            self.verdicts[deploy.id] = (time.monotonic(), verdict.outcome)
            return verdict

        watch.watch = timed_watch  # type: ignore[method-assign]
        self.slipway.events.subscribe(ExecutorStarted,
                                      lambda event: self.handovers.__setitem__(event.deploy_id, time.monotonic()))
        self.runner = web.AppRunner(create_web_app(self.slipway))
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}{SLACK_EVENTS_PATH}"
        self.sender = SlackSender(self.url, SIGNING_SECRET, self.fake)  # builds and signs bodies only
        self.session = aiohttp.ClientSession()

    async def stop(self) -> None:
        if self.session is not None:
            await self.session.close()
        if self.runner is not None:
            await self.runner.cleanup()  # Slipway's close: cancels the canaries' tasks
        if self.client is not None:
            await self.client.close()
        if self.store is not None:
            self.store.close()
        if self.fake is not None:
            await self.fake.stop()
        self.prometheus.stop()

    def seed(self) -> None:
        """LIVE_VERSION succeeded on production for every canary service: the stable version."""
        assert self.store is not None
        names = [f"load{i}" for i in range(self.args.canaries)] + [f"abort{i}" for i in range(self.abort_services)]
        with self.store.transaction():
            for service in names:
                deploy = self.store.deploys.create(
                    service=service, environment=ENVIRONMENT, version=LIVE_VERSION, version_prefixed=False,
                    requested_by=REQUESTER, previous_version=None, checklist=[], needs_approval=False)
                for state in ("deploying", "verifying", "succeeded"):
                    deploy = self.store.deploys.transition(deploy.id, allowed_from=(deploy.status,), to=state,
                                                           actor=None, action=state)

    async def post(self, body: str) -> tuple[float, int, str]:
        assert self.session is not None and self.sender is not None
        headers = self.sender.signed_headers(body)
        data = body.encode()
        began = time.perf_counter()
        async with self.session.post(self.url, data=data, headers=headers) as response:
            text = await response.text()
        return time.perf_counter() - began, response.status, text

    def deploy_id(self, service: str) -> int | None:
        assert self.store is not None
        row = self.store.db.execute("SELECT id FROM deploys WHERE service = ? AND version = ? ORDER BY id DESC",
                                    [service, NEW_VERSION]).fetchone()
        return row[0] if row else None

    @staticmethod
    def settle_heap() -> None:
        gc.collect()
        gc.freeze()

    # -- ack probes ---------------------------------------------------------------------------

    async def probe_acks(self, window: Window, count: int, *, keep: bool = True) -> None:
        """``count`` of each kind, alternately, one every ``--probe-every`` s."""
        assert self.sender is not None
        every = self.args.probe_every
        for i in range(len(self.args.kinds) * count):
            slot = time.perf_counter()
            if self.args.kinds[i % len(self.args.kinds)] == "help":
                kind, body = "help", self.sender.command_body("help", REQUESTER)
            else:
                kind = "deploy"
                service = f"probe{self.next_probe}"
                self.next_probe += 1
                body = self.sender.command_body(f"{service} {NEW_VERSION} {ENVIRONMENT}", REQUESTER)
            latency, status, text = await self.post(body)
            if status != 200 or (kind == "deploy" and "needs no approval" not in text):
                window.errors += 1
                self.notes.append(f"{window.name} {kind}: HTTP {status} {text[:150]!r}")
            elif keep:
                window.acks[kind].append(latency)
            await asyncio.sleep(max(0.0, slot + every - time.perf_counter()))

    async def measure_window(self, name: str) -> Window:
        """The ack probes, with the loop's stalls, CPU and the canaries' measurements alongside."""
        assert self.store is not None and self.client is not None
        window = Window(name)
        self.settle_heap()
        lags: list[float] = []
        monitor = LoopMonitor(on_lag=lags.append)
        wall0 = datetime.now(timezone.utc)
        count0 = self.measurement_count()
        queries0 = self.prometheus.queries
        loop_cpu0, cpu0, t0 = time.thread_time(), time.process_time(), time.perf_counter()
        self.client.durations = []
        self.client.record_durations = True
        profiler = cProfile.Profile() if self.args.profile and name == "loaded" else None
        monitor.start()
        if profiler is not None:
            profiler.enable()
        try:
            await self.probe_acks(window, self.args.acks)
        finally:
            if profiler is not None:
                profiler.disable()
            await monitor.close()
            self.client.record_durations = False
        window.seconds = time.perf_counter() - t0
        window.loop_cpu = time.thread_time() - loop_cpu0
        window.process_cpu = time.process_time() - cpu0
        window.lags = lags
        window.measurements = self.measurement_count() - count0
        window.queries = self.prometheus.queries - queries0
        window.query_seconds = list(self.client.durations)
        window.lateness = self.lateness(wall0, datetime.now(timezone.utc))
        if profiler is not None:
            out = io.StringIO()
            stats = pstats.Stats(profiler, stream=out)
            stats.sort_stats("tottime").print_stats(20)
            out.write("Slipway's own functions, by cumulative time:\n")
            stats.sort_stats("cumulative").print_stats(r"/(bot|store|handlers)/", 40)
            self.profile_text = out.getvalue()
        self.windows[name] = window
        return window

    def measurement_count(self) -> int:
        assert self.store is not None
        if not self.load_ids:
            return 0
        marks = ",".join("?" for _ in self.load_ids)
        return self.store.db.execute(f"SELECT count(*) FROM measurements WHERE deploy_id IN ({marks})",
                                     self.load_ids).fetchone()[0]

    def lateness(self, since: datetime, until: datetime) -> list[float]:
        """For each load canary, the gaps between its consecutive measurements
        taken in [since, until], minus the interval."""
        assert self.store is not None
        gaps: list[float] = []
        for deploy_id in self.load_ids:
            moments = [datetime.fromisoformat(m.at) for m in self.store.rollouts.measurements(deploy_id)]
            moments = [m for m in moments if since <= m <= until]
            gaps += [(b - a).total_seconds() - self.args.interval for a, b in pairwise(moments)]
        return gaps

    # -- aborts ------------------------------------------------------------------------------------

    async def abort_once(self, phase: str, keep: bool) -> None:
        assert self.store is not None and self.sender is not None and self.client is not None
        service = f"abort{self.next_abort}"
        self.next_abort += 1
        self.prometheus.rates[(service, "canary")] = BAD_RATE  # bad from the start: the first measurement fails
        _, status, text = await self.post(self.sender.command_body(f"{service} {NEW_VERSION} {ENVIRONMENT}",
                                                                   REQUESTER))
        deploy_id = self.deploy_id(service)
        if status != 200 or deploy_id is None or "needs no approval" not in text:
            self.notes.append(f"{phase} abort {service}: not accepted: HTTP {status} {text[:150]!r}")
            return
        stamp = await self.stamps.wait_for((str(deploy_id), "0"), timeout=self.args.interval + 30)
        deadline = time.monotonic() + 10
        while self.store.deploys.get(deploy_id).status != "failed" and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        deploy = self.store.deploys.get(deploy_id)
        verdict = self.verdicts.get(deploy_id)
        failing = [m for m in self.store.rollouts.measurements(deploy_id) if m.verdict == "fail"]
        if stamp is None or verdict is None or verdict[1] != "failed" or not failing \
                or deploy_id not in self.handovers or service not in self.client.last_return:
            self.notes.append(f"{phase} abort {service} #{deploy_id}: incomplete (status {deploy.status}, "
                              f"verdict {verdict}, stamp {stamp}, reason {deploy.status_reason!r})")
            return
        if deploy.status != "failed" or not (deploy.status_reason or "").startswith("aborted at 5%"):
            self.notes.append(f"{phase} abort {service}: ended {deploy.status} {deploy.status_reason!r}")
        at = datetime.fromisoformat(failing[0].at).timestamp()
        if keep:
            self.aborts.append(Abort(phase, service, deploy_id, self.client.last_return[service], verdict[0],
                                     self.handovers[deploy_id], stamp[0], stamp[1] - at))
            self.baselines[phase].append(await self.baseline(f"baseline-{service}"))
        await asyncio.sleep(0.05)  # its thread notes queued, the task ended
        self.settle_heap()

    async def baseline(self, tag: str) -> float:
        """run_process with the same probe: the engine's own start-up."""
        job = Job(0, "svc-baseline", ENVIRONMENT, NEW_VERSION, LIVE_VERSION, None, datetime.now(timezone.utc))
        env = {**job.environ, "SLIPWAY_DEPLOY_ID": tag, "SLIPWAY_WEIGHT": "0"}
        sent = time.monotonic()
        result = await run_process(self.argv, env=env, timeout=60.0)
        stamp = await self.stamps.wait_for((tag, "0"), timeout=5)
        if not result.succeeded or stamp is None:
            self.notes.append(f"baseline {tag}: {result.summary}")
            return float("nan")
        return stamp[0] - sent

    async def aborts_phase(self, phase: str, count: int) -> None:
        self.settle_heap()
        for _ in range(count):
            await self.abort_once(phase, keep=True)

    # -- the load ----------------------------------------------------------------------------------

    async def start_load(self) -> None:
        """Request the load canaries (a few at a time) and wait until each is watched."""
        assert self.store is not None and self.sender is not None
        began = time.perf_counter()
        queue = [f"load{i}" for i in range(self.args.canaries)]

        async def client() -> None:
            while queue:
                service = queue.pop(0)
                _, status, text = await self.post(
                    self.sender.command_body(f"{service} {NEW_VERSION} {ENVIRONMENT}", REQUESTER))
                if status != 200:
                    self.notes.append(f"load {service}: HTTP {status} {text[:150]!r}")

        await asyncio.gather(*(client() for _ in range(5)))
        ids = [self.deploy_id(f"load{i}") for i in range(self.args.canaries)]
        self.load_ids = [i for i in ids if i is not None]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            rollouts = [self.store.rollouts.get(i) for i in self.load_ids]
            if all(r is not None and r.stage(1).state == "watching" for r in rollouts):
                break
            await asyncio.sleep(0.05)
        else:
            self.notes.append("not every load canary reached its watched step in 60 s")
        if self.args.history:
            self.seed_history(self.args.history)
        # every canary measured at least twice: the load is in its steady state
        await asyncio.sleep(2 * self.args.interval + 0.5)
        self.ramp_seconds = time.perf_counter() - began

    def seed_history(self, count: int) -> None:
        """``count`` passing measurements of the watched step, one per interval up to now, for every
        load canary: as if its step had been watched that long (``--history``)."""
        assert self.store is not None
        now = datetime.now(timezone.utc)
        with self.store.transaction():
            for deploy_id in self.load_ids:
                for i in range(count, 0, -1):
                    self.store.rollouts.record_measurement(
                        deploy_id, 1, CHECK, GOOD_RATE, STABLE_RATE, "pass",
                        f"{CHECK} 0.01 (stable 0.01, ceiling 0.05 and 2× stable)",
                        at=now - timedelta(seconds=i * self.args.interval))

    async def sql_census(self, seconds: float) -> None:
        """Every SQL statement on Slipway's connection for ``seconds``, by shape, per measurement."""
        assert self.store is not None
        shapes: Counter[str] = Counter()
        conn = self.store.db.conn

        def traced(sql: str) -> None:
            shape = re.sub(r"'(?:[^']|'')*'", "?", " ".join(sql.split()))
            shapes[re.sub(r"\b\d+(?:\.\d+)?(?:e-?\d+)?\b", "?", shape)[:110]] += 1

        count0 = self.measurement_count()
        conn.set_trace_callback(traced)
        try:
            await asyncio.sleep(seconds)
        finally:
            conn.set_trace_callback(None)
        measured = self.measurement_count() - count0
        total = sum(shapes.values())
        self.census = {
            "seconds": seconds, "measurements": measured, "statements": total,
            "statements_per_measurement": round(total / measured, 1) if measured else None,
            "commits_per_measurement": round(shapes["COMMIT"] / measured, 2) if measured else None,
            "by_shape_per_measurement": [{"sql": sql, "per_measurement": round(n / measured, 2) if measured else n}
                                         for sql, n in shapes.most_common(14)],
        }

    # -- the run -----------------------------------------------------------------------------------

    async def progress(self, t0: float, what: str) -> None:
        print(f"{what} ({time.perf_counter() - t0:.1f}s)", file=sys.stderr, flush=True)

    async def run(self) -> None:
        t0 = time.perf_counter()
        self.seed()
        # warm-up, unmeasured: both ack kinds, and aborts
        await self.probe_acks(Window("warm-up"), 10, keep=False)
        for _ in range(WARMUP_ABORTS):
            await self.abort_once("warm-up", keep=False)
        await self.progress(t0, "set up and warmed up")
        await self.measure_window("idle")
        await self.progress(t0, "idle acks measured")
        await self.aborts_phase("idle", self.args.aborts)
        await self.progress(t0, f"{self.args.aborts} idle aborts measured")
        await self.start_load()
        await self.progress(t0, f"{len(self.load_ids)} canaries analysing (ramp {self.ramp_seconds:.1f}s)")
        loaded_from, loaded_count = time.perf_counter(), self.measurement_count()
        await self.measure_window("loaded")
        await self.progress(t0, "loaded acks measured")
        if self.args.census > 0:
            await self.sql_census(self.args.census)
        await self.aborts_phase("loaded", self.args.loaded_aborts)
        await self.progress(t0, f"{self.args.loaded_aborts} loaded aborts measured")
        self.loaded_rate = (self.measurement_count() - loaded_count) / (time.perf_counter() - loaded_from)
        assert self.store is not None
        still = sum(1 for i in self.load_ids if self.store.deploys.get(i).status != "deploying")
        if still:
            self.notes.append(f"{still} load canaries were no longer deploying at the end")
        self.elapsed = time.perf_counter() - t0

    # -- results -----------------------------------------------------------------------------------

    def results(self) -> dict[str, Any]:
        out: dict[str, Any] = {"aborts": {}, "acks": {}, "load": {}}
        for phase in ("idle", "loaded"):
            aborts = [a for a in self.aborts if a.phase == phase]
            base = [b for b in self.baselines[phase] if not math.isnan(b)]
            out["aborts"][phase] = {
                "arrival_to_engine": summary_ms([a.latency for a in aborts]),
                "arrival_to_verdict": summary_ms([a.verdict - a.arrival for a in aborts]),
                "verdict_to_handover": summary_ms([a.handover - a.verdict for a in aborts]),
                "handover_to_engine": summary_ms([a.engine - a.handover for a in aborts]),
                "measurement_at_to_engine_wall": summary_ms([a.at_to_engine for a in aborts]),
                "run_process_baseline": summary_ms(base),
            }
        idle, loaded = self.windows.get("idle"), self.windows.get("loaded")
        for kind in ("help", "deploy"):
            row: dict[str, Any] = {}
            for name, window in (("idle", idle), ("loaded", loaded)):
                if window is not None:
                    row[name] = summary_ms(window.acks[kind])
            if "idle" in row and "loaded" in row and row["idle"]["p50_ms"] and row["idle"]["p99_ms"]:
                row["ratio_p50"] = round(row["loaded"]["p50_ms"] / row["idle"]["p50_ms"], 2)
                row["ratio_p99"] = round(row["loaded"]["p99_ms"] / row["idle"]["p99_ms"], 2)
            out["acks"][kind] = row
        for name, window in (("idle", idle), ("loaded", loaded)):
            if window is None:
                continue
            lags = sorted(window.lags)
            out["load"][name] = {
                "seconds": round(window.seconds, 2),
                "ack_errors": window.errors,
                "loop_cpu_share": round(window.loop_cpu / window.seconds, 3),
                "process_cpu_share": round(window.process_cpu / window.seconds, 3),
                "loop_lag_p50_ms": round(percentile(lags, 0.5) * 1000, 2) if lags else None,
                "loop_lag_p99_ms": round(percentile(lags, 0.99) * 1000, 2) if lags else None,
                "loop_stall_max_ms": round(lags[-1] * 1000, 2) if lags else None,
                "measurements": window.measurements,
                "measurements_per_s": round(window.measurements / window.seconds, 2),
                "prometheus_queries_per_s": round(window.queries / window.seconds, 2),
                "measurement_lateness": summary_ms(window.lateness),
                "query_time": summary_ms(window.query_seconds),
            }
        if idle is not None and loaded is not None and loaded.measurements:
            extra = (loaded.loop_cpu / loaded.seconds - idle.loop_cpu / idle.seconds) * loaded.seconds
            out["load"]["loop_cpu_ms_per_measurement"] = round(extra / loaded.measurements * 1000, 3)
        out["load"]["measurements_per_s_whole_loaded_phase"] = round(self.loaded_rate, 2)
        out["load"]["history_per_canary"] = self.args.history
        out["load"]["target_measurements_per_s"] = round(len(self.load_ids) / self.args.interval, 2)
        out["load"]["canaries"] = len(self.load_ids)
        out["load"]["ramp_seconds"] = round(self.ramp_seconds, 1)
        out["sql_census"] = self.census
        return out


# -- output -------------------------------------------------------------------------------------


def environment() -> dict[str, Any]:
    return {**versions(), "checkout": checkout()}


def fmt(value: Any, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_report(bench: Bench, env: dict[str, Any], results: dict[str, Any]) -> None:
    a = bench.args
    print(f"Python {env['python']} ({env['implementation']}), aiohttp {env['aiohttp']}, "
          f"os.cpu_count()={env['cpu_count']}, {env['platform']}")
    print(f"Slipway from {env['slipway_source']}, checkout {env['checkout']}")
    print(f"Engine probe: {bench.probe}. Prometheus: in-process stand-in (own thread) answering /api/v1/query.")
    print(f"Check {CHECK}: interval {a.interval:g}s, failure_limit 1, query + baseline_query per measurement; "
          f"outbox paced {a.outbox_interval:g}s per channel.")
    print()
    print("1. Abort latency: failing measurement's answer arrived -> the engine's first action with "
          "SLIPWAY_WEIGHT=0")
    header = f"{'':<44} {'n':>3} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8}"
    for phase in ("idle", "loaded"):
        r = results["aborts"][phase]
        label = "idle Slipway" if phase == "idle" else f"while {results['load']['canaries']} canaries analyse"
        print(f"  {label}:")
        print("  " + header)
        for key, name in (("arrival_to_engine", "arrival -> engine start (the figure)"),
                          ("arrival_to_verdict", "  arrival -> watch returns 'failed'"),
                          ("verdict_to_handover", "  verdict -> runner hands the abort over"),
                          ("handover_to_engine", "  handover -> engine start"),
                          ("run_process_baseline", "run_process -> engine start (baseline)"),
                          ("measurement_at_to_engine_wall", "measurements.at -> engine start (wall, ms)")):
            s = r[key]
            print(f"  {name:<44} {s['n']:>3} {fmt(s['p50_ms']):>8} {fmt(s['p90_ms']):>8} {fmt(s['p99_ms']):>8} "
                  f"{fmt(s['max_ms']):>8}")
    print()
    load = results["load"]
    print(f"2. {load['canaries']} canaries analysing, every check every {a.interval:g}s "
          f"(ramp-up {load['ramp_seconds']}s), against the same Slipway idle, same run")
    print(f"  acks: POST /slack/events -> response read, one every {a.probe_every:g}s, alternately")
    print(f"  {'':<10} {'n':>4} {'idle p50':>9} {'idle p99':>9} {'load p50':>9} {'load p99':>9} "
          f"{'p50 x':>6} {'p99 x':>6}")
    for kind, row in results["acks"].items():
        i, l_ = row.get("idle", {}), row.get("loaded", {})
        print(f"  {'/deploy ' + kind if kind == 'help' else '/deploy svc':<10} {l_.get('n', 0):>4} "
              f"{fmt(i.get('p50_ms')):>9} {fmt(i.get('p99_ms')):>9} {fmt(l_.get('p50_ms')):>9} "
              f"{fmt(l_.get('p99_ms')):>9} {fmt(row.get('ratio_p50')):>6} {fmt(row.get('ratio_p99')):>6}")
    for name in ("idle", "loaded"):
        w = load.get(name)
        if not w:
            continue
        late = w["measurement_lateness"]
        q = w["query_time"]
        print(f"  {name:<7} loop lag p50/p99/max {fmt(w['loop_lag_p50_ms'])}/{fmt(w['loop_lag_p99_ms'])}/"
              f"{fmt(w['loop_stall_max_ms'])} ms; loop thread CPU {w['loop_cpu_share'] * 100:.0f}% of a core "
              f"(process {w['process_cpu_share'] * 100:.0f}%); measurements {w['measurements_per_s']}/s "
              f"({w['prometheus_queries_per_s']} queries/s)")
        if late["n"]:
            print(f"          measurement lateness (gap - interval) p50/p99/max {fmt(late['p50_ms'])}/"
                  f"{fmt(late['p99_ms'])}/{fmt(late['max_ms'])} ms; query time p50/p99 {fmt(q['p50_ms'])}/"
                  f"{fmt(q['p99_ms'])} ms")
    print(f"  measurement rate achieved {load['measurements_per_s_whole_loaded_phase']}/s over the whole loaded "
          f"phase ({load.get('loaded', {}).get('measurements_per_s')}/s in the ack window) of "
          f"{load['target_measurements_per_s']}/s the interval asks for; event-loop CPU per measurement "
          f"~{fmt(load.get('loop_cpu_ms_per_measurement'))} ms (loaded minus idle loop CPU / measurements)")
    if load["history_per_canary"]:
        print(f"  (each canary's watched step started with {load['history_per_canary']} earlier measurements: "
              "--history)")
    census = results["sql_census"]
    if census:
        print(f"  SQL on Slipway's connection over {census['seconds']:g}s of load alone: {census['statements']} "
              f"statements for {census['measurements']} measurements = {census['statements_per_measurement']} "
              f"per measurement ({census['commits_per_measurement']} commits); most frequent shapes, per measurement:")
        for row in census["by_shape_per_measurement"]:
            print(f"    {row['per_measurement']:>6} {row['sql']}")
    if bench.profile_text:
        print()
        print("cProfile of the loaded ack window (event loop thread), by tottime:")
        print(bench.profile_text)
    for note in bench.notes[:20]:
        print(f"note: {note}")
    if len(bench.notes) > 20:
        print(f"note: ... and {len(bench.notes) - 20} more")
    print(f"(total run {bench.elapsed:.1f}s)")


async def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING)
    env = environment()
    with tempfile.TemporaryDirectory(prefix="slipway-bench-") as workdir:
        bench = Bench(args, Path(workdir))
        try:
            await bench.start()
            await bench.run()
        finally:
            await bench.stop()
    results = bench.results()
    print_report(bench, env, results)
    if args.json:
        payload = {"environment": env, "parameters": vars(args), "probe": bench.probe, "results": results,
                   "notes": bench.notes,
                   "abort_samples_ms": [{"phase": x.phase, "arrival_to_engine": round(x.latency * 1000, 3),
                                         "arrival_to_verdict": round((x.verdict - x.arrival) * 1000, 3),
                                         "verdict_to_handover": round((x.handover - x.verdict) * 1000, 3),
                                         "handover_to_engine": round((x.engine - x.handover) * 1000, 3)}
                                        for x in bench.aborts]}
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", metavar="PATH", help="also write the results (and every abort) as JSON")
    parser.add_argument("--canaries", type=int, default=50, help="canaries analysing at once (default 50)")
    parser.add_argument("--interval", type=float, default=1.0, help="the check's interval, seconds (default 1)")
    parser.add_argument("--aborts", type=int, default=30, help="aborts measured on the idle Slipway (default 30)")
    parser.add_argument("--loaded-aborts", type=int, default=30,
                        help="aborts measured while the canaries analyse (default 30)")
    parser.add_argument("--acks", type=int, default=150,
                        help="acks of each kind (help, deploy) per window, idle and loaded (default 150)")
    parser.add_argument("--probe-every", type=float, default=0.05, help="seconds between two ack probes")
    parser.add_argument("--outbox-interval", type=float, default=0.001,
                        help="the outbox's seconds between two calls to one channel (default 0.001: unpaced, as "
                             "in ack_latency.py; Slipway's own default is 1.0)")
    parser.add_argument("--kinds", default="help,deploy",
                        help="the ack probes, alternately: help and/or deploy (default help,deploy)")
    parser.add_argument("--census", type=float, default=3.0,
                        help="seconds of SQL tracing under load, after the loaded acks (0: none)")
    parser.add_argument("--history", type=int, default=0,
                        help="passing measurements recorded for each load canary's step before the loaded "
                             "window, as if watched that long already (default 0)")
    parser.add_argument("--profile", action="store_true", help="also print a cProfile of the loaded ack window")
    args = parser.parse_args(argv)
    args.kinds = [kind.strip() for kind in args.kinds.split(",") if kind.strip()]
    if not args.kinds or set(args.kinds) - {"help", "deploy"}:
        parser.error("--kinds: help, deploy or both")
    if args.canaries < 1 or args.interval <= 0 or args.aborts < 1 or args.loaded_aborts < 0 or args.acks < 1 \
            or args.history < 0:
        parser.error("--canaries, --aborts, --acks at least 1; --interval above 0; --loaded-aborts not negative")
    return args


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
