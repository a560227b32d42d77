"""What the read-only views cost: `/deploy status`, `/deploy stats` and the
Metrics scrape, against `/deploy help` on the same Slipway (the baseline: a
signed request that is parsed and answered with no store work at all).

It fills a real SQLite file with a year of deploy history (``--services``
services on staging and production, ``--deploys`` deploys in all), serves
Slipway over real HTTP against the fake Slack, and times each request from
sending it to having read the ack, one at a time (``--n`` each, rounds
interleaved so machine noise hits every kind alike). Prints medians, p99 and
the ratio to the baseline's median. `/deploy stats` acks at once and posts
its figures to the response URL when a thread has worked them out: both
are timed.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import aiohttp
import benchlib  # noqa: F401 — must come first: this checkout, not the installed copy
from aiohttp import web
from benchlib import checkout, percentile, versions

from bot.config import parse_config
from bot.runtime.composition import SLACK_EVENTS_PATH, create_slipway, create_web_app
from bot.runtime.settings import Settings
from bot.sandbox.fake_slack import FakeSlack, SlackSender
from store import Store

SIGNING_SECRET = "bench-signing-secret"
BOT_TOKEN = "xoxb-bench"
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)


def config_text(services: int) -> str:
    lines = ["channel: C0DEPLOYS", "environments:", "  - name: staging", "  - name: production",
             "    requires: staging", "    approvals: {required: 1, approvers: [U0ALICE]}", "services:"]
    lines += [f"  svc{i:03d}: {{}}" for i in range(services)]
    return "\n".join(lines) + "\n"


def fill(store: Store, services: int, deploys: int, seed: int = 7) -> None:
    """A year of history: mostly successes, some failures, spread evenly."""
    rng = random.Random(seed)
    rows = []
    for n in range(deploys):
        requested = NOW - timedelta(days=365) + timedelta(seconds=n * 365 * 86400 / deploys)
        finished = requested + timedelta(minutes=rng.randint(5, 240))
        status = "failed" if rng.random() < 0.08 else "succeeded"
        rows.append((f"svc{rng.randrange(services):03d}", rng.choice(("staging", "production")),
                     f"1.{n // 1000}.{n % 1000}", 0, status, "U0DAVE", requested.isoformat(), requested.isoformat(),
                     finished.isoformat(), finished.isoformat()))
    with store.transaction():
        store.db.conn.executemany(
            "INSERT INTO deploys (service, environment, version, version_prefixed, status, requested_by, "
            "requested_at, started_at, finished_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)


async def main(args: argparse.Namespace) -> int:
    fake = await FakeSlack(token=BOT_TOKEN).start()
    with tempfile.TemporaryDirectory(prefix="slipway-bench-views-") as workdir:
        store = Store.open(Path(workdir) / "bench.db", clock=lambda: NOW)
        started = time.perf_counter()
        fill(store, args.services, args.deploys)
        filled = time.perf_counter() - started
        settings = Settings(bot_token=BOT_TOKEN, signing_secret=SIGNING_SECRET, api_url=fake.api_url)
        slipway = create_slipway(parse_config(config_text(args.services)), store, settings, clock=lambda: NOW)
        runner = web.AppRunner(create_web_app(slipway))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        base = f"http://127.0.0.1:{runner.addresses[0][1]}"
        kinds = {
            "help (baseline)": "help",
            "status, all services": "status",
            "status, one service": "status svc007",
            "stats, 30 days": "stats",
            "stats, 365 days": "stats 365",
            "GET /metrics": None,
        }
        timings: dict[str, list[float]] = {kind: [] for kind in kinds}
        # stats ack at once and answer through the response URL: the answer's latency too
        answers = {kind: f"{kind}: answer" for kind, text in kinds.items() if text and text.startswith("stats")}
        timings.update({answer: [] for answer in answers.values()})
        try:
            async with aiohttp.ClientSession() as session, SlackSender(base + SLACK_EVENTS_PATH, SIGNING_SECRET,
                                                                       fake, session) as slack:
                for _ in range(args.n):
                    for kind, text in kinds.items():
                        begin = time.perf_counter()
                        if text is None:
                            async with session.get(base + "/metrics") as response:
                                await response.read()
                                status = response.status
                        else:
                            answered = len(fake.responses)
                            status, _ = await slack.command(text, "U0DAVE")
                        timings[kind].append(time.perf_counter() - begin)
                        if status != 200:
                            print(f"{kind}: HTTP {status}", file=sys.stderr)
                            return 1
                        if kind in answers:
                            await fake.wait_for(lambda f, n=answered: len(f.responses) > n, timeout=60)
                            timings[answers[kind]].append(time.perf_counter() - begin)
                        await slipway.tasks.wait_idle()  # each kind measured alone
        finally:
            await runner.cleanup()
            store.close()
            await fake.stop()
    env = versions()
    print(f"Python {env['python']}, slack_bolt {env['slack_bolt']}, aiohttp {env['aiohttp']}, "
          f"os.cpu_count()={env['cpu_count']}; checkout {checkout()}")
    print(f"{args.deploys} deploys over a year, {args.services} services x 2 environments "
          f"(filled in {filled:.1f} s); {args.n} requests of each kind, one at a time, interleaved.")
    print("Latency = signed POST /slack/events sent -> ack read (GET /metrics: request -> body read; "
          "'answer': -> the figures posted to the response URL).")
    print()
    baseline = percentile(sorted(timings["help (baseline)"]), 0.5)
    print(f"{'request':<24} {'p50 ms':>8} {'p99 ms':>8} {'p50 x help':>11}")
    for kind, values in timings.items():
        values.sort()
        p50, p99 = percentile(values, 0.5), percentile(values, 0.99)
        print(f"{kind:<24} {p50 * 1000:>8.2f} {p99 * 1000:>8.2f} {p50 / baseline:>11.2f}")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=50, help="services in the config (default 50)")
    parser.add_argument("--deploys", type=int, default=100_000, help="deploys of history (default 100000)")
    parser.add_argument("--n", type=int, default=60, help="requests of each kind (default 60)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
