"""Adapters to the team's real deploy engines: a command, a webhook to a CI
system, or a GitHub Actions workflow. Slipway never deploys by itself."""

from __future__ import annotations

import os
from collections.abc import Mapping

from bot.config import DeployExecutor
from bot.executors.base import Executor, Job, NotResumable, Outcome, RememberReference
from bot.executors.webhook import EngineReports

__all__ = ["Executor", "Job", "NotResumable", "Outcome", "RememberReference", "EngineReports", "build_executor"]


def build_executor(spec: DeployExecutor, *, reports: EngineReports, public_url: str | None,
                   environ: Mapping[str, str] | None = None, claimed_runs: set[int] | None = None) -> Executor:
    """The executor ``spec`` describes. ``claimed_runs`` are the GitHub run ids
    deploys already follow (shared, so two deploys never follow one run)."""
    if spec.command is not None:
        from bot.executors.command import CommandExecutor

        return CommandExecutor(spec)
    if spec.webhook is not None:
        from bot.executors.webhook import WebhookExecutor

        assert public_url is not None, "config validation requires public_url for webhook engines"
        return WebhookExecutor(spec, reports, public_url, environ)
    from bot.executors.github_actions import GitHubActionsExecutor

    return GitHubActionsExecutor(spec, environ=os.environ if environ is None else environ, claimed_runs=claimed_runs)
