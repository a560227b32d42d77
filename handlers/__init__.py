"""Thin Slack and HTTP surfaces: each parses a request, calls one function
of ``bot/`` and renders the reply. No business rules live here."""

from __future__ import annotations

from typing import TYPE_CHECKING

from slack_bolt.async_app import AsyncApp

from handlers import actions, commands, errors, home

if TYPE_CHECKING:
    from bot.runtime.composition import Slipway


def register(app: AsyncApp, slipway: "Slipway") -> None:
    """Attach every Slack listener to ``app``."""
    commands.register(app, slipway)
    actions.register(app, slipway)
    home.register(app, slipway)
    errors.register(app)
