"""Thin Slack and HTTP surfaces: each parses a request, calls one function
of ``bot/`` and renders the reply. No business rules live here."""

from __future__ import annotations

from slack_bolt.async_app import AsyncApp

from bot.messages import DeployMessages
from bot.tasks import BackgroundTasks
from bot.workflow import DeployWorkflow
from handlers import actions, commands, errors


def register(app: AsyncApp, workflow: DeployWorkflow, messages: DeployMessages, tasks: BackgroundTasks) -> None:
    """Attach every Slack listener to ``app``."""
    commands.register(app, workflow, messages, tasks)
    actions.register(app, workflow, messages, tasks)
    errors.register(app)
