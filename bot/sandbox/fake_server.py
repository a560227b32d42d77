"""What the local stand-ins (fake Slack, fake GitHub) have in common: a real
aiohttp application served on loopback, port 0 by default, that tests wait
on by condition, never by sleeping."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from aiohttp import web

Self = TypeVar("Self", bound="FakeServer")


class FakeServer:
    url_suffix = ""  # appended to http://host:port to make ``url``

    def __init__(self) -> None:
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.url = ""

    def web_app(self) -> web.Application:
        raise NotImplementedError

    async def start(self: Self, host: str = "127.0.0.1", port: int = 0) -> Self:
        self._runner = web.AppRunner(self.web_app())
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        self.url = f"http://{host}:{self._runner.addresses[0][1]}{self.url_suffix}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def changed(self, change: Callable[[], Any] = lambda: None) -> None:
        """Apply ``change`` and wake whoever waits on this server."""
        async with self._changed:
            change()
            self._changed.notify_all()

    async def wait_for(self, predicate: Callable[[Any], Any], timeout: float = 10.0) -> Any:
        """Wait until ``predicate(self)`` is truthy and return its value
        (woken by each recorded change, never by a fixed sleep)."""
        async with self._changed:
            return await asyncio.wait_for(self._changed.wait_for(lambda: predicate(self)), timeout)
