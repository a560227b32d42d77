#!/usr/bin/env python
"""Execution latency: from the click to the deploy engine running, next to the
engine's own start-up time.

Run from the repository root::

    python bench/execution_latency.py [--n 200] [--json results.json] [--slack-latency MS]

It imports Slipway from the checkout it sits in (the repository root is put
first on ``sys.path``), not from wherever the editable install points, and
prints which copy it measured.

What is measured
----------------
"The executor starting" is the moment the deploy engine's program begins
executing. Every service's ``deploy.command`` is a tiny program (the probe)
whose first action is to read ``CLOCK_MONOTONIC`` and append it, with
``$SLIPWAY_DEPLOY_ID``, to a file named in its argv; then it exits 0.
CLOCK_MONOTONIC is system-wide on Linux, so that reading is comparable with
``time.monotonic()`` in the benchmark process. The probe is chosen for the
smallest start-up of its own, with no compiler needed: by default ``perl -e``
reading the clock through the ``clock_gettime`` system call (no module to
load: ~1.5 ms from a bare ``create_subprocess_exec`` to its first statement,
~3 ms through ``run_process``), or with ``--probe python``, this Python
(``sys.executable``) with ``-S -I -c`` (~10 ms). Whatever the probe costs,
both sides below pay it alike.

Three figures, each a sequence of single measurements, one at a time:

* ``approve``: click -> engine start. ``time.monotonic()`` just before the
  load generator sends the signed Approve click (a ``block_actions`` payload
  for ``deploy_approve``, POSTed to ``/slack/events``), to the time the probe
  recorded. The click is the final approval of a production deploy (1
  approval from U0ALICE, no checklist), so Slipway records it, calls
  ``DeployRunner.start``, moves the deploy to ``deploying`` and runs the
  command engine, whose ``run_process`` spawns the probe.
* ``rollback``: Rollback confirmation -> rollback engine start. The same, for
  a click on the Rollback button (``deploy_rollback``, value
  ``"<deploy_id>:1.0.0"``) on the message of the current production deploy.
  That click *is* the confirmation: Slack shows the button's confirm dialog
  client-side and only sends the click once it is confirmed.
* ``baseline``: the engine's own start-up. ``time.monotonic()`` just before
  calling the project's own ``bot.executors.process.run_process`` directly,
  with the same argv and the same kind of environment (a deploy's
  ``SLIPWAY_*`` variables), to the time the probe recorded. Measured in the
  same process and event loop, interleaved with the two above.

Each is reported as n, median, p90, p99 and max, and the two Slipway figures
also against the baseline: the difference (what Slipway adds on top of
spawning the program) and the ratio. Two more columns split the Slipway
figures at the runner's ``ExecutorStarted`` event (``bot/deploys/runner.py``), the
probe the runner calls just before ``executor.run``: ``click->runner`` is
Slipway's own path up to handing the deploy to the engine, ``runner->start``
is the engine starting from there (comparable with the baseline, but with
Slipway's other background work for the same click running alongside). Also
shown: when the ack came back, and the Slack Web API calls the fake Slack
received between the click and the engine start.

Setup
-----
One production environment (1 approval from U0ALICE or U0BOB, empty
checklist, no ``requires``) and services ``svc0`` ... ``svcN``, one per
iteration, each with the probe as ``deploy.command`` (no separate rollback
engine, so a rollback runs the same command). For every service, 1.0.0 is
recorded as succeeded on production through the store (as
``Harness.mark_succeeded`` does), and 1.1.0 is requested over HTTP by U0DAVE
(unmeasured, before the loop). Each iteration then, in a rotating order:

* clicks Approve on svcI 1.1.0 (measured ``approve``); the deploy runs to
  ``succeeded`` and its message gets a "Roll back to 1.0.0" button;
* clicks that Rollback button (measured ``rollback``), after the approve has
  settled, so svcI has had two successful production deploys, 1.0.0 then
  1.1.0;
* calls ``run_process`` with the probe (measured ``baseline``).

After each measurement the benchmark waits until Slipway's background work is
done (``slipway.tasks.wait_idle()``: the deploy or rollback has finished,
its messages and thread posts are sent), so no two measurements overlap
(concurrency 1). Then, unmeasured, ``gc.collect()`` + ``gc.freeze()``, so no
measurement pays for collecting the heap the benchmark accumulates. A few
unmeasured warm-up iterations (``--warmup``) come first.

Caveats
-------
Everything (the fake Slack, Slipway, the load generator) shares one event
loop, and the fake Slack answers in well under a millisecond of network
time; real Slack Web API calls take tens to hundreds of milliseconds. Any
Web API call Slipway *awaits* between the click and the engine start is
therefore much cheaper here than in production. ``--slack-latency MS`` makes
the fake Slack wait that long before answering each call, to show how the
figures scale with it. p99 of 200 samples is the 2nd-3rd largest value:
read it as "the slow tail", and run more than once on a noisy machine.

This is a benchmark, not a test: nothing is asserted on timing.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import platform
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from benchlib import REPO_ROOT, checkout, percentile, versions  # noqa: E402  (first: puts this checkout on sys.path)

from bot.config import parse_config  # noqa: E402
from bot.executors.base import Job  # noqa: E402
from bot.executors.process import run_process  # noqa: E402
from bot.runtime.composition import (  # noqa: E402
    SLACK_EVENTS_PATH,
    Slipway,
    create_slipway,
    create_web_app,
)
from bot.runtime.settings import Settings  # noqa: E402
from bot.sandbox.fake_slack import FakeSlack, Message, SlackSender  # noqa: E402
from bot.slack.blocks import ACTION_APPROVE, ACTION_ROLLBACK  # noqa: E402
from store import Store  # noqa: E402

SIGNING_SECRET = "bench-signing-secret"
BOT_TOKEN = "xoxb-bench-token"
CHANNEL = "C0DEPLOYS"
ENVIRONMENT = "production"
REQUESTER = "U0DAVE"
APPROVER = "U0ALICE"
LIVE_VERSION = "1.0.0"  # recorded as succeeded on production before the run: the rollback target
NEW_VERSION = "1.1.0"  # requested, then approved (measured), then rolled back (measured)
KINDS = ("approve", "rollback", "baseline")
# The order of the three measurements within an iteration rotates (a rollback
# always follows its own service's approve).
ORDERS = (("approve", "rollback", "baseline"), ("baseline", "approve", "rollback"),
          ("approve", "baseline", "rollback"))

# -- the probe: the deploy "engine" ------------------------------------------------------

# clock_gettime(2) system call numbers, for perl without Time::HiRes (an XS
# module whose loading alone costs ~4-5 ms).
CLOCK_GETTIME_SYSCALL = {"x86_64": 228, "aarch64": 113}
CLOCK_MONOTONIC = 1  # Linux

PERL_SCRIPT = (
    'my $t = "\\0" x 16; syscall(%d, %d, $t) == 0 or exit 3; my ($s, $ns) = unpack("q q", $t); '
    'open(my $f, ">>", $ARGV[0]) or exit 2; '
    'printf $f "%%s %%d.%%09d\\n", ($ENV{SLIPWAY_DEPLOY_ID} // "-"), $s, $ns; close($f) or exit 2;'
)
PYTHON_SCRIPT = (
    "import time;t=time.monotonic();import os,sys\n"
    "with open(sys.argv[1],'a') as f:f.write('%s %.9f\\n'%(os.environ.get('SLIPWAY_DEPLOY_ID','-'),t))"
)


def probe_argv(kind: str, stamps: Path) -> tuple[list[str], str]:
    """The probe's argv (the stamp file last) and a description of it."""
    perl = shutil.which("perl")
    syscall = CLOCK_GETTIME_SYSCALL.get(platform.machine())
    if kind == "auto":
        kind = "perl" if perl and syscall and sys.platform == "linux" else "python"
    if kind == "perl":
        if not (perl and syscall and sys.platform == "linux"):
            raise SystemExit("--probe perl needs perl on Linux x86_64/aarch64")
        return ([perl, "-e", PERL_SCRIPT % (syscall, CLOCK_MONOTONIC), str(stamps)],
                f"perl -e (clock_gettime(CLOCK_MONOTONIC) via syscall {syscall}) [{perl}]")
    # sys.executable, not `python3` on PATH: that may be a shim script (pyenv) with a start-up of its own.
    return ([sys.executable, "-S", "-I", "-c", PYTHON_SCRIPT, str(stamps)],
            f"python -S -I -c (time.monotonic()) [{sys.executable}]")


class Stamps:
    """The probe's output: ``<SLIPWAY_DEPLOY_ID> <CLOCK_MONOTONIC seconds>`` per run."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.seen: dict[str, float] = {}

    def read(self) -> dict[str, float]:
        if self.path.exists():
            with self.path.open("rb") as f:
                f.seek(self.offset)
                data = f.read()
            complete = data[:data.rfind(b"\n") + 1]
            self.offset += len(complete)
            for line in complete.decode().splitlines():
                tag, _, value = line.partition(" ")
                self.seen[tag] = float(value)
        return self.seen

    async def wait_for(self, tag: str, timeout: float = 10.0) -> float | None:
        deadline = time.monotonic() + timeout
        while tag not in self.read():
            if time.monotonic() > deadline:
                return None
            await asyncio.sleep(0.001)
        return self.seen[tag]


# -- the fake Slack, timed --------------------------------------------------------------


class TimedFakeSlack(FakeSlack):
    """The project's fake Slack, noting when each Web API call arrived, and
    optionally answering each one ``delay`` seconds late (``--slack-latency``)."""

    def __init__(self, *args: Any, delay: float = 0.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.delay = delay
        self.arrivals: list[tuple[float, str]] = []  # (time.monotonic(), method)

    async def _api(self, request: web.Request) -> web.Response:
        self.arrivals.append((time.monotonic(), request.match_info["method"]))
        if self.delay:
            await asyncio.sleep(self.delay)
        return await super()._api(request)


# -- statistics ------------------------------------------------------------------------------


def summary(values: list[float]) -> dict[str, Any]:
    """n and percentiles, in milliseconds."""
    ordered = sorted(values)
    ms = lambda s: round(s * 1000, 3)  # noqa: E731
    return {
        "n": len(ordered),
        "p50_ms": ms(percentile(ordered, 0.50)),
        "p90_ms": ms(percentile(ordered, 0.90)),
        "p99_ms": ms(percentile(ordered, 0.99)),
        "max_ms": ms(ordered[-1]) if ordered else None,
        "mean_ms": ms(sum(ordered) / len(ordered)) if ordered else None,
    }


@dataclass
class Measurement:
    kind: str
    service: str | None
    deploy_id: int | None
    sent: float  # time.monotonic() just before the click was sent / run_process was called
    started: float  # the probe's CLOCK_MONOTONIC reading
    acked: float | None = None  # the click's HTTP response read
    runner: float | None = None  # DeployRunner.on_executor_start called
    calls: list[str] = field(default_factory=list)  # Web API calls that arrived between sent and started

    @property
    def latency(self) -> float:
        return self.started - self.sent


# -- the benchmark ------------------------------------------------------------------------------


def config_text(services: int, argv: list[str]) -> str:
    lines = [
        f"channel: {CHANNEL}",
        "environments:",
        f"  - name: {ENVIRONMENT}",
        "    approvals:",
        "      required: 1",
        f"      approvers: [{APPROVER}, U0BOB]",
        "services:",
    ]
    for i in range(services):
        lines += [f"  svc{i}:", "    deploy:", f"      command: {json.dumps(argv)}"]
    return "\n".join(lines) + "\n"


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.services = args.n + args.warmup
        self.stamps = Stamps(workdir / "stamps.txt")
        self.argv, self.probe = probe_argv(args.probe, self.stamps.path)
        self.workdir = workdir
        self.fake: TimedFakeSlack | None = None
        self.store: Store | None = None
        self.slipway: Slipway | None = None
        self.runner: web.AppRunner | None = None
        self.session: aiohttp.ClientSession | None = None
        self.sender: SlackSender | None = None
        self.url = ""
        self.runner_calls: dict[int, float] = {}
        self.has_runner_probe = False
        self.measurements: list[Measurement] = []
        self.notes: list[str] = []
        self.statuses: dict[str, int] = {}
        self.elapsed = 0.0

    async def start(self) -> None:
        self.fake = await TimedFakeSlack(token=BOT_TOKEN, delay=self.args.slack_latency / 1000).start()
        settings = Settings(bot_token=BOT_TOKEN, signing_secret=SIGNING_SECRET, api_url=self.fake.api_url)
        self.store = Store.open(self.workdir / "slipway.db")
        config = parse_config(config_text(self.services, self.argv))
        if config.services["svc0"].deploy.command != self.argv:
            raise SystemExit(f"the probe's argv did not survive the config: {config.services['svc0'].deploy.command}")
        self.slipway = create_slipway(config, self.store, settings)
        runner = self.slipway.runner

        def probe(deploy_id: int) -> None:
            self.runner_calls[deploy_id] = time.monotonic()

        events = getattr(self.slipway, "events", None)
        self.has_runner_probe = events is not None or hasattr(runner, "on_executor_start")
        if events is not None:  # this checkout: the runner publishes ExecutorStarted on the event bus
            from bot.events import ExecutorStarted
            events.subscribe(ExecutorStarted, lambda event: probe(event.deploy_id))
        elif self.has_runner_probe:  # older checkouts: a probe attribute on the runner
            runner.on_executor_start = probe
        self.runner = web.AppRunner(create_web_app(self.slipway))
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}{SLACK_EVENTS_PATH}"
        self.sender = SlackSender(self.url, SIGNING_SECRET, self.fake)  # only builds and signs bodies
        self.session = aiohttp.ClientSession()

    async def stop(self) -> None:
        if self.session is not None:
            await self.session.close()
        if self.runner is not None:  # Slipway's cleanup cancels its background tasks
            await self.runner.cleanup()
        if self.store is not None:
            self.store.close()
        if self.fake is not None:
            await self.fake.stop()

    async def settle(self) -> None:
        assert self.slipway is not None
        await self.slipway.tasks.wait_idle()

    async def tidy(self) -> None:
        """Unmeasured, between measurements: let closed connections' callbacks
        run, then collect garbage and freeze what survives."""
        await asyncio.sleep(0.005)
        gc.collect()
        gc.freeze()

    async def post(self, body: str) -> tuple[float, int, str, float]:
        """POST a signed body; returns (sent, status, text, acked). Signing is not timed."""
        assert self.sender is not None and self.session is not None
        headers = self.sender.signed_headers(body)
        data = body.encode()
        sent = time.monotonic()
        async with self.session.post(self.url, data=data, headers=headers) as response:
            text = await response.text()
        return sent, response.status, text, time.monotonic()

    # -- setup ---------------------------------------------------------------------------

    def seed(self) -> None:
        """LIVE_VERSION succeeded on production for every service, through the
        store's own transitions (as ``Harness.mark_succeeded`` does)."""
        assert self.store is not None
        for i in range(self.services):
            deploy = self.store.deploys.create(
                service=f"svc{i}", environment=ENVIRONMENT, version=LIVE_VERSION, version_prefixed=False,
                requested_by=REQUESTER, previous_version=None, checklist=[], needs_approval=False)
            for state in ("deploying", "verifying", "succeeded"):
                deploy = self.store.deploys.transition(deploy.id, allowed_from=(deploy.status,), to=state,
                                                       actor=None, action=state)

    async def request_all(self) -> dict[str, int]:
        """NEW_VERSION requested on production for every service, over HTTP
        (unmeasured, a few at a time); the deploy ids awaiting approval."""
        assert self.sender is not None and self.store is not None
        queue = [f"svc{i}" for i in range(self.services)]

        async def client() -> None:
            while queue:
                service = queue.pop(0)
                _, status, text, _ = await self.post(
                    self.sender.command_body(f"{service} {NEW_VERSION} {ENVIRONMENT}", REQUESTER))
                if status != 200 or "waiting for approval" not in text:
                    self.notes.append(f"setup: {service} {NEW_VERSION} not accepted: {status} {text[:200]}")

        await asyncio.gather(*(client() for _ in range(8)))
        await self.settle()
        rows = self.store.db.execute(
            "SELECT service, id FROM deploys WHERE environment = ? AND status = 'awaiting_approval' "
            "AND message_ts IS NOT NULL", [ENVIRONMENT]).fetchall()
        return dict(rows)

    def message(self, deploy_id: int) -> Message:
        assert self.store is not None and self.fake is not None
        deploy = self.store.deploys.get(deploy_id)
        assert deploy.channel and deploy.message_ts
        return self.fake.messages[(deploy.channel, deploy.message_ts)]

    # -- one measurement each ---------------------------------------------------------------

    async def click(self, kind: str, service: str, deploy_id: int, action_id: str) -> Measurement | None:
        """Click ``action_id`` on ``deploy_id``'s message; the measurement of the
        engine run it starts (None, with a note, when it did not start one)."""
        assert self.store is not None and self.fake is not None and self.sender is not None
        try:
            body = self.sender.click_body(self.message(deploy_id), APPROVER, action_id)
        except LookupError as missing:  # e.g. no Rollback button: the approve did not succeed
            self.notes.append(f"{kind} {service} #{deploy_id}: {missing}")
            return None
        last_id = self.store.db.execute("SELECT max(id) FROM deploys").fetchone()[0]
        calls_from = len(self.fake.arrivals)
        sent, status, text, acked = await self.post(body)
        await self.settle()
        if kind == "approve":
            started_id: int | None = deploy_id
        else:
            row = self.store.db.execute("SELECT id FROM deploys WHERE rollback_of = ? AND id > ?",
                                        [deploy_id, last_id]).fetchone()
            started_id = row[0] if row else None
        started = await self.stamps.wait_for(str(started_id), timeout=2.0) if started_id is not None else None
        await self.settle()
        if status != 200 or started is None:
            self.notes.append(f"{kind} {service} #{deploy_id}: no engine start recorded "
                              f"(HTTP {status} {text[:100]!r}, deploy {started_id})")
            return None
        final = self.store.deploys.get(started_id).status
        if final != "succeeded":
            self.notes.append(f"{kind} {service}: deploy #{started_id} ended {final}")
        calls = [method for at, method in self.fake.arrivals[calls_from:] if sent <= at <= started]
        return Measurement(kind, service, started_id, sent, started, acked, self.runner_calls.get(started_id), calls)

    async def baseline(self, tag: str) -> Measurement | None:
        """``run_process`` with the same argv and a deploy's kind of environment."""
        job = Job(0, "svc-baseline", ENVIRONMENT, NEW_VERSION, LIVE_VERSION, None, datetime.now(timezone.utc))
        env = {**job.environ, "SLIPWAY_DEPLOY_ID": tag}
        sent = time.monotonic()
        result = await run_process(self.argv, env=env, timeout=600.0)
        started = await self.stamps.wait_for(tag, timeout=2.0)
        if not result.succeeded or started is None:
            self.notes.append(f"baseline {tag}: {result.summary} {result.output_tail[-200:]!r}")
            return None
        return Measurement("baseline", None, None, sent, started)

    async def iteration(self, number: int, deploy_id: int, keep: bool) -> None:
        service = f"svc{number}"
        for kind in ORDERS[number % len(ORDERS)]:
            if kind == "approve":
                m = await self.click("approve", service, deploy_id, ACTION_APPROVE)
            elif kind == "rollback":
                m = await self.click("rollback", service, deploy_id, ACTION_ROLLBACK)
            else:
                m = await self.baseline(f"baseline-{number}")
            if m is not None and keep:
                self.measurements.append(m)
            await self.tidy()

    async def run(self) -> None:
        assert self.store is not None
        t0 = time.perf_counter()
        self.seed()
        awaiting = await self.request_all()
        await self.tidy()
        print(f"setup: {self.services} services, {len(awaiting)} production deploys awaiting approval "
              f"in {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
        for number in range(self.services):
            service = f"svc{number}"
            if service not in awaiting:
                continue
            warm = number < self.args.warmup
            await self.iteration(number, awaiting[service], keep=not warm)
            done = number + 1 - self.args.warmup
            if done > 0 and done % 50 == 0:
                print(f"{done} iterations ({time.perf_counter() - t0:.1f}s)", file=sys.stderr, flush=True)
        self.elapsed = time.perf_counter() - t0
        self.statuses = dict(Counter(row[0] for row in self.store.db.execute("SELECT status FROM deploys")))

    # -- results --------------------------------------------------------------------------------

    def of(self, kind: str) -> list[Measurement]:
        return [m for m in self.measurements if m.kind == kind]

    def results(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for kind in KINDS:
            ms = self.of(kind)
            row: dict[str, Any] = {"latency": summary([m.latency for m in ms])}
            if kind != "baseline":
                row["ack"] = summary([m.acked - m.sent for m in ms if m.acked is not None])
                with_runner = [m for m in ms if m.runner is not None]
                if with_runner:
                    row["click_to_runner"] = summary([m.runner - m.sent for m in with_runner])
                    row["runner_to_start"] = summary([m.started - m.runner for m in with_runner])
                row["started_before_ack"] = sum(1 for m in ms if m.acked is not None and m.started < m.acked)
                sequences = Counter(" ".join(m.calls) for m in ms)
                row["web_api_calls_before_start"] = {
                    "median_count": percentile(sorted(len(m.calls) for m in ms), 0.5),
                    "most_common": [{"calls": seq.split(), "times": times} for seq, times in sequences.most_common(3)],
                }
            out[kind] = row
        base = out["baseline"]["latency"]
        for kind in ("approve", "rollback"):
            lat = out[kind]["latency"]
            out[kind]["vs_baseline"] = {
                "added_p50_ms": round(lat["p50_ms"] - base["p50_ms"], 3),
                "added_p99_ms": round(lat["p99_ms"] - base["p99_ms"], 3),
                "ratio_p50": round(lat["p50_ms"] / base["p50_ms"], 2) if base["p50_ms"] else None,
                "ratio_p99": round(lat["p99_ms"] / base["p99_ms"], 2) if base["p99_ms"] else None,
            }
        return out


# -- output ------------------------------------------------------------------------------------


def environment() -> dict[str, Any]:
    import bot.executors.process
    import bot.runtime.composition
    import handlers
    import store

    sources = {name: str(Path(module.__file__).resolve().parents[depth])
               for name, module, depth in (("bot", bot.runtime.composition, 1), ("bot.executors", bot.executors.process, 2),
                                           ("handlers", handlers, 1), ("store", store, 1))}
    return {**versions(), "checkout": checkout(), "module_sources": sources}


LABELS = {
    "approve": "approve click -> engine start",
    "rollback": "rollback click -> engine start",
    "baseline": "run_process -> engine start",
}


def print_report(bench: Bench, env: dict[str, Any], results: dict[str, Any]) -> None:
    print(f"Python {env['python']} ({env['implementation']}), slack_bolt {env['slack_bolt']}, "
          f"slack_sdk {env['slack_sdk']}, aiohttp {env['aiohttp']}, os.cpu_count()={env['cpu_count']}, "
          f"{env['platform']}")
    print(f"Slipway from {env['slipway_source']}, checkout {env['checkout']}")
    elsewhere = {name: path for name, path in env["module_sources"].items() if path != str(REPO_ROOT)}
    if elsewhere:
        print(f"WARNING: not every module came from {REPO_ROOT}: {elsewhere}")
    print(f"Engine (probe): {bench.probe}")
    slack = (f"answers each call {bench.args.slack_latency:g} ms late (--slack-latency)" if bench.args.slack_latency
             else "answers at once (loopback, same event loop)")
    print(f"Fake Slack {slack}.")
    print("Latency = time.monotonic() just before the signed click is POSTed to /slack/events (or just before")
    print("run_process() is called, for the baseline) -> the CLOCK_MONOTONIC reading that is the engine program's")
    print("first action. Sequential single measurements (concurrency 1), interleaved; Slipway's background work")
    print("is drained between measurements.")
    print()
    header = (f"{'':<33} {'n':>4} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8}   "
              f"{'+p50 ms':>8} {'+p99 ms':>8} {'p50 x':>6} {'p99 x':>6}")
    print(header)
    print("-" * len(header))
    for kind in KINDS:
        s = results[kind]["latency"]
        line = (f"{LABELS[kind]:<33} {s['n']:>4} {s['p50_ms']:>8.2f} {s['p90_ms']:>8.2f} {s['p99_ms']:>8.2f} "
                f"{s['max_ms']:>8.2f}")
        if kind != "baseline":
            v = results[kind]["vs_baseline"]
            line += (f"   {v['added_p50_ms']:>8.2f} {v['added_p99_ms']:>8.2f} {v['ratio_p50']:>6.2f} "
                     f"{v['ratio_p99']:>6.2f}")
        print(line)
    print("(+p50/+p99: minus the baseline's p50/p99; x: divided by it)")
    print()
    print("Where the Slipway time goes (p50 / p99 ms):")
    for kind in ("approve", "rollback"):
        r = results[kind]
        parts = [f"ack {r['ack']['p50_ms']:.2f} / {r['ack']['p99_ms']:.2f}"]
        if "click_to_runner" in r:
            parts.append(f"click->runner hands over {r['click_to_runner']['p50_ms']:.2f} / "
                         f"{r['click_to_runner']['p99_ms']:.2f}")
            parts.append(f"runner->engine start {r['runner_to_start']['p50_ms']:.2f} / "
                         f"{r['runner_to_start']['p99_ms']:.2f}")
        print(f"  {kind:<8} " + "; ".join(parts))
        calls = r["web_api_calls_before_start"]
        common = calls["most_common"][0] if calls["most_common"] else {"calls": [], "times": 0}
        print(f"           engine started before the ack in {r['started_before_ack']}/{r['latency']['n']}; "
              f"Web API calls between click and engine start: median {calls['median_count']:g}, most often "
              f"[{', '.join(common['calls'])}] ({common['times']}x)")
    if not bench.has_runner_probe:
        print("  (DeployRunner has no on_executor_start probe in this checkout: no click->runner split)")
    print()
    base = results["baseline"]["latency"]
    for kind in ("approve", "rollback"):
        v = results[kind]["vs_baseline"]
        print(f"Slipway adds {v['added_p50_ms']:.2f} ms at the median ({v['ratio_p50']:.2f}x) and "
              f"{v['added_p99_ms']:.2f} ms at p99 ({v['ratio_p99']:.2f}x) to the engine's own start-up "
              f"({base['p50_ms']:.2f} / {base['p99_ms']:.2f} ms) for the {kind} click.")
    print(f"Deploys at the end, by status: {bench.statuses}")
    for note in bench.notes[:20]:
        print(f"note: {note}")
    if len(bench.notes) > 20:
        print(f"note: ... and {len(bench.notes) - 20} more")
    print(f"(total run {bench.elapsed:.1f}s, {bench.args.warmup} warm-up iterations not counted)")


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
                   "notes": bench.notes, "deploys_by_status": bench.statuses,
                   "samples_ms": {kind: [round(m.latency * 1000, 3) for m in bench.of(kind)] for kind in KINDS}}
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200,
                        help="measurements of each kind (approve, rollback, baseline); default 200")
    parser.add_argument("--json", metavar="PATH", help="also write the results (and every sample) as JSON")
    parser.add_argument("--warmup", type=int, default=5, help="unmeasured iterations first (default 5)")
    parser.add_argument("--probe", choices=("auto", "perl", "python"), default="auto",
                        help="the engine program: perl (default where it runs: ~1.5 ms start-up) or "
                             "this Python with -S -I (~10 ms)")
    parser.add_argument("--slack-latency", type=float, default=0.0, metavar="MS",
                        help="make the fake Slack answer each Web API call this many ms late (default 0)")
    args = parser.parse_args(argv)
    if args.n < 1 or args.warmup < 0 or args.slack_latency < 0:
        parser.error("--n must be at least 1, --warmup and --slack-latency not negative")
    return args


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
