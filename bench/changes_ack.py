#!/usr/bin/env python
"""`/deploy` ack latency with and without a GitHub change lookup (issue 13).

Run from the repository root::

    python bench/changes_ack.py [--json results.json] [--n1 200] [--n50 600]
                                [--commits 50] [--pulls 10] [--github thread|loop]

It imports Slipway from the checkout it sits in (``benchlib`` puts the
repository root first on ``sys.path``), and the fake GitHub from ``tests/``.

What is measured
----------------
One Slipway, served by ``bot.runtime.composition.create_web_app`` over real
HTTP (aiohttp, 127.0.0.1, port 0) against the fake Slack
(``bot.sandbox.fake_slack``), with two kinds of services:

* ``plainN``: no ``changes``;
* ``shippedN``: ``changes.github`` pointing at a ``FakeGitHub``
  (``tests/fake_github.py``) holding a repository ``acme/shippedN`` per
  service: ``v1.0.0``, then ``--commits`` commits (default 50) bringing in
  ``--pulls`` pull requests (default 10: half squash-merged, ``Title (#N)``,
  the others rebase-merged, three commits each, that only the
  commit-to-pulls API knows) and plain pushes, then ``v2.0.0``.

Every service has 1.0.0 succeeded on staging (recorded through the store
before the run), and every measured request is ``/deploy <service> 2.0.0``
on staging (no approvals) of a service of its own, so each is an accepted
deploy (the ack says "needs no approval"). For a ``shipped`` one the deploy
is recorded ``checking``: after the ack its message is posted, then the
lookup runs in the background (``bot/changes/lookup.py``:
``GitHubSource.compare("v1.0.0", "v2.0.0")``: one compare page, up to 30
``commits/{sha}/pulls`` and the ``pulls/{n}`` of the pull requests the
commits name, 6 at a time, each lookup with a session of its own), is
recorded (``deploys.lookup_state = 'done'``, the change set in
``deploys.changes``), and only then does the deploy run (engine ``[true]``,
as in ``ack_latency.py``).

The ack is the time from sending the signed ``POST /slack/events`` to having
read the whole response, at concurrency 1 and 50 (closed loop: that many
requests in flight, each client sending its next as soon as its previous one
is answered).

Fairness
--------
Both kinds are served by the same Slipway in the same process, event loop
and run, through the same endpoint and keep-alive pool; the only difference
is the ``changes`` block. Each cell is split into rounds (``--round1``
requests at concurrency 1, ``--round50`` at 50) and the two kinds take turns
round by round, the order flipping every round (as ``ack_latency.py``
alternates its apps). After each round Slipway's background work is drained
(tasks and outbox; for ``shipped`` this includes the lookups and the deploys
they then let run), then, unmeasured, ``gc.collect()`` + ``gc.freeze()``.
*Within* a round the lookups of the requests already acked run on the loop
alongside the acks still in flight: that is what the comparison is about.

The fake GitHub runs by default on a thread with an event loop of its own
(``--github thread``, as ``rollouts.py`` runs its Prometheus), so its
answering is off Slipway's loop as a separate server's would be; it still
shares the GIL (and the two cores) with Slipway. ``--github loop`` serves it
from Slipway's own loop instead: then its work is charged to the acks too.

Also reported: per kind, ``req/s`` (requests / (round time + drain)),
process CPU ms per request and the event-loop thread's CPU ms per request
(``time.thread_time()`` of the main thread: Slipway, the load generator and
the fake Slack, but not the fake GitHub's thread nor the store's writer
thread) over the same spans; for the lookups, how many were recorded and
with what (the expected commits and pull requests, or "unavailable"), their
run time (from the lookup coroutine's first step, after ``AckFirst`` let it
start, to its record: the bench wraps ``ChangeLookups._look_up`` on the
instance) and request -> recorded from the store (``deploys.requested_at``
to the ``changes_looked_up`` audit event, millisecond stamps); and the
GitHub calls the fake answered, by route.

This is a benchmark, not a test: nothing is asserted. Read the ``x``
columns (shipped / plain, same run): 1.0 means the lookup did not touch the
ack.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import math
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from benchlib import REPO_ROOT, checkout, percentile, versions  # first of ours: puts this checkout on sys.path

sys.path.insert(1, str(REPO_ROOT / "tests"))  # the fake GitHub lives with the tests

from fake_github import FakeGitHub, Repository

from bot.config import parse_config
from bot.runtime.composition import (
    SLACK_EVENTS_PATH,
    Slipway,
    create_slipway,
    create_web_app,
)
from bot.runtime.settings import Settings
from bot.sandbox.fake_slack import FakeSlack, SlackSender
from store import Store

SIGNING_SECRET = "bench-signing-secret"
BOT_TOKEN = "xoxb-bench-token"
GITHUB_TOKEN = "ghp_bench"
TOKEN_ENV = "SLIPWAY_BENCH_GITHUB_TOKEN"
CHANNEL = "C0DEPLOYS"
REQUESTER = "U0DAVE"
SEED_VERSION = "1.0.0"  # succeeded on staging for every service before the run
VERSION = "2.0.0"  # what every request asks for
KINDS = ("plain", "shipped")
WARM = 20  # services of each kind deployed unmeasured first (warms the lookup path, its imports)


# -- the fake GitHub ---------------------------------------------------------------------


PULL_KINDS = ("merge", "squash", "rebase")  # pull request j is of kind PULL_KINDS[j % 3]
MERGED_BRANCH = 4  # branch commits of a pull request merged with a merge commit (plus the merge commit)
REBASED_COMMITS = 2  # commits of a rebase-merged pull request


def pull_commits(pulls: int) -> int:
    """How many of the range's commits ``pulls`` pull requests make."""
    sizes = {"merge": MERGED_BRANCH + 1, "squash": 1, "rebase": REBASED_COMMITS}
    return sum(sizes[PULL_KINDS[j % 3]] for j in range(pulls))


def build_history(repository: Repository, commits: int, pulls: int, rng: random.Random) -> None:
    """v1.0.0; ``commits`` commits bringing ``pulls`` pull requests, in turn
    merged with a merge commit (MERGED_BRANCH branch commits: Slipway asks
    ``pulls/{n}``, the branch's commits come with the merge), squash-merged
    (``Title (#n)``: ``pulls/{n}``) and rebase-merged (REBASED_COMMITS plain
    commits that only ``commits/{sha}/pulls`` knows), and plain pushes
    (``commits/{sha}/pulls`` answers none), shuffled; v2.0.0."""
    repository.commit("Initial commit", files=["README.md"])
    repository.tag(f"v{SEED_VERSION}")
    units = [PULL_KINDS[j % 3] for j in range(pulls)] + ["push"] * (commits - pull_commits(pulls))
    rng.shuffle(units)
    number = 100
    for n, unit in enumerate(units):
        if unit == "push":
            repository.commit(f"Tweak {n}", author="Frank Fix", login=None, files=[f"lib/tweak{n}.py"])
            continue
        number += 1
        if unit == "squash":
            repository.squash_pull(number, f"Change {number}", author="Dan Diaz", login="dan",
                                   files=[f"app/feature{number}.py"])
        elif unit == "rebase":
            shas = [repository.commit(f"Part {k} of change {number}", author="Erin Eze", login="erin",
                                      files=[f"app/part{number}_{k}.py"]) for k in range(REBASED_COMMITS)]
            repository.add_pull(number, f"Change {number}", shas, login="erin", merge_commit_sha=shas[-1])
        else:
            tip = repository.head
            for k in range(MERGED_BRANCH):
                tip = repository.commit(f"Step {k} of change {number}", author="Carol Chen", login="carol",
                                        files=[f"app/step{number}_{k}.py"], parents=[tip])
            repository.merge_pull(number, tip, f"Change {number}", login="carol")
    repository.tag(f"v{VERSION}")


def build_github(services: int, commits: int, pulls: int, seed: int) -> BenchGitHub:
    fake = BenchGitHub(token=GITHUB_TOKEN)
    rng = random.Random(seed)
    for i in range(services):
        build_history(fake.add_repository(f"acme/shipped{i}"), commits, pulls, rng)
    return fake


class BenchGitHub(FakeGitHub):
    """The fake GitHub, plus ``GET /bench/stats``: its calls by route and its
    process's CPU time (read when it runs in a process of its own)."""

    def web_app(self) -> web.Application:
        app = super().web_app()
        app.router.add_get("/bench/stats", self._stats)
        return app

    def stats(self) -> dict[str, Any]:
        routes = dict(Counter(call.route for call in self.calls))
        routes["non-2xx"] = sum(1 for call in self.calls if not 200 <= call.status < 300)
        return {"calls": routes, "cpu": time.process_time()}

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())


def serve_github(args: argparse.Namespace) -> int:
    """``--serve-github N``: the fake GitHub for N services in this process,
    its URL on stdout, until stdin closes."""
    fake = build_github(args.serve_github, args.commits, args.pulls, args.seed)

    async def serve() -> None:
        await fake.start()
        print(fake.url, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await fake.stop()

    asyncio.run(serve())
    return 0


class GitHubServer:
    """The fake GitHub served from a thread and event loop of its own
    (``thread``), from the caller's loop (``loop``), or from a process of its
    own (``process``: this script with ``--serve-github``)."""

    def __init__(self, args: argparse.Namespace, services: int) -> None:
        self.args = args
        self.services = services
        self.where = args.github
        self.url = ""
        self.fake: BenchGitHub | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._process: asyncio.subprocess.Process | None = None

    async def start(self) -> GitHubServer:
        args = self.args
        if self.where == "process":
            self._process = await asyncio.create_subprocess_exec(
                sys.executable, __file__, "--serve-github", str(self.services), "--commits", str(args.commits),
                "--pulls", str(args.pulls), "--seed", str(args.seed),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
            assert self._process.stdout is not None
            self.url = (await asyncio.wait_for(self._process.stdout.readline(), 120)).decode().strip()
            if not self.url.startswith("http://"):
                raise RuntimeError(f"the fake GitHub's process did not start (said {self.url!r})")
            return self
        self.fake = build_github(self.services, args.commits, args.pulls, args.seed)
        if self.where == "loop":
            await self.fake.start()
            self.url = self.fake.url
            return self
        ready = threading.Event()
        failed: list[BaseException] = []
        fake = self.fake

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(fake.start())
            except BaseException as error:  # noqa: BLE001  (told to the starting thread)
                failed.append(error)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(fake.stop())
            loop.close()

        self._thread = threading.Thread(target=serve, name="fake-github", daemon=True)
        self._thread.start()
        if not await asyncio.to_thread(ready.wait, 10) or failed:
            raise RuntimeError(f"the fake GitHub did not start ({failed[0] if failed else 'timed out'})")
        self.url = fake.url
        return self

    async def stats(self) -> dict[str, Any]:
        """Its calls by route, and the CPU seconds its process (``process``) or
        its thread (``thread``) has used so far (``loop``: None, it is the loop's)."""
        if self.fake is not None and self._loop is not None:
            fake = self.fake

            async def read() -> dict[str, Any]:
                return {**fake.stats(), "cpu": time.thread_time()}

            return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(read(), self._loop))
        if self.fake is not None:
            return {**self.fake.stats(), "cpu": None}
        async with aiohttp.ClientSession() as session, session.get(f"{self.url}/bench/stats") as answer:
            return await answer.json()

    async def stop(self) -> None:
        if self._process is not None:
            assert self._process.stdin is not None
            self._process.stdin.close()
            try:
                await asyncio.wait_for(self._process.wait(), 10)
            except TimeoutError:
                self._process.kill()
                await self._process.wait()
        elif self.where == "loop" and self.fake is not None:
            await self.fake.stop()
        elif self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            await asyncio.to_thread(self._thread.join, 10)


# -- configuration -----------------------------------------------------------------------


def config_text(services: int, engine: list[str], github_url: str) -> str:
    lines = [f"channel: {CHANNEL}", "environments:", "  - name: staging", "services:"]
    for i in range(services):
        lines += [f"  plain{i}:", "    deploy:", f"      command: {json.dumps(engine)}"]
        lines += [f"  shipped{i}:", "    deploy:", f"      command: {json.dumps(engine)}",
                  "    changes:", "      github:", f"        repository: acme/shipped{i}",
                  f"        api_url: {github_url}", f"        token_env: {TOKEN_ENV}"]
    return "\n".join(lines) + "\n"


# -- the load generator (as in ack_latency.py) ---------------------------------------------


@dataclass
class Result:
    latency: float  # seconds
    status: int
    text: str


async def run_batch(session: aiohttp.ClientSession, url: str, sender: SlackSender, bodies: list[str],
                    concurrency: int) -> tuple[list[Result], float]:
    """POST ``bodies`` with ``concurrency`` requests in flight (closed loop);
    the results and the batch's wall time."""
    queue = deque(bodies)
    results: list[Result] = []

    async def client() -> None:
        while queue:
            body = queue.popleft()
            headers = sender.signed_headers(body)  # signing is not timed
            data = body.encode()
            started = time.perf_counter()
            async with session.post(url, data=data, headers=headers) as response:
                text = await response.text()
            results.append(Result(time.perf_counter() - started, response.status, text))

    began = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(min(concurrency, len(bodies)))))
    return results, time.perf_counter() - began


@dataclass
class Samples:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0  # non-200 answers (kept out of the latencies)
    refused: int = 0  # 200 answers that were not an accepted deploy
    wall: float = 0.0  # rounds plus their drain
    cpu: float = 0.0  # process CPU over the same spans (all threads)
    loop_cpu: float = 0.0  # the event loop's thread's CPU over the same spans

    def summary(self) -> dict[str, Any]:
        values = sorted(self.latencies)
        ms = lambda s: round(s * 1000, 3)
        n = len(values)
        return {
            "n": n, "errors": self.errors, "refused": self.refused,
            "p50_ms": ms(percentile(values, 0.50)), "p90_ms": ms(percentile(values, 0.90)),
            "p99_ms": ms(percentile(values, 0.99)), "max_ms": ms(values[-1]) if values else None,
            "mean_ms": ms(sum(values) / n) if values else None,
            "req_per_s": round(n / self.wall, 1) if self.wall else None,
            "cpu_ms_per_req": ms(self.cpu / n) if n else None,
            "loop_cpu_ms_per_req": ms(self.loop_cpu / n) if n else None,
        }


def ms_summary(seconds: list[float]) -> dict[str, Any]:
    ordered = sorted(seconds)
    ms = lambda s: None if math.isnan(s) else round(s * 1000, 3)
    return {"n": len(ordered), "p50_ms": ms(percentile(ordered, 0.5)), "p90_ms": ms(percentile(ordered, 0.9)),
            "p99_ms": ms(percentile(ordered, 0.99)), "max_ms": ms(ordered[-1]) if ordered else None}


# -- the benchmark ---------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.services = WARM + args.n1 + args.n50
        self.fake: FakeSlack | None = None
        self.github: GitHubServer | None = None
        self.store: Store | None = None
        self.slipway: Slipway | None = None
        self.runner: web.AppRunner | None = None
        self.session: aiohttp.ClientSession | None = None
        self.sender: SlackSender | None = None
        self.url = ""
        self.cells: list[dict[str, Any]] = []
        self.lookups: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.lookup_runs: dict[int, float] = {}  # deploy id -> seconds the lookup ran
        self.cell_of: dict[str, int] = {}  # measured shipped service -> its cell's concurrency
        self.statuses: dict[str, int] = {}
        self.github_calls: dict[str, int] = {}
        self.github_cpu: float | None = None  # CPU seconds of the fake GitHub's thread or process, measured cells
        self.elapsed = 0.0
        self.setup_seconds = 0.0

    async def start(self, workdir: Path) -> None:
        began = time.perf_counter()
        self.github = await GitHubServer(self.args, self.services).start()
        self.fake = await FakeSlack(token=BOT_TOKEN).start()
        settings = Settings(bot_token=BOT_TOKEN, signing_secret=SIGNING_SECRET, api_url=self.fake.api_url)
        self.store = Store.open(workdir / "slipway.db")
        engine = [shutil.which("true") or "/bin/true"]
        environ = {**os.environ, TOKEN_ENV: GITHUB_TOKEN}
        # unpaced outbox, as in ack_latency.py: the fake Slack has no posting limit
        self.slipway = create_slipway(parse_config(config_text(self.services, engine, self.github.url)), self.store,
                                      settings, environ=environ, outbox_interval=0.001)
        self._time_lookups()
        self.runner = web.AppRunner(create_web_app(self.slipway))
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}{SLACK_EVENTS_PATH}"
        self.sender = SlackSender(self.url, SIGNING_SECRET, self.fake)
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        self.setup_seconds = time.perf_counter() - began

    def _time_lookups(self) -> None:
        """Wrap the lookup coroutine on the instance: how long each ran (from
        its first step, after AckFirst let it start, to its record)."""
        lookups = self.slipway.lookups if self.slipway is not None else None
        if lookups is None:
            self.notes.append("this Slipway has no ChangeLookups: no lookup run times")
            return
        original = lookups._look_up
        runs = self.lookup_runs

        async def timed(deploy_id: int) -> Any:
            began = time.perf_counter()
            try:
                return await original(deploy_id)
            finally:
                runs[deploy_id] = time.perf_counter() - began

        lookups._look_up = timed  # type: ignore[method-assign]

    async def stop(self) -> None:
        if self.session is not None:
            await self.session.close()
        if self.runner is not None:
            await self.runner.cleanup()  # Slipway's cleanup cancels its background tasks
        if self.store is not None:
            self.store.close()
        if self.fake is not None:
            await self.fake.stop()
        if self.github is not None:
            await self.github.stop()

    async def drain(self) -> None:
        assert self.slipway is not None
        while True:  # the tasks and the outbox (each may give the other work)
            await self.slipway.tasks.wait_idle()
            if hasattr(self.slipway.outbox, "wait_quiet"):
                await self.slipway.outbox.wait_quiet(timeout=120)
            if self.slipway.tasks.pending == 0:
                return

    async def tidy(self) -> None:
        await asyncio.sleep(0.005)
        gc.collect()
        gc.freeze()

    def seed(self) -> None:
        """1.0.0 succeeded on staging for every service, through the store's
        own transitions (as ``Harness.mark_succeeded`` does)."""
        assert self.store is not None
        for i in range(self.services):
            for kind in KINDS:
                deploy = self.store.deploys.create(
                    service=f"{kind}{i}", environment="staging", version=SEED_VERSION, version_prefixed=False,
                    requested_by=REQUESTER, previous_version=None, checklist=[], needs_approval=False)
                for state in ("deploying", "verifying", "succeeded"):
                    deploy = self.store.deploys.transition(deploy.id, allowed_from=(deploy.status,), to=state,
                                                           actor=None, action=state)

    def body(self, service: str) -> str:
        assert self.sender is not None
        return self.sender.command_body(f"{service} {VERSION}", REQUESTER)

    async def batch(self, bodies: list[str], concurrency: int) -> tuple[list[Result], float]:
        assert self.session is not None and self.sender is not None
        return await run_batch(self.session, self.url, self.sender, bodies, concurrency)

    async def warm_up(self, concurrency: int) -> None:
        """Unmeasured: fill the keep-alive pool and warm the command path."""
        await self.batch([self.sender.command_body("help", REQUESTER)  # type: ignore[union-attr]
                          for _ in range(max(2 * concurrency, 20))], concurrency)
        await self.drain()
        await self.tidy()

    async def cell(self, concurrency: int, first: int, n: int) -> None:
        await self.warm_up(concurrency)
        size = self.args.round1 if concurrency == 1 else max(self.args.round50, concurrency)
        samples = {kind: Samples() for kind in KINDS}
        for i in range(first, first + n):
            self.cell_of[f"shipped{i}"] = concurrency
        for number, start in enumerate(range(first, first + n, size)):
            order = KINDS if number % 2 == 0 else KINDS[::-1]
            for kind in order:
                bodies = [self.body(f"{kind}{i}") for i in range(start, min(start + size, first + n))]
                cpu, loop_cpu = time.process_time(), time.thread_time()
                results, seconds = await self.batch(bodies, concurrency)
                began = time.perf_counter()
                await self.drain()
                seconds += time.perf_counter() - began
                s = samples[kind]
                s.cpu += time.process_time() - cpu
                s.loop_cpu += time.thread_time() - loop_cpu
                s.wall += seconds
                for result in results:
                    if result.status != 200:
                        s.errors += 1
                        continue
                    s.latencies.append(result.latency)
                    if "needs no approval" not in result.text:
                        s.refused += 1
                        if s.refused == 1:
                            self.notes.append(f"{kind} c={concurrency}: an ack was not an accepted deploy: "
                                              f"{result.text[:200]}")
                await self.tidy()
        row: dict[str, Any] = {"concurrency": concurrency, "load": f"c={concurrency}"}
        for kind in KINDS:
            row[kind] = samples[kind].summary()
        plain, shipped = row["plain"], row["shipped"]
        row["ratio_p50"] = round(shipped["p50_ms"] / plain["p50_ms"], 3)
        row["ratio_p99"] = round(shipped["p99_ms"] / plain["p99_ms"], 3)
        self.cells.append(row)

    async def run(self) -> None:
        t0 = time.perf_counter()
        self.seed()
        await self.warm_up(50)
        # Unmeasured: deploys of WARM services of each kind (the lookup path's lazy imports, its first sessions).
        for kind in KINDS:
            await self.batch([self.body(f"{kind}{i}") for i in range(WARM)], 10)
            await self.drain()
        await self.tidy()
        print(f"setup: {self.services} services of each kind, {self.services} repositories "
              f"({self.setup_seconds:.1f}s), warmed up in {time.perf_counter() - t0:.1f}s",
              file=sys.stderr, flush=True)
        assert self.github is not None
        github_cpu = (await self.github.stats())["cpu"]
        first = WARM
        for concurrency, n in ((1, self.args.n1), (50, self.args.n50)):
            await self.cell(concurrency, first, n)
            first += n
            print(f"c={concurrency} done ({time.perf_counter() - t0:.1f}s)", file=sys.stderr, flush=True)
        self.elapsed = time.perf_counter() - t0
        assert self.github is not None
        stats = await self.github.stats()
        self.github_calls = stats["calls"]
        if stats["cpu"] is not None and github_cpu is not None:
            self.github_cpu = stats["cpu"] - github_cpu
        self.collect_lookups()

    def collect_lookups(self) -> None:
        """From the store: each measured shipped request's lookup, by cell."""
        assert self.store is not None
        db = self.store.db
        self.statuses = dict(Counter(row[0] for row in db.execute("SELECT status FROM deploys")))
        rows = db.execute(
            "SELECT d.id, d.service, d.requested_at, d.lookup_state, d.changes, "
            "(SELECT MIN(a.at) FROM audit a WHERE a.deploy_id = d.id AND a.action = 'changes_looked_up') "
            "FROM deploys d WHERE d.version = ? AND d.service LIKE 'shipped%'", [VERSION]).fetchall()
        by_cell: dict[int, dict[str, Any]] = {}
        for deploy_id, service, requested_at, state, changes, looked_up_at in rows:
            concurrency = self.cell_of.get(service)
            if concurrency is None:
                continue  # a warm-up deploy
            cell = by_cell.setdefault(concurrency, {"requests": 0, "done": 0, "complete": 0, "unavailable": 0,
                                                    "other": 0, "to_record": [], "run": []})
            cell["requests"] += 1
            if state != "done":
                continue
            cell["done"] += 1
            record = json.loads(changes) if changes else {}
            if "unavailable" in record:
                cell["unavailable"] += 1
                if cell["unavailable"] == 1:
                    self.notes.append(f"c={concurrency}: a lookup was unavailable: {record['unavailable']}")
            elif len(record.get("commits", ())) == self.args.commits and len(record.get("pulls", ())) == self.args.pulls:
                cell["complete"] += 1
            else:
                cell["other"] += 1
            if looked_up_at and requested_at:
                cell["to_record"].append((datetime.fromisoformat(looked_up_at)
                                          - datetime.fromisoformat(requested_at)).total_seconds())
            if deploy_id in self.lookup_runs:
                cell["run"].append(self.lookup_runs[deploy_id])
        for concurrency in sorted(by_cell):
            cell = by_cell[concurrency]
            self.lookups.append({"concurrency": concurrency, "requests": cell["requests"], "done": cell["done"],
                                 "complete": cell["complete"], "unavailable": cell["unavailable"],
                                 "other": cell["other"], "lookup_run": ms_summary(cell["run"]),
                                 "request_to_recorded": ms_summary(cell["to_record"])})


# -- output ------------------------------------------------------------------------------


def print_report(bench: Bench, env: dict[str, Any]) -> None:
    args = bench.args
    print(f"Python {env['python']}, slack_bolt {env['slack_bolt']}, aiohttp {env['aiohttp']}, "
          f"os.cpu_count()={env['cpu_count']}, load average {env['loadavg']}")
    print(f"Slipway from {env['slipway_source']} ({env['checkout']})")
    print("Ack = signed POST /slack/events sent -> response read; /deploy <service> 2.0.0 on staging (no approvals),")
    print("a service of its own each time. plain: no `changes`; shipped: changes.github on a fake GitHub, "
          f"{args.commits} commits /")
    print(f"{args.pulls} pull requests between v1.0.0 and v2.0.0 (looked up after the ack: compare, commit pulls, "
          "pulls).")
    where = {"thread": "on a thread and event loop of its own", "process": "in a process of its own",
             "loop": "on Slipway's own event loop"}[args.github]
    print(f"One Slipway, one event loop; the fake Slack on it, the fake GitHub {where}. Rounds alternate")
    print("plain/shipped; background work (lookups, posts, deploys) runs within a round, is drained between rounds.")
    print("req/s: requests / (rounds + drain); cpu: process CPU ms per request (all threads); loop cpu: the event")
    print("loop's thread only. x: shipped / plain.")
    print()
    header = (f"{'load':>5} {'service':<8} {'n':>5} {'err':>3} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} "
              f"{'max ms':>8} {'req/s':>7} {'cpu':>7} {'loop cpu':>8}   {'p50 x':>6} {'p99 x':>6}")
    print(header)
    print("-" * len(header))
    for cell in bench.cells:
        for kind in KINDS:
            s = cell[kind]
            line = (f"{cell['load']:>5} {kind:<8} {s['n']:>5} {s['errors'] + s['refused']:>3} {s['p50_ms']:>8.2f} "
                    f"{s['p90_ms']:>8.2f} {s['p99_ms']:>8.2f} {s['max_ms']:>8.2f} {s['req_per_s']:>7.1f} "
                    f"{s['cpu_ms_per_req']:>7.2f} {s['loop_cpu_ms_per_req']:>8.2f}")
            if kind == "shipped":
                line += f"   {cell['ratio_p50']:>6.2f} {cell['ratio_p99']:>6.2f}"
            print(line)
    print()
    print("Lookups of the measured shipped requests (run: the lookup coroutine, first step -> recorded;")
    print("request -> recorded: deploys.requested_at -> the changes_looked_up audit event, ms stamps):")
    for lookup in bench.lookups:
        run, total = lookup["lookup_run"], lookup["request_to_recorded"]
        print(f"  c={lookup['concurrency']}: {lookup['done']} of {lookup['requests']} done "
              f"({lookup['complete']} with all {args.commits} commits and {args.pulls} pull requests, "
              f"{lookup['unavailable']} unavailable, {lookup['other']} other); "
              f"run p50 {run['p50_ms']} / p99 {run['p99_ms']} ms; "
              f"request -> recorded p50 {total['p50_ms']} / p99 {total['p99_ms']} ms")
    calls = sum(v for k, v in bench.github_calls.items() if k != "non-2xx")
    looked_up = WARM + sum(lookup["done"] for lookup in bench.lookups)
    print(f"GitHub calls answered (warm-up included), by route: {bench.github_calls}; "
          f"{calls / max(looked_up, 1):.1f} per lookup")
    measured = sum(lookup["done"] for lookup in bench.lookups)
    if bench.github_cpu is not None and measured:
        print(f"The fake GitHub's {'thread' if args.github == 'thread' else 'process'} used "
              f"{bench.github_cpu * 1000 / measured:.1f} ms CPU per measured lookup "
              + ("(included in the cpu column: same process)" if args.github == "thread"
                 else "(not in the cpu column: another process)"))
    print(f"Deploys at the end, by status (seeded included): {bench.statuses}")
    for note in bench.notes:
        print(f"note: {note}")
    print(f"(measured part {bench.elapsed:.1f}s, setup {bench.setup_seconds:.1f}s)")


async def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING)
    env = {**versions(), "checkout": checkout(), "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg())}
    bench = Bench(args)
    with tempfile.TemporaryDirectory(prefix="slipway-bench-") as workdir:
        try:
            await bench.start(Path(workdir))
            await bench.run()
        finally:
            await bench.stop()
    env["loadavg_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print_report(bench, env)
    if args.json:
        payload = {"environment": env, "parameters": vars(args), "cells": bench.cells, "lookups": bench.lookups,
                   "github_calls": bench.github_calls,
                   "github_cpu_ms_per_lookup": (round(bench.github_cpu * 1000 / max(1, sum(lookup["done"] for lookup in bench.lookups)), 3)
                                                if bench.github_cpu is not None else None),
                   "deploys_by_status": bench.statuses, "notes": bench.notes,
                   "elapsed_s": round(bench.elapsed, 1)}
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--n1", type=int, default=200, help="requests of each kind at concurrency 1")
    parser.add_argument("--n50", type=int, default=600, help="requests of each kind at concurrency 50")
    parser.add_argument("--round1", type=int, default=25, help="requests per round at concurrency 1")
    parser.add_argument("--round50", type=int, default=100, help="requests per round at concurrency 50")
    parser.add_argument("--commits", type=int, default=50, help="commits between v1.0.0 and v2.0.0 in each repository")
    parser.add_argument("--pulls", type=int, default=10, help="pull requests among them")
    parser.add_argument("--github", choices=("thread", "process", "loop"), default="thread",
                        help="serve the fake GitHub from a thread and event loop of its own (default: off Slipway's "
                             "loop, sharing the GIL), from a process of its own (no GIL shared), or from Slipway's "
                             "event loop (its work is then charged to the acks too)")
    parser.add_argument("--serve-github", type=int, metavar="N", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=13, help="shuffles each repository's history")
    args = parser.parse_args(argv)
    for name in ("n1", "n50", "round1", "round50"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.pulls < 0 or args.commits < pull_commits(args.pulls):
        parser.error(f"--commits must hold the pull requests' commits ({pull_commits(args.pulls)} for "
                     f"{args.pulls}: in turn merged ({MERGED_BRANCH + 1} commits), squashed (1), rebased "
                     f"({REBASED_COMMITS}))")
    return args


if __name__ == "__main__":
    arguments = parse_args()
    sys.exit(serve_github(arguments) if arguments.serve_github else asyncio.run(main(arguments)))
