#!/usr/bin/env python
"""Slack ack latency: Slipway next to a bare slack-bolt app that only acks.

Run from the repository root::

    python bench/ack_latency.py [--json results.json] [--engine true|none] [--n1 600] [--n50 1000]
                                [--n-open 200] [--open-ms 50] [--fake-slack inprocess|process]

It imports Slipway from the checkout it sits in (the repository root is put
first on ``sys.path``), not from wherever the editable install points.

What is measured
----------------
The time from sending the HTTP POST to having read the whole HTTP response
(the ack), for two surfaces:

* ``command``: the ``/deploy`` slash command. Every request names a different
  service (``svc0`` … ``svcN``) on ``staging`` (no approvals), so every one is
  an *accepted* deploy: parsing, the policy checks and the SQLite insert
  before the ack, then in the background the channel post
  (``chat.postMessage`` + ``chat.getPermalink``) and the deploy's run.
* ``approve``: an Approve click (a ``block_actions`` payload for
  ``deploy_approve``). Every click approves a different production deploy
  awaiting approval (production needs 1 approval from U0ALICE/U0BOB and has
  no checklist, so each click is the final approval; the deploys are
  requested over HTTP beforehand, unmeasured, after version 1.0.0 of every
  service was recorded as succeeded on staging through the store, as
  ``Harness.mark_succeeded`` does). After the ack the approval is recorded,
  the message refreshed (``chat.update``) and the deploy run.

"The deploy's run" is Slipway's execution lifecycle (``bot/deploys/runner.py``),
which depends on the services' engine, chosen with ``--engine``:

* ``true`` (default, the happy path): ``deploy.command: [true]``, one cheap
  subprocess per deploy; the deploy goes deploying → verifying → succeeded,
  with its message updated and its thread posted to at each step (and a ship
  report on production).
* ``none``: no engine configured; the runner records each approved deploy as
  failed ("no deploy engine is configured") and says so in the thread. Less
  background work, no subprocesses: Slipway's own Slack/SQLite work only.

Both go through the real HTTP endpoint (``POST /slack/events``), signed as
Slack signs them (v0 HMAC-SHA256), at concurrency 1 and 50 (closed loop:
that many requests in flight, each client sends its next one as soon as its
previous one is answered), and in an open-loop cell (``every 50ms``: one
request every ``--open-ms`` ms, sent on time whether or not the previous one
was answered; ``--n-open`` requests per app, 0 for none).

The closed loop at concurrency 1 is *saturated*: the next request goes out
the moment an ack is read, while the background work the previous request
started (Slipway's channel post, its deploy's run and message edits: ~8-11 ms
of CPU per deploy, against ~11 ms per ack) is still running on the same event
loop, so each ack queues behind some of it. Real Slack traffic arrives with
gaps; the open-loop cell gives the background work the gap a person's think
time would. It is shown next to the closed-loop cells, marked ``info``: the
target is stated for the closed-loop ones.

The comparison is a *bare* ``AsyncApp`` with the same signing secret and
token, talking to the same fake Slack (for ``auth.test``), served the same
way (aiohttp on 127.0.0.1, port 0), whose ``/deploy`` and ``deploy_approve``
listeners do nothing but ``await ack()``. It is served by bolt's own aiohttp
server (``AsyncApp.web_app``); Slipway by ``bot.runtime.composition.create_web_app``.

Fairness
--------
By default everything (fake Slack, both servers, the load generator) runs in
one process and one event loop, so the two apps are measured under the same
conditions; the ratio slipway/bare is the figure to read, not the absolute
numbers. The fake Slack's own work (parsing, recording and answering every
Web API call) then runs on the loop that serves the acks too, and is charged
to Slipway (the bare app makes no Web API calls after its ``auth.test``).
``--fake-slack process`` runs it in a process of its own
(``bench/fake_slack_server.py``): both apps reach it over loopback as they
would reach Slack, and ``cpu/req`` no longer includes it (its CPU per request
is the ``fake`` column). Both settings are worth reading side by side: the
in-process one charges Slipway for work real Slack does on its own servers;
the separate process leaves Slipway's own work on its loop, nothing else. Each
cell is split into rounds (25 requests at concurrency 1, 100 at 50 by
default), and the apps take turns round by round (the order flips every
round). Before each cell both apps get an unmeasured warm-up that fills their
keep-alive pools (and bolt's ``auth.test`` cache). After each round Slipway's
background work is drained (``slipway.tasks.wait_idle()``), then, unmeasured,
``gc.collect()`` + ``gc.freeze()`` run, so one round never pays for the
previous round's work nor for collecting the heap the benchmark itself
accumulates. *Within* a round, Slipway's background work (SQLite writes, Web
API calls to the fake Slack, which is served by the same event loop) runs
concurrently with the acks still in flight: that is realistic, and part of
what is measured.

Because of that drain, background work a round leaves behind is not charged
to any ack. The ``req/s`` column therefore counts the drain time too
(requests / (round time + drain time)), and ``cpu/req`` is the process CPU
time per request over the same spans: together they show the whole work an
app does per request, not just what happened to land before the acks.

Context for the numbers
-----------------------
With ``process_before_response=False`` (both apps), bolt's async listener
runner starts the listener as a task and then polls for the ack every 10 ms
(``await asyncio.sleep(0.01)`` in ``slack_bolt/listener/asyncio_runner.py``).
So no ack is answered in less than ~10 ms, and at concurrency 1 any work a
listener does before ``ack()`` that takes less than those 10 ms is hidden by
the poll. At concurrency 50 (closed loop) the one event loop is saturated:
an ack waits for whatever else the loop runs meanwhile, so latency grows with
the CPU time per request (for the bare app, about 50 x its ``cpu/req``), and
Slipway's background work counts as much as its ack path.

This is a benchmark, not a test: nothing is asserted on timing. It prints
whether the target (Slipway's p99 within 1.2x the bare app's, at both
concurrencies, closed loop) was met, as measured; issue 11 asks for p50 too
at concurrency 1 (the ``p50 x`` column).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import shutil
import sys
import tempfile
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from benchlib import percentile, versions  # noqa: E402  (first: puts this checkout on sys.path)
from slack_bolt.async_app import AsyncAck, AsyncApp
from slack_sdk.web.async_client import AsyncWebClient

from bot.config import parse_config  # noqa: E402
from bot.runtime.composition import (  # noqa: E402
    SLACK_EVENTS_PATH,
    Slipway,
    create_slipway,
    create_web_app,
)
from bot.runtime.settings import Settings  # noqa: E402
from bot.sandbox.fake_slack import FakeSlack, Message, SlackSender  # noqa: E402
from bot.slack.blocks import ACTION_APPROVE  # noqa: E402
from store import Store  # noqa: E402

SIGNING_SECRET = "bench-signing-secret"
BOT_TOKEN = "xoxb-bench-token"
CHANNEL = "C0DEPLOYS"
REQUESTER = "U0DAVE"
APPROVER = "U0ALICE"
SEED_VERSION = "1.0.0"   # succeeded on staging for every service before the run
STAGING_VERSION = "2.0.0"  # what the command benchmark asks for on staging
TARGET_RATIO = 1.2
APPS = ("bare", "slipway")
FAKE_SLACK_SERVER = Path(__file__).with_name("fake_slack_server.py")


def config_text(services: int, engine: list[str] | None = None) -> str:
    """Staging (no approvals) → production (1 approval, no checklist), many
    services; each with ``engine`` as its ``deploy.command``, or with no engine."""
    lines = [
        f"channel: {CHANNEL}",
        "environments:",
        "  - name: staging",
        "  - name: production",
        "    requires: staging",
        "    approvals:",
        "      required: 1",
        f"      approvers: [{APPROVER}, U0BOB]",
        "services:",
    ]
    for i in range(services):
        if engine is None:
            lines.append(f"  svc{i}: {{}}")
        else:
            lines += [f"  svc{i}:", "    deploy:", f"      command: {json.dumps(engine)}"]
    return "\n".join(lines) + "\n"


# -- the fake Slack in a process of its own ----------------------------------------------


class FakeSlackProcess:
    """``bench/fake_slack_server.py`` in a child process (``--fake-slack process``):
    the same fake Web API, reached over loopback, its work off this process's
    event loop. Offers what the benchmark reads of an in-process FakeSlack."""

    def __init__(self) -> None:
        self.url = ""
        self._process: asyncio.subprocess.Process | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self, token: str) -> "FakeSlackProcess":
        self._process = await asyncio.create_subprocess_exec(
            sys.executable, str(FAKE_SLACK_SERVER), "--token", token,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        assert self._process.stdout is not None
        self.url = (await asyncio.wait_for(self._process.stdout.readline(), 30)).decode().strip()
        if not self.url.startswith("http://"):
            raise RuntimeError(f"bench/fake_slack_server.py did not start (said {self.url!r})")
        self._session = aiohttp.ClientSession()
        return self

    @property
    def api_url(self) -> str:
        return f"{self.url}/api/"

    def response_url(self, key: str = "r") -> str:
        return f"{self.url}/response/{key}"

    async def message(self, channel: str, ts: str) -> Message:
        assert self._session is not None
        async with self._session.get(f"{self.url}/bench/message", params={"channel": channel, "ts": ts}) as answer:
            answer.raise_for_status()
            m = await answer.json()
        return Message(m["channel"], m["ts"], m["text"], m["blocks"], m["thread_ts"])

    async def stats(self) -> dict[str, Any]:
        """Its process CPU time (seconds) and the Web API calls it answered, by method."""
        assert self._session is not None
        async with self._session.get(f"{self.url}/bench/stats") as answer:
            return await answer.json()

    async def tidy(self) -> None:
        assert self._session is not None
        async with self._session.post(f"{self.url}/bench/tidy") as answer:
            await answer.read()

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._process is not None:
            assert self._process.stdin is not None
            self._process.stdin.close()
            try:
                await asyncio.wait_for(self._process.wait(), 10)
            except TimeoutError:
                self._process.kill()
                await self._process.wait()


# -- the two servers ------------------------------------------------------------------


def bare_app(fake: FakeSlack | FakeSlackProcess) -> AsyncApp:
    app = AsyncApp(client=AsyncWebClient(token=BOT_TOKEN, base_url=fake.api_url), signing_secret=SIGNING_SECRET)

    @app.command("/deploy")
    async def deploy(ack: AsyncAck) -> None:
        await ack()

    @app.action(ACTION_APPROVE)
    async def approve(ack: AsyncAck) -> None:
        await ack()

    return app


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}{SLACK_EVENTS_PATH}"


@dataclass
class Target:
    """One server under test and the client that talks to it."""

    name: str
    url: str
    sender: SlackSender  # builds and signs bodies exactly as Slack does
    session: aiohttp.ClientSession  # keep-alive pool of its own


@dataclass
class Result:
    latency: float  # seconds
    status: int
    text: str


async def run_batch(target: Target, bodies: list[str], concurrency: int) -> tuple[list[Result], float]:
    """POST ``bodies`` with ``concurrency`` requests in flight (closed loop);
    returns the results and the wall time of the batch."""
    queue = deque(bodies)
    results: list[Result] = []

    async def client() -> None:
        while queue:
            body = queue.popleft()
            headers = target.sender.signed_headers(body)  # signing is not timed
            data = body.encode()
            started = time.perf_counter()
            async with target.session.post(target.url, data=data, headers=headers) as response:
                text = await response.text()
            results.append(Result(time.perf_counter() - started, response.status, text))

    began = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(min(concurrency, len(bodies)))))
    return results, time.perf_counter() - began


async def run_open(target: Target, bodies: list[str], interval: float) -> tuple[list[Result], float]:
    """POST ``bodies`` open loop: one request every ``interval`` seconds, sent
    on time whether or not earlier ones were answered; returns the results and
    the wall time of the batch."""
    signed = [(body.encode(), target.sender.signed_headers(body)) for body in bodies]  # signing is not timed
    results: list[Result] = []

    async def one(data: bytes, headers: dict[str, str], at: float) -> None:
        await asyncio.sleep(max(0.0, at - time.perf_counter()))
        started = time.perf_counter()
        async with target.session.post(target.url, data=data, headers=headers) as response:
            text = await response.text()
        results.append(Result(time.perf_counter() - started, response.status, text))

    began = time.perf_counter()
    await asyncio.gather(*(one(data, headers, began + k * interval) for k, (data, headers) in enumerate(signed)))
    return results, time.perf_counter() - began


# -- statistics --------------------------------------------------------------------------


@dataclass
class Samples:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0  # non-200 answers (kept out of the latencies)
    wall: float = 0.0  # this app's rounds, until its background work was done
    cpu: float = 0.0  # process CPU time over the same spans (server + background + client + fake Slack)
    fake_cpu: float | None = None  # the fake Slack's process, when it has one (over the same spans)

    def add(self, results: list[Result], wall: float, cpu: float, fake_cpu: float | None = None) -> None:
        self.wall += wall
        self.cpu += cpu
        if fake_cpu is not None:
            self.fake_cpu = (self.fake_cpu or 0.0) + fake_cpu
        for result in results:
            if result.status == 200:
                self.latencies.append(result.latency)
            else:
                self.errors += 1

    def summary(self) -> dict[str, Any]:
        values = sorted(self.latencies)
        ms = lambda s: round(s * 1000, 3)  # noqa: E731
        return {
            "n": len(values),
            "errors": self.errors,
            "p50_ms": ms(percentile(values, 0.50)),
            "p90_ms": ms(percentile(values, 0.90)),
            "p99_ms": ms(percentile(values, 0.99)),
            "max_ms": ms(values[-1]) if values else None,
            "mean_ms": ms(sum(values) / len(values)) if values else None,
            "req_per_s": round(len(values) / self.wall, 1) if self.wall else None,
            "cpu_ms_per_req": ms(self.cpu / len(values)) if values else None,
            "fake_slack_cpu_ms_per_req": (ms(self.fake_cpu / len(values))
                                          if values and self.fake_cpu is not None else None),
        }


# -- the benchmark -------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.services = args.n1 + args.n50 + args.n_open
        self.fake: FakeSlack | FakeSlackProcess | None = None
        self.store: Store | None = None
        self.slipway: Slipway | None = None
        self.runners: list[web.AppRunner] = []
        self.targets: dict[str, Target] = {}
        self.cells: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.statuses: dict[str, int] = {}  # every deploy in the database at the end, by status
        self.api_calls: dict[str, int] = {}  # every Web API call the fake Slack answered, by method
        self.elapsed = 0.0

    async def start(self, workdir: Path) -> None:
        if self.args.fake_slack == "process":
            self.fake = await FakeSlackProcess().start(BOT_TOKEN)
        else:
            self.fake = await FakeSlack(token=BOT_TOKEN).start()
        settings = Settings(bot_token=BOT_TOKEN, signing_secret=SIGNING_SECRET, api_url=self.fake.api_url)
        self.store = Store.open(workdir / "slipway.db")
        engine = None if self.args.engine == "none" else [shutil.which("true") or "/bin/true"]
        # The fake Slack has no posting limit: the outbox is not paced at Slack's one message a second per
        # channel here, or a burst of requests would measure that pacing, not Slipway.
        self.slipway = create_slipway(parse_config(config_text(self.services, engine)), self.store, settings,
                                      outbox_interval=0.001)
        for name, app in (("bare", bare_app(self.fake).web_app(path=SLACK_EVENTS_PATH)),
                          ("slipway", create_web_app(self.slipway))):
            runner, url = await serve(app)
            self.runners.append(runner)
            sender = SlackSender(url, SIGNING_SECRET, self.fake)  # type: ignore[arg-type]  # builds, signs bodies
            session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
            self.targets[name] = Target(name, url, sender, session)

    async def stop(self) -> None:
        for target in self.targets.values():
            await target.session.close()
        for runner in reversed(self.runners):  # Slipway's cleanup cancels its background tasks
            await runner.cleanup()
        if self.store is not None:
            self.store.close()
        if self.fake is not None:
            await self.fake.stop()

    async def drain(self) -> None:
        """Let Slipway's background work finish, so the next round starts clean."""
        assert self.slipway is not None
        while True:  # the tasks and the outbox (each may give the other work)
            await self.slipway.tasks.wait_idle()
            if hasattr(self.slipway.outbox, "wait_quiet"):  # checkouts whose every Slack write is an outbox row
                await self.slipway.outbox.wait_quiet(timeout=120)
            if self.slipway.tasks.pending == 0:
                return

    async def tidy(self) -> None:
        """Between rounds, unmeasured: let closed connections' callbacks run, then
        collect garbage and freeze what survives, so that neither app's rounds pay
        for collecting the heap the benchmark itself accumulates (the fake
        Slack's records, prepared bodies, results)."""
        await asyncio.sleep(0.005)
        gc.collect()
        gc.freeze()
        if isinstance(self.fake, FakeSlackProcess):
            await self.fake.tidy()

    async def fake_cpu(self) -> float | None:
        """The fake Slack's process CPU time so far (None: it runs in this process)."""
        if isinstance(self.fake, FakeSlackProcess):
            return (await self.fake.stats())["cpu"]
        return None

    async def message(self, channel: str, ts: str) -> Message:
        assert self.fake is not None
        if isinstance(self.fake, FakeSlackProcess):
            return await self.fake.message(channel, ts)
        return self.fake.messages[(channel, ts)]

    # -- setup ------------------------------------------------------------------------------

    def seed(self) -> None:
        """Every service has SEED_VERSION succeeded on staging (what the ladder
        needs for production), recorded through the store's own transitions,
        as ``Harness.mark_succeeded`` does in tests/conftest.py."""
        assert self.store is not None
        for i in range(self.services):
            deploy = self.store.deploys.create(
                service=f"svc{i}", environment="staging", version=SEED_VERSION, version_prefixed=False,
                requested_by=REQUESTER, previous_version=None, checklist=[], needs_approval=False)
            for state in ("deploying", "verifying", "succeeded"):
                deploy = self.store.deploys.transition(deploy.id, allowed_from=(deploy.status,), to=state,
                                                       actor=None, action=state)

    async def warm_up(self, concurrency: int) -> None:
        """Unmeasured: fill both keep-alive pools, cache auth.test, warm code paths."""
        for target in self.targets.values():
            bodies = [target.sender.command_body("help", REQUESTER) for _ in range(max(2 * concurrency, 20))]
            await run_batch(target, bodies, concurrency)
        await self.drain()
        await self.tidy()

    async def warm_clicks(self) -> None:
        """Unmeasured: clicks on a deploy that does not exist (Slipway refuses it
        after the ack, in the background), to warm the action path of both apps."""
        ghost = Message(CHANNEL, "1.000100", "ghost", [{
            "type": "actions", "block_id": "actions:0",
            "elements": [{"type": "button", "action_id": ACTION_APPROVE, "value": "999999999",
                          "text": {"type": "plain_text", "text": "Approve"}}]}])
        for target in self.targets.values():
            await run_batch(target, [target.sender.click_body(ghost, APPROVER, ACTION_APPROVE) for _ in range(100)], 10)
        await self.drain()
        await self.tidy()

    async def create_awaiting_deploys(self, services: list[str]) -> list[tuple[int, Message]]:
        """Production deploys awaiting approval, one per service, requested over
        HTTP like any other (unmeasured), and their posted messages."""
        assert self.store is not None and self.fake is not None and self.slipway is not None
        slipway = self.targets["slipway"]
        bodies = [slipway.sender.command_body(f"{s} {SEED_VERSION} production", REQUESTER) for s in services]
        results, _ = await run_batch(slipway, bodies, 50)
        await self.drain()
        await self.tidy()
        refused = [r.text for r in results if "waiting for approval" not in r.text]
        if refused:
            self.notes.append(f"setup: {len(refused)} production request(s) not accepted, e.g. {refused[0][:200]}")
        rows = self.store.db.execute(
            "SELECT id FROM deploys WHERE environment = 'production' AND status = 'awaiting_approval' "
            "AND channel IS NOT NULL ORDER BY id").fetchall()
        messages = []
        for (deploy_id,) in rows:
            deploy = self.store.deploys.get(deploy_id)
            messages.append((deploy_id, await self.message(deploy.channel, deploy.message_ts)))
        return messages

    # -- cells --------------------------------------------------------------------------------

    async def cell(self, surface: str, concurrency: int, bodies: dict[str, list[str]],
                   interval: float | None = None) -> dict[str, Samples]:
        """Both apps, alternating round by round; closed loop at ``concurrency``,
        or with ``interval`` open loop (one request every ``interval`` seconds)."""
        await self.warm_up(concurrency)
        size = self.args.round1 if concurrency == 1 else max(self.args.round50, concurrency)
        samples = {name: Samples() for name in APPS}
        total = len(bodies["slipway"])
        for number, start in enumerate(range(0, total, size)):
            order = APPS if number % 2 == 0 else APPS[::-1]
            for name in order:
                fake_cpu = await self.fake_cpu()
                cpu = time.process_time()
                batch = bodies[name][start:start + size]
                if interval is None:
                    results, seconds = await run_batch(self.targets[name], batch, concurrency)
                else:
                    results, seconds = await run_open(self.targets[name], batch, interval)
                began = time.perf_counter()
                await self.drain()  # a no-op for the bare app
                seconds += time.perf_counter() - began
                cpu = time.process_time() - cpu
                if fake_cpu is not None:
                    fake_cpu = await self.fake_cpu() - fake_cpu
                samples[name].add(results, seconds, cpu, fake_cpu)
                await self.tidy()
                if surface == "command" and name == "slipway":
                    refused = [r.text for r in results if r.status == 200 and "needs no approval" not in r.text]
                    if refused:
                        self.notes.append(f"command c={concurrency}: {len(refused)} slipway ack(s) were not an "
                                          f"accepted deploy, e.g. {refused[0][:200]}")
        return samples

    def record(self, surface: str, concurrency: int, samples: dict[str, Samples],
               interval: float | None = None) -> None:
        row: dict[str, Any] = {"surface": surface, "concurrency": concurrency if interval is None else None,
                               "loop": "closed" if interval is None else "open",
                               "interval_ms": None if interval is None else round(interval * 1000, 3),
                               "load": f"c={concurrency}" if interval is None else f"every {interval * 1000:g}ms",
                               "fake_slack": self.args.fake_slack}
        for name in APPS:
            row[name] = samples[name].summary()
        bare, slip = row["bare"], row["slipway"]
        row["ratio_p50"] = round(slip["p50_ms"] / bare["p50_ms"], 3)
        row["ratio_p99"] = round(slip["p99_ms"] / bare["p99_ms"], 3)
        row["target_met"] = row["ratio_p99"] <= TARGET_RATIO
        row["in_target"] = interval is None  # the target is stated for the closed-loop cells
        self.cells.append(row)

    async def run(self) -> None:
        assert self.store is not None
        n_for = {1: self.args.n1, 50: self.args.n50}
        concurrencies = (1, 50)
        t0 = time.perf_counter()
        self.seed()
        await self.warm_up(50)
        await self.warm_clicks()
        print(f"setup: {self.services} services seeded, apps warmed up in {time.perf_counter() - t0:.1f}s",
              file=sys.stderr, flush=True)

        # /deploy: each request a different service on staging, so each is accepted.
        offset = 0
        for concurrency in concurrencies:
            n = n_for[concurrency]
            names = [f"svc{i}" for i in range(offset, offset + n)]
            offset += n
            bodies = {
                "slipway": [self.targets["slipway"].sender.command_body(f"{s} {STAGING_VERSION}", REQUESTER)
                            for s in names],
                "bare": [self.targets["bare"].sender.command_body(f"{s} {STAGING_VERSION}", REQUESTER)
                         for s in names],
            }
            samples = await self.cell("command", concurrency, bodies)
            self.record("command", concurrency, samples)
            print(f"command c={concurrency} done ({time.perf_counter() - t0:.1f}s)", file=sys.stderr, flush=True)
        if self.args.n_open:
            names = [f"svc{i}" for i in range(offset, offset + self.args.n_open)]
            bodies = {name: [self.targets[name].sender.command_body(f"{s} {STAGING_VERSION}", REQUESTER)
                             for s in names] for name in APPS}
            interval = self.args.open_ms / 1000
            samples = await self.cell("command", 1, bodies, interval)
            self.record("command", 1, samples, interval)
            print(f"command open loop done ({time.perf_counter() - t0:.1f}s)", file=sys.stderr, flush=True)

        # Approve: one click per production deploy awaiting approval.
        t1 = time.perf_counter()
        messages = await self.create_awaiting_deploys([f"svc{i}" for i in range(self.services)])
        print(f"setup: {len(messages)} production deploys awaiting approval in {time.perf_counter() - t1:.1f}s",
              file=sys.stderr, flush=True)
        offset = 0
        for concurrency in concurrencies:
            chunk = messages[offset:offset + n_for[concurrency]]
            offset += len(chunk)
            # Bodies are built before any click (the click refreshes the message); the
            # bare app gets the same payloads, it only acks.
            bodies = {name: [self.targets[name].sender.click_body(m, APPROVER, ACTION_APPROVE) for _, m in chunk]
                      for name in APPS}
            samples = await self.cell("approve", concurrency, bodies)
            self.record("approve", concurrency, samples)
            approved = sum(1 for deploy_id, _ in chunk if APPROVER in self.store.deploys.get(deploy_id).approvers)
            if approved != len(chunk):
                self.notes.append(f"approve c={concurrency}: only {approved} of {len(chunk)} clicks approved "
                                  "their deploy")
            print(f"approve c={concurrency} done ({time.perf_counter() - t0:.1f}s)", file=sys.stderr, flush=True)
        if self.args.n_open:
            chunk = messages[offset:offset + self.args.n_open]
            bodies = {name: [self.targets[name].sender.click_body(m, APPROVER, ACTION_APPROVE) for _, m in chunk]
                      for name in APPS}
            interval = self.args.open_ms / 1000
            samples = await self.cell("approve", 1, bodies, interval)
            self.record("approve", 1, samples, interval)
            print(f"approve open loop done ({time.perf_counter() - t0:.1f}s)", file=sys.stderr, flush=True)
        self.elapsed = time.perf_counter() - t0
        assert self.fake is not None
        self.statuses = dict(Counter(row[0] for row in self.store.db.execute("SELECT status FROM deploys")))
        if isinstance(self.fake, FakeSlackProcess):
            self.api_calls = (await self.fake.stats())["calls"]
        else:
            self.api_calls = dict(Counter(call.method for call in self.fake.calls))


# -- output ------------------------------------------------------------------------------------


def environment() -> dict[str, Any]:
    return versions()


def print_report(bench: Bench, env: dict[str, Any]) -> bool:
    print(f"Python {env['python']} ({env['implementation']}), slack_bolt {env['slack_bolt']}, "
          f"slack_sdk {env['slack_sdk']}, aiohttp {env['aiohttp']}, os.cpu_count()={env['cpu_count']}, "
          f"{env['platform']}")
    print(f"Slipway from {env['slipway_source']}, deploy engine: {bench.args.engine}")
    print("Ack latency = POST sent -> HTTP response read, via POST /slack/events, signed like Slack.")
    remote = bench.args.fake_slack == "process"
    if remote:
        print("Both apps and the load generator in one process and event loop; the fake Slack in a process of its")
        print("own (bench/fake_slack_server.py), reached over loopback as Slack would be. Rounds alternate")
    else:
        print("Both apps in one process and event loop with the fake Slack and the load generator; rounds alternate")
    print("bare/slipway. Slipway's background work (SQLite, Web API calls to the fake Slack) runs concurrently")
    print("within a round and is drained between rounds. bolt polls for the ack every 10 ms (both apps).")
    print("load: c=N closed loop, N requests in flight (each client sends its next request when its previous")
    print("one is answered); 'every N ms' open loop, one request every N ms whatever the answers.")
    print("req/s: requests / (round time + time to drain Slipway's background work); cpu/req: process CPU ms")
    if remote:
        print("per request over the same spans (client, server, background work; the fake Slack's own process in")
        print("'fake' ms, not included).")
    else:
        print("per request over the same spans (client, server, background work and fake Slack all included).")
    print("x: slipway / bare.")
    print()
    header = (f"{'surface':<8} {'load':>11} {'app':<8} {'n':>5} {'err':>3} {'p50 ms':>8} {'p90 ms':>8} "
              f"{'p99 ms':>8} {'max ms':>8} {'req/s':>7} {'cpu/req':>7}" + (f" {'fake':>6}" if remote else "")
              + f"   {'p50 x':>6} {'p99 x':>6}  p99 target")
    print(header)
    print("-" * len(header))
    for cell in bench.cells:
        for name in APPS:
            s = cell[name]
            line = (f"{cell['surface']:<8} {cell['load']:>11} {name:<8} {s['n']:>5} {s['errors']:>3} "
                    f"{s['p50_ms']:>8.2f} {s['p90_ms']:>8.2f} {s['p99_ms']:>8.2f} {s['max_ms']:>8.2f} "
                    f"{s['req_per_s']:>7.1f} {s['cpu_ms_per_req']:>7.2f}")
            if remote:
                line += f" {s['fake_slack_cpu_ms_per_req'] or 0:>6.2f}"
            if name == "slipway":
                verdict = "met" if cell["target_met"] else "NOT met"
                line += (f"   {cell['ratio_p50']:>6.2f} {cell['ratio_p99']:>6.2f}  "
                         f"{verdict} (<= {TARGET_RATIO}x)" + ("" if cell["in_target"] else ", info"))
            print(line)
    print()
    official = [cell for cell in bench.cells if cell["in_target"]]
    met = all(cell["target_met"] for cell in official)
    failing = [f"{c['surface']} {c['load']} ({c['ratio_p99']:.2f}x)" for c in official if not c["target_met"]]
    print(f"Target (Slipway p99 <= {TARGET_RATIO}x bare p99 at concurrency 1 and 50, closed loop): "
          + ("MET in every cell." if met else "NOT MET: " + ", ".join(failing) + "."))
    print(f"Fake Slack: {'its own process' if remote else 'in this process and event loop'} (--fake-slack).")
    print(f"Deploys at the end, by status (incl. {bench.services} seeded): {bench.statuses}")
    print(f"Web API calls answered by the fake Slack (both apps, setup included): {bench.api_calls}")
    for note in bench.notes:
        print(f"note: {note}")
    print(f"(total run {bench.elapsed:.1f}s)")
    return met


async def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING)
    env = environment()
    bench = Bench(args)
    with tempfile.TemporaryDirectory(prefix="slipway-bench-") as workdir:
        try:
            await bench.start(Path(workdir))
            await bench.run()
        finally:
            await bench.stop()
    met = print_report(bench, env)
    if args.json:
        payload = {"environment": env, "parameters": vars(args), "target_ratio_p99": TARGET_RATIO,
                   "target_met": met, "cells": bench.cells, "notes": bench.notes,
                   "deploys_by_status": bench.statuses, "web_api_calls": bench.api_calls}
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--engine", choices=("true", "none"), default="true",
                        help="the services' deploy engine: a command engine running `true` (default: one "
                             "subprocess per approved deploy, which then succeeds), or none configured (Slipway "
                             "records each approved deploy as failed, 'no deploy engine is configured')")
    parser.add_argument("--n1", type=int, default=600, help="requests per app per surface at concurrency 1")
    parser.add_argument("--n50", type=int, default=1000, help="requests per app per surface at concurrency 50")
    parser.add_argument("--round1", type=int, default=25, help="requests per round at concurrency 1")
    parser.add_argument("--round50", type=int, default=100, help="requests per round at concurrency 50")
    parser.add_argument("--n-open", type=int, default=200,
                        help="requests per app per surface in the open-loop cell (0: no such cell)")
    parser.add_argument("--open-ms", type=float, default=50.0,
                        help="open loop: one request every this many ms (rounds of --round1 requests)")
    parser.add_argument("--fake-slack", choices=("inprocess", "process"), default="inprocess",
                        help="run the fake Slack Web API in this process and event loop (default, as before), "
                             "or in a process of its own (bench/fake_slack_server.py), reached over loopback")
    args = parser.parse_args(argv)
    for name in ("n1", "n50", "round1", "round50"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.n_open < 0 or args.open_ms <= 0:
        parser.error("--n-open must be at least 0 and --open-ms more than 0")
    return args


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
