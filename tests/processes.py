"""``slipway serve`` as a real process, for tests that kill, signal or
restart it (imported like tests.conftest)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

from bot.sandbox.fake_slack import FakeSlack
from tests.conftest import BOT_TOKEN, SIGNING_SECRET

ROOT = Path(__file__).resolve().parent.parent


class SlipwayProcess:
    """``slipway serve --port 0`` against ``fake``; its log is kept line by line."""

    def __init__(self, config: Path, db: Path, fake: FakeSlack, *, socket_mode: bool = False,
                 args: tuple[str, ...] = (), env: dict[str, str] | None = None) -> None:
        """``args``: more options for ``serve`` (``--lease 2``); ``env``:
        variables set over the test's environment (``SLACK_BOT_TOKEN``)."""
        self.config, self.db, self.fake = config, db, fake
        self.socket_mode = socket_mode
        self.args, self.env = args, env or {}
        self.process: asyncio.subprocess.Process | None = None
        self.port = 0
        self.log: list[str] = []
        self.logged = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> str:
        """Start it; return its Slack events URL once it listens."""
        clean = {k: v for k, v in os.environ.items() if not k.startswith("SLACK_")}
        secrets = {"SLACK_APP_TOKEN": "xapp-test"} if self.socket_mode else {"SLACK_SIGNING_SECRET": SIGNING_SECRET}
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot.runtime.cli", "serve", "--config", str(self.config), "--db", str(self.db),
            "--host", "127.0.0.1", "--port", "0", *self.args, cwd=ROOT, stderr=asyncio.subprocess.PIPE,
            env={**clean, "SLACK_BOT_TOKEN": BOT_TOKEN, "SLACK_API_URL": self.fake.api_url, **secrets, **self.env})
        assert self.process.stderr is not None
        while line := (await asyncio.wait_for(self.process.stderr.readline(), 30)).decode():
            self.log.append(line)
            if match := re.search(r"listening on http://[\d.]+:(\d+)", line):
                self.port = int(match.group(1))
                self._reader = asyncio.get_running_loop().create_task(self._read_log())
                return f"{self.base_url}/slack/events"
        raise AssertionError(f"slipway exited ({await self.process.wait()}) before listening")

    async def _read_log(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        while line := await self.process.stderr.readline():
            self.log.append(line.decode())
            self.logged.set()

    async def wait_for_log(self, text: str) -> None:
        while not any(text in line for line in self.log):
            self.logged.clear()
            await asyncio.wait_for(self.logged.wait(), 30)

    async def terminate(self) -> int:
        """SIGTERM, as a service manager stops it; its exit status."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.process.wait(), 30)

    async def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()

    def freeze(self) -> None:
        """SIGSTOP: alive, but silent (a frozen VM, a stalled event loop)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    async def healthz(self) -> tuple[int, dict]:
        """``GET /healthz``: its status and body."""
        import aiohttp

        async with aiohttp.ClientSession() as session:
            async with session.get(self.base_url + "/healthz") as response:
                return response.status, await response.json()

    async def close(self) -> None:
        """Kill it if a test left it running."""
        if self.process is not None and self.process.returncode is None:
            await self.kill()
