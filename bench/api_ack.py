#!/usr/bin/env python
"""``POST /api/v1/deploys`` against ``/deploy`` through the Slack door, on
the same Slipway (issue 14).

Run from the repository root::

    python bench/api_ack.py [--json results.json] [--services 1200] [--n1 150] [--n50 600]
                            [--round1 25] [--round50 100]

What is measured
----------------
One Slipway, built by ``create_slipway`` and served by ``create_web_app``
over real HTTP (aiohttp, 127.0.0.1, port 0) against the fake Slack
(``bot.sandbox.fake_slack``, in process), a SQLite file in a temporary
directory, ``--services`` services with ``deploy.command: [true]`` on a
staging rung without approvals. Every measured request asks for ``2.0.0``
of a service of its own on staging, so each is an accepted deploy whose
message is posted and whose engine runs after the answer:

* ``slack``: ``/deploy svcN 2.0.0 staging``, a signed form POST to
  ``/slack/events`` (bolt, the ack);
* ``api``: ``POST /api/v1/deploys`` with a bearer token scoped
  ``request:staging``, the JSON body ``{"service", "version",
  "environment"}`` (the token looked up by its hash, the body validated by
  pydantic, the deploy answered as JSON, 201).

The latency is from sending the request to having read the whole response,
at concurrency 1 and 50 (closed loop: that many requests in flight, each
client sending its next as soon as its previous one is answered). Both doors
share one client session (keep-alive pool), one process and event loop.
Each cell is split into rounds; the doors take turns round by round, the
order flipping every round; after each round Slipway's background work
(posts, engine runs, message edits) is drained, unmeasured. Within a round
the work already answered requests started runs alongside those in flight,
as in production. Nothing is asserted: read the ``api/slack`` column
(1.0: the API costs what the Slack door costs).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import shutil
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web
from benchlib import checkout, summary_ms, versions  # first of ours: puts this checkout on sys.path

from bot.config import parse_config
from bot.runtime.composition import SLACK_EVENTS_PATH, create_slipway, create_web_app
from bot.runtime.settings import Settings
from bot.sandbox.fake_slack import FakeSlack, SlackSender
from store import Store

SIGNING_SECRET = "bench-signing-secret"
BOT_TOKEN = "xoxb-bench-token"
DOORS = ("slack", "api")
WARM = 20  # requests per door sent unmeasured first (imports, caches, the first connections)


def config_text(services: int) -> str:
    lines = ["channel: C0DEPLOYS", "environments:", "  - name: staging", "services:"]
    for i in range(services):
        lines += [f"  svc{i}:", "    deploy:", "      command: [\"true\"]"]
    return "\n".join(lines) + "\n"


class Bench:
    def __init__(self, services: int) -> None:
        self.services = services
        self.next_service = 0
        self.results: dict[tuple[str, int], list[float]] = {}

    async def start(self) -> None:
        self.scratch = Path(tempfile.mkdtemp(prefix="slipway-api-bench-"))
        self.fake = await FakeSlack(token=BOT_TOKEN).start()
        self.store = Store.open(self.scratch / "slipway.db")
        _, self.token = self.store.tokens.create("bench", ["request:staging"])
        settings = Settings(bot_token=BOT_TOKEN, signing_secret=SIGNING_SECRET, api_url=self.fake.api_url)
        self.slipway = create_slipway(parse_config(config_text(self.services)), self.store, settings,
                                      outbox_interval=0.0)
        self.runner = web.AppRunner(create_web_app(self.slipway), access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))
        self.slack = SlackSender(self.url + SLACK_EVENTS_PATH, SIGNING_SECRET, self.fake, session=self.session)

    async def stop(self) -> None:
        await self.session.close()
        await self.runner.cleanup()
        self.store.close()
        await self.fake.stop()
        shutil.rmtree(self.scratch, ignore_errors=True)

    def service(self) -> str:
        if self.next_service >= self.services:
            raise SystemExit(f"--services {self.services} is too few for the requests asked for")
        self.next_service += 1
        return f"svc{self.next_service - 1}"

    async def one(self, door: str) -> float:
        service = self.service()
        started = time.perf_counter()
        if door == "slack":
            status, body = await self.slack.command(f"{service} 2.0.0 staging", "U0DAVE")
            ok = status == 200 and "needs no approval" in body
        else:
            async with self.session.post(self.url + "/api/v1/deploys",
                                         json={"service": service, "version": "2.0.0", "environment": "staging"},
                                         headers={"Authorization": f"Bearer {self.token}"}) as response:
                body = await response.text()
                ok = response.status == 201
        elapsed = time.perf_counter() - started
        if not ok:
            raise SystemExit(f"{door} request refused: {body[:300]}")
        return elapsed

    async def round(self, door: str, requests: int, concurrency: int) -> list[float]:
        remaining = requests
        times: list[float] = []

        async def client() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                times.append(await self.one(door))

        await asyncio.gather(*(client() for _ in range(concurrency)))
        return times

    async def drain(self) -> None:
        while True:
            await self.slipway.tasks.wait_idle()
            await self.slipway.outbox.wait_quiet()
            if self.slipway.tasks.pending == 0:
                break
        gc.collect()
        gc.freeze()

    async def cell(self, concurrency: int, total: int, per_round: int) -> None:
        for door in DOORS:
            self.results[(door, concurrency)] = []
        rounds = max(1, total // per_round)
        for n in range(rounds):
            order = DOORS if n % 2 == 0 else DOORS[::-1]
            for door in order:
                self.results[(door, concurrency)] += await self.round(door, per_round, concurrency)
                await self.drain()


def table(results: dict[tuple[str, int], list[float]]) -> str:
    rows = [("cell", "n", "p50 ms", "p90 ms", "p99 ms", "max ms", "api/slack p99")]
    for concurrency in sorted({c for _, c in results}):
        figures = {door: summary_ms(results[(door, concurrency)]) for door in DOORS}
        for door in DOORS:
            f = figures[door]
            ratio = f"{f['p99_ms'] / figures['slack']['p99_ms']:.2f}" if door == "api" else ""
            rows.append((f"{door} c={concurrency}", str(f["n"]), f"{f['p50_ms']:.1f}", f"{f['p90_ms']:.1f}",
                         f"{f['p99_ms']:.1f}", f"{f['max_ms']:.1f}", ratio))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    def line(row: tuple[str, ...]) -> str:
        cells = zip(row, widths, strict=True)
        return "  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(cells))
    return "\n".join(line(row) for row in rows)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=1200)
    parser.add_argument("--n1", type=int, default=150, help="requests per door at concurrency 1")
    parser.add_argument("--n50", type=int, default=600, help="requests per door at concurrency 50")
    parser.add_argument("--round1", type=int, default=25)
    parser.add_argument("--round50", type=int, default=100)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    needed = 2 * (WARM + args.n1 + args.n50)
    bench = Bench(max(args.services, needed))
    await bench.start()
    try:
        for door in DOORS:
            await bench.round(door, WARM, 5)
        await bench.drain()
        await bench.cell(1, args.n1, args.round1)
        await bench.cell(50, args.n50, args.round50)
    finally:
        await bench.stop()
    print(f"Slipway {checkout()}")
    print(table(bench.results))
    if args.json:
        args.json.write_text(json.dumps({
            "versions": versions(), "checkout": checkout(),
            "cells": {f"{door}/c{c}": summary_ms(times) for (door, c), times in bench.results.items()},
        }, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
