"""Block Kit rendering: pure functions from deploy data to Slack blocks.

No business rules live here: whether a person may click a button is the
workflow's question; this module only shows the state it is given, within
Block Kit's limits (50 blocks a message, 3000 characters of section text,
150 of header text, 255-character action ids, 2000-character values).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from bot.versions import bump_kind
from store import Deploy

# Every interactive element Slipway renders; handlers register one listener
# each and tests check the manifest and help against this list.
ACTION_APPROVE = "deploy_approve"
ACTION_REJECT = "deploy_reject"
ACTION_CANCEL = "deploy_cancel"
ACTION_CHECKLIST = "checklist_tick"
ACTION_IDS = (ACTION_APPROVE, ACTION_REJECT, ACTION_CANCEL, ACTION_CHECKLIST)

MAX_BLOCKS = 50
MAX_SECTION_TEXT = 3000
MAX_HEADER_TEXT = 150

STATUS_LABELS = {
    "awaiting_approval": ":hourglass_flowing_sand: Awaiting approval",
    "approved": ":white_check_mark: Approved — waiting for the deploy engine",
    "deploying": ":rocket: Deploying",
    "verifying": ":mag: Verifying",
    "succeeded": ":large_green_circle: Succeeded",
    "failed": ":red_circle: Failed",
    "rejected": ":no_entry: Rejected",
    "cancelled": ":heavy_multiplication_x: Cancelled",
    "rolled_back": ":rewind: Rolled back",
}


def mention(user_id: str | None) -> str:
    return f"<@{user_id}>" if user_id else "nobody"


def when(iso: str | None) -> str:
    """A timestamp Slack shows in each reader's own time zone."""
    if not iso:
        return "at an unknown time"
    moment = datetime.fromisoformat(iso)
    fallback = moment.strftime("%Y-%m-%d %H:%M UTC")
    return f"<!date^{int(moment.timestamp())}^{{date_short_pretty}} {{time}}|{fallback}>"


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def version_change(deploy: Deploy) -> str:
    """``2.6.0 → v2.7.0 (minor)``: what changes, and how much."""
    previous = deploy.previous_version or "nothing"
    return f"{previous} → {deploy.display_version} ({bump_kind(deploy.previous_version, deploy.version)})"


def deploy_blocks(deploy: Deploy, *, required_approvals: int) -> list[dict[str, Any]]:
    """The deploy's message in #deployments, for its current state."""
    open_for_votes = deploy.status == "awaiting_approval"
    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {"type": "plain_text", "emoji": True,
                     "text": _clip(f"Deploy {deploy.service} {deploy.display_version} to {deploy.environment}",
                                   MAX_HEADER_TEXT)},
        },
        {
            "type": "section",
            "fields": [
                {"type": "mrkdwn", "text": f"*Service*\n{deploy.service}"},
                {"type": "mrkdwn", "text": f"*Environment*\n{deploy.environment}"},
                {"type": "mrkdwn", "text": f"*Version*\n{version_change(deploy)}"},
                {"type": "mrkdwn", "text": f"*Requested by*\n{mention(deploy.requested_by)}"},
            ],
        },
        {"type": "section", "text": {"type": "mrkdwn", "text": _clip(_status_line(deploy, required_approvals), MAX_SECTION_TEXT)}},
    ]
    if deploy.checklist:
        blocks.append({"type": "divider"})
        blocks.extend(_checklist_block(deploy, item, open_for_votes) for item in deploy.checklist)
    if open_for_votes:
        blocks.append(_buttons(deploy))
    blocks.append({
        "type": "context",
        "elements": [{"type": "mrkdwn", "text": f"Deploy #{deploy.id} · requested {when(deploy.requested_at)}"}],
    })
    return blocks


def deploy_fallback_text(deploy: Deploy) -> str:
    """The notification text (and what screen readers read)."""
    status = deploy.status.replace("_", " ")
    return f"Deploy {deploy.service} {deploy.display_version} to {deploy.environment}: {status}"


def _status_line(deploy: Deploy, required: int) -> str:
    line = STATUS_LABELS.get(deploy.status, deploy.status)
    if deploy.status_reason:
        line += f" — {deploy.status_reason}"
    approvals = deploy.approvals
    if deploy.status == "awaiting_approval":
        names = ", ".join(mention(a.user_id) for a in approvals) or "none yet"
        line += f"\n*Approvals:* {len(approvals)} of {required} ({names})"
        if deploy.checklist:
            ticked = sum(item.ticked for item in deploy.checklist)
            line += f"\n*Checklist:* {ticked} of {len(deploy.checklist)} ticked"
    elif approvals:
        line += "\n*Approved by:* " + ", ".join(mention(a.user_id) for a in approvals)
    return line


def _checklist_block(deploy: Deploy, item: Any, interactive: bool) -> dict[str, Any]:
    who = f"\n_ticked by {mention(item.ticked_by)}_" if item.ticked else ""
    mark = ":white_check_mark:" if item.ticked else ":white_large_square:"
    block: dict[str, Any] = {
        "type": "section",
        "block_id": f"checklist:{deploy.id}:{item.position}",
        "text": {"type": "mrkdwn", "text": _clip(f"{mark} {item.label}{who}", MAX_SECTION_TEXT)},
    }
    if interactive:
        option = {"text": {"type": "mrkdwn", "text": "Done"}, "value": f"{deploy.id}:{item.position}"}
        accessory: dict[str, Any] = {"type": "checkboxes", "action_id": ACTION_CHECKLIST, "options": [option]}
        if item.ticked:
            accessory["initial_options"] = [option]
        block["accessory"] = accessory
    return block


def _buttons(deploy: Deploy) -> dict[str, Any]:
    value = str(deploy.id)
    return {
        "type": "actions",
        "block_id": f"deploy:{deploy.id}",
        "elements": [
            {"type": "button", "action_id": ACTION_APPROVE, "style": "primary", "value": value,
             "text": {"type": "plain_text", "text": "Approve"}},
            {"type": "button", "action_id": ACTION_REJECT, "style": "danger", "value": value,
             "text": {"type": "plain_text", "text": "Reject"},
             "confirm": {
                 "title": {"type": "plain_text", "text": "Reject this deploy?"},
                 "text": {"type": "mrkdwn", "text": _clip(
                     f"{deploy.service} {deploy.display_version} will not go to {deploy.environment}; "
                     "a new request is needed to try again.", 300)},
                 "confirm": {"type": "plain_text", "text": "Reject"},
                 "deny": {"type": "plain_text", "text": "Keep it"},
                 "style": "danger",
             }},
            {"type": "button", "action_id": ACTION_CANCEL, "value": value,
             "text": {"type": "plain_text", "text": "Cancel"}},
        ],
    }


def request_accepted_text(deploy: Deploy, channel: str) -> str:
    if deploy.status == "approved":
        return (f"Deploy #{deploy.id} of {deploy.service} {deploy.display_version} to {deploy.environment} "
                f"needs no approval; posted in <#{channel}>.")
    return (f"Deploy #{deploy.id} of {deploy.service} {deploy.display_version} to {deploy.environment} "
            f"is waiting for approval in <#{channel}>.")


def locks_text(locks: list[Any]) -> str:
    if not locks:
        return "No locks."
    lines = []
    for lock in locks:
        scope = "every environment" if lock.environment == "*" else lock.environment
        lines.append(f"• {lock.service} on {scope}: locked by {mention(lock.locked_by)} {when(lock.locked_at)}"
                     f" — “{lock.reason}”")
    return "\n".join(lines)
