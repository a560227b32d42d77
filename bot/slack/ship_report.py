"""The ship report: a Markdown record of a completed deploy, posted in its
thread when a production deploy completes and printed by
``slipway report <id>``.

What an engine or a service said (the engine's summary, the checks'
details) is escaped as Slack mrkdwn wants (``&lt;`` is also Markdown for
``<``), and the run's URL is an autolink (``<https://…>``, a link in both
Markdown and mrkdwn) only when it is a plain http(s) URL, so the same text
is safe in the thread: :func:`as_slack_mrkdwn` turns no Markdown link into a
Slack one, since an engine's summary could hold ``[runbook](https://evil…)``.

A staged rollout's record (every stage, its times and decision, every
measurement) is read here by :func:`read_rollout`, which the deploy's
message and ``/deploy show`` read it with too: this module, like
``bot.slack.mrkdwn``, reaches no Slack library, so the runner may call it."""

from __future__ import annotations

import re
from datetime import datetime, timezone

from bot.changes.model import FIRST, SAME, Commit, PullRequest
from bot.config import Config
from bot.deploys.progressive import stage_line
from bot.durations import format_duration
from bot.slack.mrkdwn import (
    MAX_FILES_LISTED,
    MAX_NAME,
    MAX_TITLE,
    STRATEGY_WORDS,
    RolloutFacts,
    changes_summary,
    clip_mrkdwn,
    escape,
    fit_lines,
    name_list,
    shipped,
    stage_groups,
    web_url,
)
from store import Deploy, Store

MAX_REPORT_ROLLOUT = 12000  # characters of the report's rollout record (a Slack message holds 40,000)
MAX_REPORT_CHANGES = 12000  # characters of the report's pull requests and commits


def read_rollout(store: Store, config: Config, deploy_id: int, now: datetime | None = None, *,
                 recent: int | None = None) -> RolloutFacts | None:
    """The rollout of ``deploy_id`` with its stage line and every measurement
    (``recent``: only the last so many of each check of each stage, all a
    message shows), None for a deploy without one. ``now``: the wall clock by
    default, which the runner's stage deadlines are stamped with."""
    rollout = store.rollouts.get(deploy_id)
    if rollout is None:
        return None
    now = now or datetime.now(timezone.utc)
    checks = config.analysis.checks if config.analysis is not None else {}
    measured = store.rollouts.measurements(deploy_id) if recent is None else \
        store.rollouts.recent_measurements(deploy_id, recent)
    return RolloutFacts(rollout, stage_line(rollout, now), tuple(measured), checks)


def ship_report(store: Store, config: Config, deploy: Deploy) -> str:
    """Version, times, approvals, what it shipped (every pull request and
    commit, as far as :data:`MAX_REPORT_CHANGES` holds), checks and the
    rollback procedure for exactly this deploy, in Markdown."""
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
        *_changes_lines(deploy),
        "## Checks",
        "",
    ]
    checks = deploy.checks
    lines += [f"- {'✅' if c.get('passed') else '❌'} {escape(str(c.get('name')))}: {escape(str(c.get('detail')))}"
              for c in checks] or [
        "- no post-deploy checks are configured for this environment"]
    if (facts := read_rollout(store, config, deploy.id)) is not None:
        lines += ["", "## Rollout", "", *_rollout_lines(facts)]
    lines += ["", "## Rollback procedure", ""]
    if facts is not None and facts.rollout.outcome == "aborted":
        lines.append(f"- Nothing to roll back: the rollout was aborted before it took all traffic and "
                     f"{deploy.previous_version or 'the stable version'} kept serving. {deploy.environment} is locked "
                     f"and {deploy.display_version} blocked there: fix forward, then "
                     f"`/deploy unlock {deploy.service} {deploy.environment}`.")
    elif target is None:
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


def _rollout_lines(facts: RolloutFacts) -> list[str]:
    """The strategy, how it ended, then each stage with its times and
    decision and each of its measurements (bounded: the last left out, and counted)."""
    rollout = facts.rollout
    heads = [f"- **Strategy:** {STRATEGY_WORDS.get(rollout.strategy, rollout.strategy)} "
             f"(on failure: {rollout.on_failure}); outcome: {rollout.outcome or 'not ended'}",
             f"- **Stages:** {escape(facts.line)}"]
    groups = stage_groups(facts, lambda iso: iso or "—", bullet="- **Stage**", item="  -")
    return heads + fit_lines(groups, MAX_REPORT_ROLLOUT, "measurement")


def _changes_lines(deploy: Deploy) -> list[str]:
    """``## Changes``: the summary and compare link, the migration files,
    why the changes were unavailable, what the artifact check found, then
    every pull request and commit (escaped; links only as autolinks to
    plain web URLs), the last left out and counted past the cap. Nothing
    for a deploy whose changes were not looked up."""
    found = shipped(deploy)
    if found is None:
        return []
    lines = ["## Changes", ""]
    pulls: list[str] = []
    commits: list[str] = []
    if (changes := found.changes) is not None:
        compare = f" (compare: <{escape(changes.compare_url)}>)" if web_url(changes.compare_url) else ""
        lines.append(f"- **What it shipped:** {changes_summary(deploy, changes)}{compare}")
        if changes.migration_files:
            files = name_list([f"`{_flat(path, MAX_NAME)}`" for path in changes.migration_files],
                              MAX_FILES_LISTED, 3000)
            what = "Carried a migration" if deploy.migration else "Migration files in the range"
            lines.append(f"- **{what}:** {files}")
        if changes.direction not in (FIRST, SAME):
            if len(changes.commits) < changes.commit_count:
                lines.append(f"- The source listed {len(changes.commits)} of the {changes.commit_count} commits.")
            pulls = [_pull_item(pull) for pull in changes.pulls]
            commits = [_commit_item(commit) for commit in changes.commits]
    if found.unavailable is not None:
        lines.append(f"- Changes unavailable: {_flat(found.unavailable, MAX_NAME * 2)}")
    if found.artifact_problems:
        lines.append(clip_mrkdwn("- Artifacts: " + "; ".join(found.artifact_problems), 3000))
    groups = [(head, items, noun) for head, items, noun in (("### Pull requests", pulls, "pull request"),
                                                             ("### Commits", commits, "commit")) if items]
    need = [len(head) + 1 + _size(items) for head, items, _ in groups]
    room = MAX_REPORT_CHANGES
    for index, (head, items, noun) in enumerate(groups):  # the pull requests get at least half when both do not fit
        later = sum(need[index + 1:])
        budget = room if need[index] + later <= room else max(room // (len(groups) - index), room - later)
        part = fit_lines([(head, items)], budget, noun)
        lines += ["", *part]
        room -= _size(part)
    return [*lines, ""]


def _size(lines: list[str]) -> int:
    return sum(len(line) + 1 for line in lines)


def _flat(text: str | None, limit: int = MAX_TITLE) -> str:
    """A source's text on one line, escaped, bounded."""
    return clip_mrkdwn(escape(" ".join((text or "").split())), limit)


def _pull_item(pull: PullRequest) -> str:
    text = f"- #{pull.number} {_flat(pull.title)}"
    if pull.author:
        text += f" — {_flat(pull.author, MAX_NAME)}"
    return text + (f" (<{escape(pull.url)}>)" if pull.url and web_url(pull.url) else "")


def _commit_item(commit: Commit) -> str:
    text = f"- `{escape(commit.short)}` {_flat(commit.title)}"
    if commit.author:
        text += f" — {_flat(commit.author, MAX_NAME)}"
    return text + (f" (#{commit.pull})" if commit.pull is not None and f"#{commit.pull}" not in commit.title else "")
