"""Slack mrkdwn: pure functions from deploy data to the text Slack shows.

Thread replies, ephemeral answers, reasons and DMs are written here, and
the Block Kit builders (bot/slack/blocks.py, status.py) put the same text in
their blocks. Nothing here imports slack_sdk or slack_bolt: the deploy
domain (bot/deploys) writes its messages with these, and an import-linter
contract keeps it from reaching Slack's libraries even indirectly.

Text that people, engines or monitors supply never enters mrkdwn as they
wrote it: it goes through :func:`escape` (the one function for it), an
engine's output through :func:`code_block`, an engine's or monitor's URL
through :func:`link`. Which texts those are:

- stored raw, escaped here when drawn: a deploy's ``override_reason``,
  ``engine_summary``, ``log_tail``, ``run_url`` and its checks' names and
  details (the ship report escapes the same fields);
- stored as mrkdwn, escaped when Slipway composes them: a deploy's
  ``status_reason`` and a lock's or blocked version's ``reason`` (they mix
  Slipway's own mentions, "rejected by <@U…>", with what a person or an
  engine wrote, so the person's part is escaped as the reason is written);
- written by the operator in the config (checklist items, freeze reasons):
  trusted like the rest of the config, and may hold deliberate mrkdwn links.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from bot.config import USER_ID
from bot.deploys.versions import bump_kind
from bot.durations import format_duration
from store import Deploy, DeployStatus

# Block Kit's limit on a section's text, which these texts are shown in
# (equal to slack_sdk's SectionBlock.text_max_length; a test checks it)
MAX_SECTION_TEXT = 3000
MAX_LOG_TAIL = 2500  # characters of engine output shown in the thread

STATUS_LABELS = {
    DeployStatus.AWAITING_APPROVAL: ":hourglass_flowing_sand: Awaiting approval",
    DeployStatus.APPROVED: ":white_check_mark: Approved — waiting for the deploy engine",
    DeployStatus.DEPLOYING: ":rocket: Deploying",
    DeployStatus.VERIFYING: ":mag: Verifying",
    DeployStatus.SUCCEEDED: ":large_green_circle: Succeeded",
    DeployStatus.FAILED: ":red_circle: Failed",
    DeployStatus.REJECTED: ":no_entry: Rejected",
    DeployStatus.CANCELLED: ":heavy_multiplication_x: Cancelled",
    DeployStatus.ROLLED_BACK: ":rewind: Rolled back",
    DeployStatus.EXPIRED: ":hourglass: Expired",
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


def ago(iso: str) -> str:
    """How long ago, as each reader's Slack client says it (so a Home tab
    published hours ago still reads right), with the date as fallback."""
    moment = datetime.fromisoformat(iso)
    return f"<!date^{int(moment.timestamp())}^{{ago}}|{moment.strftime('%Y-%m-%d %H:%M UTC')}>"


_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
MAX_URL = 2000  # longer engine or monitor URLs are shown as no link at all


def escape(text: str) -> str:
    """Text a person, an engine or a monitor supplied, as Slack shows it
    literally: ``<!channel>`` or ``<!here>`` must not ping anyone, ``<@U…>``
    mention nobody, ``<https://evil.example|runbook>`` forge no link. Only
    Slack's three control characters change (``*bold*`` stays bold, which is
    harmless). Every such text goes through this one function."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def unescape(text: str) -> str:
    """Slack's own escaping undone: a slash command's text arrives with
    ``&``, ``<`` and ``>`` escaped, and would otherwise be escaped twice on
    its way back (``&amp;amp;``). ``&amp;`` last, so ``&amp;lt;`` reads ``&lt;``."""
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def web_url(url: object) -> str | None:
    """``url`` if it is an absolute http(s) URL that can stand in a Slack
    link as it is, else None: no other scheme, no host-less URL, and none
    of the characters a URL must percent-encode that would end the link
    early (``<``, ``>``, ``|``, spaces, control characters)."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL:
        return None
    if any(char in "<>|\"` " or ord(char) < 0x21 or ord(char) == 0x7F for char in url):
        return None
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unbalanced [ in the host
        return None
    return url if parts.scheme.lower() in ("http", "https") and parts.hostname else None


def link(url: str | None, label: str) -> str | None:
    """``<url|label>`` for an engine's or monitor's URL, escaped; None when
    the URL is not a plain http(s) one (see :func:`web_url`), so that the
    caller shows no link rather than a forged or broken one."""
    if web_url(url) is None:
        return None
    return f"<{escape(url)}|{escape(label)}>"


def code_block(text: str, limit: int = MAX_LOG_TAIL) -> str:
    """An engine's output as a code block: its last ``limit`` characters as
    sent (an ellipsis says it was cut), escaped, since Slack acts on
    ``<!channel>`` inside a code block too, and with its own fences defused.
    Empty output is no block at all."""
    text = text.strip().replace("```", "ˋˋˋ")
    if not text:
        return ""
    pieces, size = [], 0
    for char in reversed(text):
        piece = _ESCAPES.get(char, char)
        if size + len(piece) > limit:
            pieces.append("…")
            break
        pieces.append(piece)
        size += len(piece)
    return "```" + "".join(reversed(pieces)) + "```"


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, an ellipsis saying it was cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def version_change(deploy: Deploy) -> str:
    """``2.6.0 → v2.7.0 (minor)``: what changes, and how much."""
    previous = deploy.previous_version or "nothing"
    return f"{previous} → {deploy.display_version} ({bump_kind(deploy.previous_version, deploy.version)})"


def status_text(deploy: Deploy, required: int, stale: tuple[str, ...] = ()) -> str:
    """The deploy's state, its approvals so far and, while it waits, its checklist and expiry."""
    line = STATUS_LABELS.get(deploy.status, deploy.status)
    if deploy.status_reason:
        line += f" — {deploy.status_reason}"
    approvals = deploy.approvals
    if deploy.status == DeployStatus.AWAITING_APPROVAL:
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


def steps_text(deploy: Deploy) -> str:
    """What the engine and the checks did, with durations."""
    lines = []
    if backup := deploy.reference.get("backup"):
        mark = ":white_check_mark:" if backup.get("succeeded") else ":x:"
        lines.append(f"{mark} *Backup*: {escape(str(backup.get('summary', '')))}")
    if deploy.started_at:
        took = f", took {format_duration(deploy.duration_seconds)}" if deploy.duration_seconds is not None else ""
        lines.append(f"*Started* {when(deploy.started_at)}{took}")
    if deploy.engine_summary:
        kind = (deploy.executor_kind or "engine").replace("_", " ")
        run_log = link(deploy.run_url, "run log")
        ran = (DeployStatus.VERIFYING, DeployStatus.SUCCEEDED, DeployStatus.ROLLED_BACK)
        engine_ok = deploy.status in ran or bool(deploy.checks)
        mark = ":white_check_mark:" if engine_ok else ":x:"
        lines.append(f"{mark} *Deploy* ({kind}): {escape(deploy.engine_summary)}"
                     + (f" · {run_log}" if run_log else ""))
    if deploy.checks:
        passed = sum(1 for check in deploy.checks if check.get("passed"))
        mark = ":white_check_mark:" if passed == len(deploy.checks) else ":x:"
        lines.append(f"{mark} *Verification*: {passed} of {len(deploy.checks)} check(s) passed")
    return "\n".join(lines)


def deploy_fallback_text(deploy: Deploy) -> str:
    """The notification text (and what screen readers read)."""
    status = deploy.status.replace("_", " ")
    return f"Deploy {deploy.service} {deploy.display_version} to {deploy.environment}: {status}"


def request_accepted_text(deploy: Deploy, channel: str) -> str:
    if deploy.status == DeployStatus.APPROVED:
        return (f"Deploy #{deploy.id} of {deploy.service} {deploy.display_version} to {deploy.environment} "
                f"needs no approval; posted in <#{channel}>.")
    return (f"Deploy #{deploy.id} of {deploy.service} {deploy.display_version} to {deploy.environment} "
            f"is waiting for approval in <#{channel}>.")


def engine_log_text(deploy: Deploy, succeeded: bool) -> str:
    mark = ":white_check_mark:" if succeeded else ":x:"
    kind = (deploy.executor_kind or "engine").replace("_", " ")
    text = f"{mark} Deploy engine ({kind}): {escape(deploy.engine_summary or '')}"
    if run_log := link(deploy.run_url, "run log"):
        text += f" — {run_log}"
    if tail := code_block(deploy.log_tail or ""):
        text += "\n" + tail
    return text


def verification_text(deploy: Deploy) -> str:
    lines = ["*Verification*"]
    for check in deploy.checks:
        mark = ":white_check_mark:" if check.get("passed") else (":fast_forward:" if check.get("skipped") else ":x:")
        lines.append(f"{mark} {_check_line(check)}")
    return clip("\n".join(lines), MAX_SECTION_TEXT)


def _check_line(check: dict[str, Any]) -> str:
    """``GET https://…/health: 200, version=2.7.0``, escaped: the detail
    quotes what the service served or the smoke test printed."""
    return f"{escape(str(check.get('name')))}: {escape(str(check.get('detail')))}"


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
            f", finished {when(deploy.finished_at)} ({format_duration(deploy.duration_seconds)})" if deploy.finished_at else ""))
    if deploy.rolled_back_at:
        lines.append(f"• Rolled back {when(deploy.rolled_back_at)}")
    if deploy.engine_summary:
        ref = f", exit code {deploy.exit_code}" if deploy.exit_code is not None else ""
        run = link(deploy.run_url, "run")
        lines.append(f"• Engine ({deploy.executor_kind}): {escape(deploy.engine_summary)}{ref}"
                     + (f", {run}" if run else ""))
    for check in deploy.checks:
        lines.append(f"• {'✅' if check.get('passed') else '❌'} {_check_line(check)}")
    if deploy.override_reason:
        freezes = "; ".join(f"{f['reason']} ({f['schedule']})" for f in deploy.overridden_freezes)
        lines.append(f"• Freeze override: “{escape(deploy.override_reason)}”, inside {freezes}")
    if deploy.rollback_of is not None:
        lines.append(f"• Rollback of #{deploy.rollback_of}")
    if deploy.permalink:
        lines.append(f"• <{deploy.permalink}|Message in the deploy channel>")
    return clip("\n".join(lines), MAX_SECTION_TEXT)


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
    return clip("\n".join(lines), MAX_SECTION_TEXT)


def rollback_plan_text(deploy: Deploy, target: str) -> str:
    """Exactly what a rollback of ``deploy`` does: ``api production: 2.7.0 → 2.6.3``."""
    return f"{deploy.service} {deploy.environment}: {deploy.version} → {target}"


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
    return clip("\n".join(lines), MAX_SECTION_TEXT)


def lock_list_text(locks: list[Any], blocks: list[Any]) -> str:
    """``/deploy locks``: every lock, then every version blocked after a rollback."""
    lines = ["*Locks*", locks_text(locks)]
    if blocks:
        lines.append("*Blocked versions* (rolled back; lift with `/deploy unblock <service> <version> <environment>`)")
        lines.extend(f"• {b.service} {b.version} on {b.environment}: {b.reason} {when(b.blocked_at)}"
                     + (f" (rollback #{b.rollback_id})" if b.rollback_id else "") for b in blocks)
    return clip("\n".join(lines), MAX_SECTION_TEXT)


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
    return clip("\n".join(lines), MAX_SECTION_TEXT)


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
    elif deploy.status == DeployStatus.AWAITING_APPROVAL:
        state = "\n*Override approval:* still needed, from the environment's `override` role"
    else:
        state = ""
    return (f":snowflake: *Freeze override* — {deploy.environment} is frozen: {freezes}.\n"
            f"*Reason:* “{escape(deploy.override_reason)}”\nNeeds one approval from the `override` role on top of the "
            f"usual ones.{state}")


def override_unused_text(deploy: Deploy) -> str:
    return (f"\nNo freeze covers {deploy.environment} now, so `--override` was not used: this is an ordinary "
            "request (if a freeze starts before it runs, it stops it; ask again with `--override` then).")
