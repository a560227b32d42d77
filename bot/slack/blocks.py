"""Block Kit rendering: pure functions from deploy data to Slack blocks.

No business rules live here: whether a person may click a button is the
workflow's question; this module only shows the state it is given, within
Block Kit's limits (50 blocks a message, 3000 characters of section text,
150 of header text, 255-character action ids, 2000-character values).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from bot.config import USER_ID
from bot.deploys.versions import bump_kind
from store import Deploy

# Every interactive element Slipway renders; handlers register one listener
# each and tests check the manifest and help against this list.
ACTION_APPROVE = "deploy_approve"
ACTION_REJECT = "deploy_reject"
ACTION_CANCEL = "deploy_cancel"
ACTION_CHECKLIST = "checklist_tick"
ACTION_ROLLBACK = "deploy_rollback"
ACTION_IDS = (ACTION_APPROVE, ACTION_REJECT, ACTION_CANCEL, ACTION_CHECKLIST, ACTION_ROLLBACK)
MAX_LOG_TAIL = 2500  # characters of engine output shown in the thread

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
    "expired": ":hourglass: Expired",
}


def mention(user_id: str | None) -> str:
    """A Slack mention of a user id; anything else (e.g. "slipway" for an
    automatic action) is shown as plain text."""
    if not user_id:
        return "nobody"
    return f"<@{user_id}>" if USER_ID.match(user_id) else user_id


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


def deploy_blocks(deploy: Deploy, *, required_approvals: int, rollback_to: str | None = None,
                  rollback_note: str | None = None, stale_approvals: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """The deploy's message in #deployments, for its current state.

    ``rollback_to`` is the version a Rollback button would go back to (the
    button is shown only with it); ``rollback_note`` says why there is none.
    ``stale_approvals``: who approved too long ago for it to count.
    """
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
            ] + ([{"type": "mrkdwn", "text": "*Database migration*\n:card_file_box: carried by this deploy"}]
                 if deploy.migration else []),
        },
        {"type": "section", "text": {"type": "mrkdwn",
                                     "text": _clip(_status_line(deploy, required_approvals, stale_approvals),
                                                   MAX_SECTION_TEXT)}},
    ]
    if deploy.override_reason:
        blocks.append({"type": "section", "text": {"type": "mrkdwn",
                                                   "text": _clip(override_text(deploy, stale_approvals),
                                                                 MAX_SECTION_TEXT)}})
    if deploy.checklist:
        blocks.append({"type": "divider"})
        blocks.extend(_checklist_block(deploy, item, open_for_votes) for item in deploy.checklist)
    steps = _steps(deploy)
    if steps:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": _clip(steps, MAX_SECTION_TEXT)}})
    if open_for_votes:
        blocks.append(_buttons(deploy))
    elif rollback_to is not None:
        blocks.append(rollback_button(deploy, rollback_to))
    footer = f"Deploy #{deploy.id} · requested {when(deploy.requested_at)}"
    if deploy.rollback_of is not None:
        footer += (f" · rolls back #{deploy.rollback_of}; {deploy.environment} locked and {deploy.previous_version} "
                   "blocked there since it started (`/deploy locks`)")
    if rollback_note:
        footer += f" · {rollback_note}"
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": _clip(footer, MAX_SECTION_TEXT)}]})
    return blocks


def _steps(deploy: Deploy) -> str:
    """What the engine and the checks did, with durations."""
    lines = []
    if backup := deploy.reference.get("backup"):
        mark = ":white_check_mark:" if backup.get("succeeded") else ":x:"
        lines.append(f"{mark} *Backup*: {backup.get('summary', '')}")
    if deploy.started_at:
        took = f", took {duration_text(deploy.duration_seconds)}" if deploy.duration_seconds is not None else ""
        lines.append(f"*Started* {when(deploy.started_at)}{took}")
    if deploy.engine_summary:
        kind = (deploy.executor_kind or "engine").replace("_", " ")
        link = f" · <{deploy.run_url}|run log>" if deploy.run_url else ""
        engine_ok = deploy.status in ("verifying", "succeeded", "rolled_back") or bool(deploy.checks)
        mark = ":white_check_mark:" if engine_ok else ":x:"
        lines.append(f"{mark} *Deploy* ({kind}): {deploy.engine_summary}{link}")
    if deploy.checks:
        passed = sum(1 for check in deploy.checks if check.get("passed"))
        mark = ":white_check_mark:" if passed == len(deploy.checks) else ":x:"
        lines.append(f"{mark} *Verification*: {passed} of {len(deploy.checks)} check(s) passed")
    return "\n".join(lines)


def rollback_button(deploy: Deploy, target: str, block_id: str | None = None) -> dict[str, Any]:
    """A Rollback button whose Slack confirmation names exactly what happens."""
    plan = rollback_plan_text(deploy, target)
    return {
        "type": "actions",
        "block_id": block_id or f"rollback:{deploy.id}",
        "elements": [{
            "type": "button", "action_id": ACTION_ROLLBACK, "style": "danger", "value": f"{deploy.id}:{target}",
            "text": {"type": "plain_text", "text": _clip(f"Roll back to {target}", 75)},
            "confirm": {
                "title": {"type": "plain_text", "text": "Roll back now?"},
                "text": {"type": "mrkdwn", "text": _clip(f"{plan}. This runs at once, without approvals.", 300)},
                "confirm": {"type": "plain_text", "text": "Roll back"},
                "deny": {"type": "plain_text", "text": "Not now"},
                "style": "danger",
            },
        }],
    }


def rollback_plan_text(deploy: Deploy, target: str) -> str:
    """Exactly what a rollback of ``deploy`` does: ``api production: 2.7.0 → 2.6.3``."""
    return f"{deploy.service} {deploy.environment}: {deploy.version} → {target}"


def rollback_offer_blocks(deploy: Deploy, target: str) -> list[dict[str, Any]]:
    """The ephemeral confirmation `/deploy rollback` answers with."""
    return [
        {"type": "section", "text": {"type": "mrkdwn", "text": _clip(
            f"*{rollback_plan_text(deploy, target)}*\nThis undoes #{deploy.id} ({deploy.display_version}, "
            f"{deploy.status.replace('_', ' ')}, deployed by {mention(deploy.requested_by)}) and runs at once.",
            MAX_SECTION_TEXT)}},
        rollback_button(deploy, target),
    ]


def duration_text(seconds: float | None) -> str:
    if seconds is None:
        return "an unknown time"
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s" if minutes else f"{secs}s"


def engine_log_text(deploy: Deploy, succeeded: bool) -> str:
    mark = ":white_check_mark:" if succeeded else ":x:"
    kind = (deploy.executor_kind or "engine").replace("_", " ")
    text = f"{mark} Deploy engine ({kind}): {deploy.engine_summary}"
    if deploy.run_url:
        text += f" — <{deploy.run_url}|run log>"
    tail = (deploy.log_tail or "").strip()
    if tail:
        if len(tail) > MAX_LOG_TAIL:
            tail = "…" + tail[-MAX_LOG_TAIL:]
        text += "\n```" + tail.replace("```", "ˋˋˋ") + "```"
    return text


def verification_text(deploy: Deploy) -> str:
    lines = ["*Verification*"]
    for check in deploy.checks:
        mark = ":white_check_mark:" if check.get("passed") else (":fast_forward:" if check.get("skipped") else ":x:")
        lines.append(f"{mark} {check.get('name')}: {check.get('detail')}")
    return _clip("\n".join(lines), MAX_SECTION_TEXT)


def success_text(deploy: Deploy, took: str) -> str:
    what = "rolled back to" if deploy.rollback_of is not None else "is live on"
    if deploy.rollback_of is not None:
        return f":large_green_circle: {deploy.service} {deploy.environment} {what} {deploy.display_version} (took {took})."
    return f":large_green_circle: {deploy.service} {deploy.display_version} {what} {deploy.environment} (took {took})."


def failure_text(deploy: Deploy) -> str:
    if deploy.rollback_of is not None:  # the rollback's lock stays: what runs now is in doubt
        return (f":red_circle: The rollback of {deploy.service} on {deploy.environment} to {deploy.display_version} "
                f"failed: {deploy.status_reason}.\n{deploy.environment} stays locked and {deploy.previous_version} "
                f"blocked there: try the rollback again from #{deploy.rollback_of}, or fix forward once it is safe "
                f"(`/deploy unlock {deploy.service} {deploy.environment}`).")
    return (f":red_circle: {deploy.service} {deploy.display_version} failed on {deploy.environment}: "
            f"{deploy.status_reason}.\n{deploy.service} is unlocked on {deploy.environment}: fix forward with a new "
            "`/deploy`, or roll back with the button on this message.")


def record_text(deploy: Deploy) -> str:
    """``/deploy show``: the whole record of one deploy."""
    lines = [f"*Deploy #{deploy.id}* — {deploy.service} {deploy.display_version} to {deploy.environment}: "
             f"{deploy.status.replace('_', ' ')}" + (f" ({deploy.status_reason})" if deploy.status_reason else "")]
    lines.append(f"• Version: {version_change(deploy)}")
    lines.append(f"• Requested by {mention(deploy.requested_by)} {when(deploy.requested_at)}")
    if deploy.approvals:
        lines.append("• Approved by " + ", ".join(f"{mention(a.user_id)} {when(a.approved_at)}" for a in deploy.approvals))
    elif deploy.approved_at:
        lines.append(f"• Approved {when(deploy.approved_at)} (no approval needed)")
    if deploy.started_at:
        lines.append(f"• Started {when(deploy.started_at)}" + (
            f", finished {when(deploy.finished_at)} ({duration_text(deploy.duration_seconds)})" if deploy.finished_at else ""))
    if deploy.engine_summary:
        ref = f", exit code {deploy.exit_code}" if deploy.exit_code is not None else ""
        link = f", <{deploy.run_url}|run>" if deploy.run_url else ""
        lines.append(f"• Engine ({deploy.executor_kind}): {deploy.engine_summary}{ref}{link}")
    for check in deploy.checks:
        lines.append(f"• {'✅' if check.get('passed') else '❌'} {check.get('name')}: {check.get('detail')}")
    if deploy.override_reason:
        freezes = "; ".join(f"{f['reason']} ({f['schedule']})" for f in deploy.overridden_freezes)
        lines.append(f"• Freeze override: “{deploy.override_reason}”, inside {freezes}")
    if deploy.rollback_of is not None:
        lines.append(f"• Rollback of #{deploy.rollback_of}")
    if deploy.permalink:
        lines.append(f"• <{deploy.permalink}|Message in the deploy channel>")
    return _clip("\n".join(lines), MAX_SECTION_TEXT)


def history_text(service: str, environment: str | None, deploys: list[Deploy]) -> str:
    where = f" on {environment}" if environment else ""
    if not deploys:
        return f"No deploys of {service}{where} yet."
    lines = [f"*Recent deploys of {service}{where}*"]
    for deploy in deploys:
        rollback = f" (rollback of #{deploy.rollback_of})" if deploy.rollback_of is not None else ""
        lines.append(f"• #{deploy.id} {deploy.display_version} → {deploy.environment}: "
                     f"{deploy.status.replace('_', ' ')}{rollback}, by {mention(deploy.requested_by)} "
                     f"{when(deploy.requested_at)}")
    return _clip("\n".join(lines), MAX_SECTION_TEXT)


def deploy_fallback_text(deploy: Deploy) -> str:
    """The notification text (and what screen readers read)."""
    status = deploy.status.replace("_", " ")
    return f"Deploy {deploy.service} {deploy.display_version} to {deploy.environment}: {status}"


def _status_line(deploy: Deploy, required: int, stale: tuple[str, ...] = ()) -> str:
    line = STATUS_LABELS.get(deploy.status, deploy.status)
    if deploy.status_reason:
        line += f" — {deploy.status_reason}"
    approvals = deploy.approvals
    if deploy.status == "awaiting_approval":
        counted = [a for a in approvals if a.user_id not in stale]
        names = ", ".join(mention(a.user_id) for a in counted) or "none yet"
        line += f"\n*Approvals:* {len(counted)} of {required} ({names})"
        if stale:
            line += ("\n_No longer counted, given too long ago (approve again):_ "
                     + ", ".join(mention(user) for user in stale))
        if deploy.checklist:
            ticked = sum(item.ticked for item in deploy.checklist)
            line += f"\n*Checklist:* {ticked} of {len(deploy.checklist)} ticked"
        if deploy.expires_at:
            line += f"\n*Expires* {when(deploy.expires_at)} unless decided"
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
    """Locks with who, when, why and until when."""
    if not locks:
        return "No locks."
    lines = []
    for lock in locks:
        scope = "every environment" if lock.environment == "*" else lock.environment
        until = f"until {when(lock.until)}" if lock.until else "until someone unlocks it"
        lines.append(f"• {lock.service} on {scope}: locked by {mention(lock.locked_by)} {when(lock.locked_at)}"
                     f" — “{lock.reason}” — {until}")
    return _clip("\n".join(lines), MAX_SECTION_TEXT)


def lock_list_text(locks: list[Any], blocks: list[Any]) -> str:
    """``/deploy locks``: every lock, then every version blocked after a rollback."""
    lines = ["*Locks*", locks_text(locks)]
    if blocks:
        lines.append("*Blocked versions* (rolled back; lift with `/deploy unblock <service> <version> <environment>`)")
        lines.extend(f"• {b.service} {b.version} on {b.environment}: {b.reason} {when(b.blocked_at)}"
                     + (f" (rollback #{b.rollback_id})" if b.rollback_id else "") for b in blocks)
    return _clip("\n".join(lines), MAX_SECTION_TEXT)


def unblocked_text(blocks: list[Any], user: str, still_locked: list[Any] = ()) -> str:
    """``still_locked``: locks that keep stopping deploys where the version was
    unblocked (e.g. the rollback's own), so nobody takes the block for the lot."""
    where = ", ".join(b.environment for b in blocks)
    text = (f":white_check_mark: {mention(user)} unblocked {blocks[0].service} {blocks[0].version} on {where}: "
            "it may be deployed there again.")
    if still_locked:
        text += ("\nDeploys there still wait on a lock (`/deploy unlock` once it is safe):\n"
                 + locks_text(list(still_locked)))
    return text


def expired_locks_text(locks: list[Any]) -> str:
    """The channel is told once that a lock's time ran out."""
    lines = []
    for lock in locks:
        scope = "every environment" if lock.environment == "*" else lock.environment
        lines.append(f":unlock: The lock on {lock.service} {scope} by {mention(lock.locked_by)} "
                     f"(“{lock.reason}”) expired {when(lock.until)} and released itself.")
    return _clip("\n".join(lines), MAX_SECTION_TEXT)


def override_text(deploy: Deploy, stale_approvals: tuple[str, ...] = ()) -> str:
    """The freeze a request overrides, why, and its extra approval (an
    approval given too long ago, ``stale_approvals``, gives it no more)."""
    freezes = "; ".join(f"{f['reason']} ({f['schedule']}), this one until {when(f['until'])}"
                        for f in deploy.overridden_freezes)
    counted = [a for a in deploy.approvals if a.user_id not in stale_approvals]
    # whose approval fills the override slot: someone who holds only that role, else one who holds both
    giver = next((a.user_id for a in counted if a.counts_as == "override"),
                 next((a.user_id for a in counted if a.counts_as == "both"), None))
    if giver is not None:
        state = f"\n*Override approval:* given by {mention(giver)}"
    elif deploy.status == "awaiting_approval":
        state = "\n*Override approval:* still needed, from the environment's `override` role"
    else:
        state = ""
    return (f":snowflake: *Freeze override* — {deploy.environment} is frozen: {freezes}.\n"
            f"*Reason:* “{deploy.override_reason}”\nNeeds one approval from the `override` role on top of the "
            f"usual ones.{state}")


def override_unused_text(deploy: Deploy) -> str:
    return (f"\nNo freeze covers {deploy.environment} now, so `--override` was not used: this is an ordinary "
            "request (if a freeze starts before it runs, it stops it; ask again with `--override` then).")
