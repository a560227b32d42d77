"""The ship report: a Markdown record of a completed deploy, posted in its
thread when a production deploy completes and printed by
``slipway report <id>``.

What an engine or a service said (the engine's summary, the checks'
details) is escaped as Slack mrkdwn wants (``&lt;`` is also Markdown for
``<``), and the run's URL is an autolink (``<https://…>``, a link in both
Markdown and mrkdwn) only when it is a plain http(s) URL, so the same text
is safe in the thread: :func:`as_slack_mrkdwn` turns no Markdown link into a
Slack one, since an engine's summary could hold ``[runbook](https://evil…)``."""

from __future__ import annotations

import re

from bot.config import Config
from bot.durations import format_duration
from bot.slack.mrkdwn import escape, web_url
from store import Deploy, Store


def ship_report(store: Store, config: Config, deploy: Deploy) -> str:
    """Version, times, approvals, checks and the rollback procedure for
    exactly this deploy, in Markdown."""
    target = store.deploys.rollback_target(deploy)
    service = config.services.get(deploy.service)
    lines = [
        f"# Ship report: {deploy.service} {deploy.display_version} → {deploy.environment}",
        "",
        f"- **Deploy id:** #{deploy.id}" + (f" (rollback of #{deploy.rollback_of})" if deploy.rollback_of else ""),
        f"- **Status:** {deploy.status.replace('_', ' ')}" + (f" — {deploy.status_reason}" if deploy.status_reason else ""),
        f"- **Version:** {deploy.previous_version or 'nothing'} → {deploy.version}",
        f"- **Requested:** {deploy.requested_at} by {deploy.requested_by}",
        f"- **Approved:** {_approvals(deploy)}",
        f"- **Started:** {deploy.started_at or '—'}",
        f"- **Finished:** {deploy.finished_at or '—'} ({format_duration(deploy.duration_seconds)})",
        f"- **Engine:** {deploy.executor_kind or '—'}: {escape(deploy.engine_summary or '—')}"
        + (f" (run: <{escape(deploy.run_url)}>)" if web_url(deploy.run_url) else ""),
        "",
        "## Checks",
        "",
    ]
    checks = deploy.checks
    lines += [f"- {'✅' if c.get('passed') else '❌'} {escape(str(c.get('name')))}: {escape(str(c.get('detail')))}"
              for c in checks] or [
        "- no post-deploy checks are configured for this environment"]
    lines += ["", "## Rollback procedure", ""]
    if target is None:
        lines.append(f"- No earlier version of {deploy.service} succeeded on {deploy.environment}; "
                     "there is nothing to roll back to. Fix forward with a new deploy.")
    else:
        how = "the service's rollback engine" if service and service.rollback else "the deploy engine"
        lines += [
            f"- Target: {target.version} (deploy #{target.id}, the last good version before this one).",
            f"- Click **Roll back to {target.version}** on the deploy message, or type "
            f"`/deploy rollback {deploy.service} {deploy.environment}`; it runs {how} at once and is verified "
            "like any deploy.",
        ]
    lines += ["", "## Monitoring", "",
              f"- Watch {deploy.service} on {deploy.environment} for 15–30 minutes: error rate stable, latency "
              "within SLA, no memory growth, logs normal. Roll back at once if the error rate passes 5% or the "
              "service is unavailable."]
    return "\n".join(lines)


def as_slack_mrkdwn(markdown: str) -> str:
    """The report as Slack shows text: Slack's mrkdwn has no headings and
    writes bold and links its own way, so raw Markdown would show ``#`` and
    ``**`` literally. Its one link is already written as Slack reads it."""
    text = re.sub(r"^#{1,6} (.+)$", r"*\1*", markdown, flags=re.MULTILINE)
    return re.sub(r"\*\*(.+?)\*\*", r"*\1*", text)


def _approvals(deploy: Deploy) -> str:
    if deploy.approvals:
        return ", ".join(f"{a.user_id} at {a.approved_at}" for a in deploy.approvals)
    return f"{deploy.approved_at or '—'} (no approval needed)" if deploy.rollback_of is None else "rollback: no approval needed"
