"""Block Kit for alert messages: pure functions from stored alerts to blocks
(slack_sdk's typed blocks, see bot/slack/blocks.py). Everything a monitor
wrote goes through ``escape`` before it reaches Slack."""

from __future__ import annotations

from typing import Any

from slack_sdk.models.blocks import Block

from bot.slack.blocks import as_dicts, context, rollback_button, section
from bot.slack.mrkdwn import MAX_SECTION_TEXT, clip, escape, link
from store import Deploy, StoredAlert

LEVEL_LABELS = {
    "page": ":rotating_light: *PAGE*",
    "warn": ":warning: *Warning*",
    "notify": ":large_orange_circle: *Breach*",
    "info": ":information_source: *Alert*",
    "quiet": ":white_circle: *Below thresholds*",
}


def _who(alert: StoredAlert) -> str:
    where = " ".join(filter(None, [alert.service, alert.environment]))
    return escape(f"{alert.name} on {where}" if where else alert.name)


def _link(url: str | None) -> str | None:
    """A link to the monitor, or None when the URL cannot be one safely
    (not a plain http(s) URL: see ``bot.slack.mrkdwn.link``)."""
    return link(url, "open in the monitor")


def alert_blocks(alerts: list[StoredAlert], *, reasons: dict[int, str], tie: str | None, deploy: Deploy | None,
                 rollback_to: str | None, oncall: str | None) -> list[dict[str, Any]]:
    """One message for every alert of a (deploy or group, rule): the loudest
    firing one leads; each alert shows its number, baseline and ratio."""
    firing = [a for a in alerts if a.status == "firing"]
    lead = _loudest(firing) if firing else alerts[-1]
    if firing:
        head = f"{LEVEL_LABELS[lead.level]} {_who(lead)}"
        if lead.level == "page" and oncall:
            head += f" — {oncall}"
    else:
        head = f":white_check_mark: *Resolved* {_who(lead)}"
    lines = [head]
    listed = alerts[-10:] if lead in alerts[-10:] else [lead] + alerts[-9:]  # the lead's numbers always show
    for alert in listed:
        mark = "•" if alert.status == "firing" else "✓"
        reason, summary = escape(reasons.get(alert.id) or ""), escape(alert.summary or "")
        lines.append(f"{mark} {reason or summary}" + (f" — {summary}" if reason and summary else "") + (
            " (resolved)" if alert.status == "resolved" else ""))
    if len(alerts) > len(listed):
        lines.append(f"…and {len(alerts) - len(listed)} more alert(s) in this group")
    if tie:
        lines.append(f"_{tie}_")
    facts = [f"{len(firing)} firing, {len(alerts) - len(firing)} resolved", f"source: {lead.source}"]
    if link := _link(lead.url):
        facts.append(link)
    blocks: list[Block] = [section("\n".join(lines)), context(" · ".join(facts))]
    if firing and deploy is not None and rollback_to is not None:
        blocks.append(rollback_button(deploy, rollback_to, block_id=f"alert-rollback:{deploy.id}"))
    return as_dicts(blocks)


def _loudest(alerts: list[StoredAlert]) -> StoredAlert:
    from bot.alerts.rules import LEVELS

    return min(alerts, key=lambda a: (LEVELS.index(a.level), -a.id))


def fallback_text(alerts: list[StoredAlert]) -> str:
    firing = [a for a in alerts if a.status == "firing"]
    lead = _loudest(firing) if firing else alerts[-1]
    state = lead.level if firing else "resolved"
    return clip(f"[{state}] {_who(lead)}: {escape(lead.summary)}", MAX_SECTION_TEXT)


def change_line(alert: StoredAlert, change: str, reason: str) -> str:
    """The thread's line for one state change of an alert."""
    if change == "resolved":
        return f":white_check_mark: Resolved: {_who(alert)}"
    verb = {"new": "Firing", "louder": "Now louder", "quieter": "Now quieter"}[change]
    return clip(f"{LEVEL_LABELS[alert.level]} {verb}: {_who(alert)} — {escape(reason)}", MAX_SECTION_TEXT)


def digest_text(service: str | None, count: int) -> str:
    return f":bell: Alert storm: {count} more alert(s) for {escape(service or 'unlabelled services')}, see thread."
