#!/usr/bin/env python
"""The fake Slack Web API (``bot.sandbox.fake_slack.FakeSlack``) in a process
of its own, for ``bench/ack_latency.py --fake-slack process``.

Run by the benchmark, not by hand::

    python bench/fake_slack_server.py --token xoxb-bench-token

It serves on 127.0.0.1 (port 0), prints its base URL (``http://127.0.0.1:PORT``)
as its first line on stdout, and stops when its stdin is closed (so it never
outlives the benchmark). Besides the fake Web API it answers three requests
of the benchmark's own, which no app under test makes:

- ``GET /bench/message?channel=C&ts=T``: a posted message (channel, ts, text,
  blocks, thread_ts) as JSON, to build Approve clicks on it;
- ``GET /bench/stats``: this process's CPU time (``time.process_time()``) and
  the Web API calls answered so far, by method;
- ``POST /bench/tidy``: ``gc.collect()`` then ``gc.freeze()``, as the
  benchmark does between rounds in its own process.

With the fake Slack here, the apps under test reach it over loopback as they
would reach Slack, and its work (parsing, recording, answering every Web API
call) is no longer done on the event loop that serves their acks.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's Slipway

from aiohttp import web  # noqa: E402

from bot.sandbox.fake_slack import FakeSlack  # noqa: E402


class BenchFakeSlack(FakeSlack):
    def web_app(self) -> web.Application:
        app = super().web_app()
        app.router.add_get("/bench/message", self._bench_message)
        app.router.add_get("/bench/stats", self._bench_stats)
        app.router.add_post("/bench/tidy", self._bench_tidy)
        return app

    async def _bench_message(self, request: web.Request) -> web.Response:
        message = self.messages.get((request.query.get("channel", ""), request.query.get("ts", "")))
        if message is None:
            raise web.HTTPNotFound()
        return web.json_response({"channel": message.channel, "ts": message.ts, "text": message.text,
                                  "blocks": message.blocks, "thread_ts": message.thread_ts})

    async def _bench_stats(self, request: web.Request) -> web.Response:
        return web.json_response({"cpu": time.process_time(),
                                  "calls": dict(Counter(call.method for call in self.calls))})

    async def _bench_tidy(self, request: web.Request) -> web.Response:
        gc.collect()
        gc.freeze()
        return web.json_response({"ok": True})


async def main(token: str) -> None:
    fake = await BenchFakeSlack(token=token).start()
    print(fake.url, flush=True)
    try:
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the benchmark closes it
    finally:
        await fake.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--token", required=True)
    asyncio.run(main(parser.parse_args().token))
