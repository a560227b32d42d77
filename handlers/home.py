"""The App Home tab: each person who opens it gets it published (the tab
itself, and keeping it current, is ``bot.slack.home.HomeTabs``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from slack_bolt.async_app import AsyncApp

if TYPE_CHECKING:
    from bot.runtime.composition import Slipway


def register(app: AsyncApp, slipway: "Slipway") -> None:
    tabs = slipway.home_tabs

    @app.event("app_home_opened")
    async def on_home_opened(event: dict[str, Any]) -> None:
        if event.get("tab") == "home" and event.get("user"):  # the Messages tab is Slack's own
            tabs.opened(event["user"])
