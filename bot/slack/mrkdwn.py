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
  trusted like the rest of the config, and may hold deliberate mrkdwn links;
- a rollout's stage ``decision``, ``pause_reason`` and ``abort_reason`` are
  stored as mrkdwn (the domain escapes what Prometheus or a person said as it
  writes them); a measurement's ``detail`` is stored raw and escaped here;
- what a deploy ships (``deploys.changes``): the commits' and pull requests'
  titles, authors, shas, tags and paths, and why the changes are
  unavailable, are stored raw (as the source said them) and escaped here;
  its ``artifact_problems`` are stored as mrkdwn (``bot.changes.lookup``
  escapes them, since they also become a status reason).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

from bot.changes.model import BACKWARD, FIRST, SAME, ChangeSet, Commit, PullRequest
from bot.config import USER_ID, AnalysisCheck
from bot.deploys.analysis import format_value, sparkline
from bot.deploys.versions import bump_kind
from bot.durations import format_duration
from store import Deploy, DeployStatus, Rollout, Stage
from store.rollouts import Measurement

# Block Kit's limit on a section's text, which these texts are shown in
# (equal to slack_sdk's SectionBlock.text_max_length; a test checks it)
MAX_SECTION_TEXT = 3000
MAX_LOG_TAIL = 2500  # characters of engine output shown in the thread

STATUS_LABELS = {
    DeployStatus.AWAITING_APPROVAL: ":hourglass_flowing_sand: Awaiting approval",
    DeployStatus.QUEUED: ":busstop: Queued — waiting for its turn on this environment",
    DeployStatus.APPROVED: ":white_check_mark: Approved — waiting for the deploy engine",
    DeployStatus.DEPLOYING: ":rocket: Deploying",
    DeployStatus.VERIFYING: ":mag: Verifying",
    DeployStatus.BAKING: ":bread: Baking — at full traffic, watched through the bake window",
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


def status_text(deploy: Deploy, required: int, stale: tuple[str, ...] = (), position: int | None = None) -> str:
    """The deploy's state, its approvals so far and, while it waits, its
    checklist and expiry (and, queued, its place in line)."""
    line = STATUS_LABELS.get(deploy.status, deploy.status)
    if deploy.status_reason:
        line += f" — {deploy.status_reason}"
    approvals = deploy.approvals
    if deploy.status == DeployStatus.QUEUED:
        place = f"*#{position} in line*" if position else "*In line*"
        line += (f"\n{place}: " + ("approved, it starts when its turn comes" if deploy.approved_at else
                                   "approvals and checklist may be given while it waits"))
    if deploy.status == DeployStatus.AWAITING_APPROVAL or (
            deploy.status == DeployStatus.QUEUED and deploy.approved_at is None):
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
        ran = (DeployStatus.VERIFYING, DeployStatus.BAKING, DeployStatus.SUCCEEDED, DeployStatus.ROLLED_BACK)
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


def queue_text(queued: list[Deploy]) -> str:
    """``/deploy queue``: each line of requests, in the order they will go."""
    if not queued:
        return "Nothing is queued."
    lines, place = [], None
    for deploy in queued:
        if (deploy.service, deploy.environment) != place:
            place = (deploy.service, deploy.environment)
            lines.append(f"*{deploy.service} on {deploy.environment}*")
            position = 0
        position += 1
        ready = "approved, ready for its turn" if deploy.approved_at else "awaiting approval"
        lines.append(f"{position}. #{deploy.id} {deploy.display_version} by {mention(deploy.requested_by)}, "
                     f"queued {when(deploy.queued_at or deploy.requested_at)} — {ready}")
    return clip("\n".join(lines), MAX_SECTION_TEXT)


def request_accepted_text(deploy: Deploy, channel: str, position: int | None = None) -> str:
    if deploy.status == DeployStatus.QUEUED:
        return (f"Deploy #{deploy.id} of {deploy.service} {deploy.display_version} to {deploy.environment} is queued"
                + (f", #{position} in line" if position else "") + f": {deploy.environment} is busy. It starts when "
                f"its turn comes and its approvals are complete; follow it in <#{channel}>.")
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


def abort_text(deploy: Deploy) -> str:
    """The thread's last word on a rollout aborted before full traffic."""
    kept = deploy.previous_version or "the stable version"
    return (f":octagonal_sign: {deploy.service} {deploy.display_version} {deploy.status_reason}.\n"
            f"All traffic is back on {kept}, so there is nothing to roll back. {deploy.environment} is locked and "
            f"{deploy.display_version} blocked there: ship a fix, then `/deploy unlock {deploy.service} "
            f"{deploy.environment}` (and `/deploy unblock {deploy.service} {deploy.display_version} "
            f"{deploy.environment}` to allow this version again).")


def record_text(deploy: Deploy, rollout: RolloutFacts | None = None) -> str:
    """``/deploy show``: the whole record of one deploy (and of its staged
    rollout, stage by stage and measurement by measurement, as far as a
    section holds), then what it ships: every pull request and commit, as
    far as :data:`MAX_RECORD_CHANGES` holds (the reply is a message's text,
    which holds 40,000 characters)."""
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
    if rollout is not None:
        lines += rollout_record(rollout, MAX_SECTION_TEXT - len("\n".join(lines)) - 1)
    record = clip("\n".join(lines), MAX_SECTION_TEXT)
    if changes := changes_record(deploy):
        record += "\n" + "\n".join(changes)
    return record


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


# -- staged rollouts ----------------------------------------------------------------------

MAX_SPARKLINE = 20  # points in a check's sparkline: its latest measurements in the stage
ANALYSIS_ACTOR = "slipway"  # who paused or aborted for the analysis (bot.deploys.progressive.ANALYSIS_ACTOR)
STRATEGY_WORDS = {"canary": "canary", "blue_green": "blue-green", "direct": "direct, then a bake"}
VERDICT_MARKS = {"pass": ":white_check_mark:", "fail": ":x:", "inconclusive": ":grey_question:"}
STAGE_MARKS = {"pending": "·", "applying": ":hourglass_flowing_sand:", "watching": ":hourglass_flowing_sand:",
               "passed": ":white_check_mark:", "failed": ":x:", "aborted": ":black_square_for_stop:"}


@dataclass(frozen=True)
class RolloutFacts:
    """A staged rollout as the views show it, read from the store when drawn
    (``bot.slack.ship_report.read_rollout``)."""

    rollout: Rollout
    line: str  # ``5% ✓ → 25% ⏳ (analysing, 4m of 10m) → …`` (bot.deploys.progressive.stage_line), plain text
    measurements: tuple[Measurement, ...] = ()  # every measurement of the rollout, oldest first
    checks: Mapping[str, AnalysisCheck] = field(default_factory=dict)  # the config's checks, for their ceilings

    @property
    def shown(self) -> Stage | None:
        """The stage whose checks the message shows: the one under way, else the last that ran."""
        started = [stage for stage in self.rollout.stages if stage.state != "pending"]
        return started[-1] if started else None

    def of(self, position: int, check: str | None = None) -> list[Measurement]:
        return [m for m in self.measurements if m.position == position and (check is None or m.check == check)]


def _number(value: float | None) -> str:
    return "no data" if value is None else format_value(value)


def ceiling_text(check: AnalysisCheck | None) -> str | None:
    """``2× / 0.05``: how far above its baseline, and above what at all, a check fails."""
    if check is None:
        return None
    parts = ([f"{check.max_ratio:g}×"] if check.max_ratio is not None else []) + (
        [format_value(check.max)] if check.max is not None else [])
    return " / ".join(parts) or None


def check_line(name: str, measured: Sequence[Measurement], check: AnalysisCheck | None) -> str:
    """``error_rate 0.004 (stable 0.003, ceiling 2× / 0.05) ▁▂▁▃``: a check's last
    value in the stage, against its baseline and ceiling, and a sparkline of
    its latest measurements there (what Prometheus said is escaped)."""
    if not measured:
        ceiling = ceiling_text(check)
        return f"· {escape(name)}: not measured yet" + (f" (ceiling {ceiling})" if ceiling else "")
    last = measured[-1]
    about = ([f"stable {format_value(last.baseline)}"] if last.baseline is not None else []) + (
        [f"ceiling {ceiling}"] if (ceiling := ceiling_text(check)) else [])
    text = f"{VERDICT_MARKS.get(last.verdict, '')} {escape(name)} {_number(last.value)}"
    if about:
        text += f" ({', '.join(about)})"
    text += f" {sparkline([m.value for m in measured][-MAX_SPARKLINE:])}"  # · where there was no data
    if last.verdict != "pass" and last.detail:
        text += f" — {escape(last.detail)}"
    return text


def rollout_text(facts: RolloutFacts) -> str:
    """The deploy message's rollout: its stages, why it is paused (or
    aborting, or how it ended), and each check of the stage under way."""
    rollout = facts.rollout
    strategy = STRATEGY_WORDS.get(rollout.strategy, rollout.strategy)
    lines = [f"*Rollout* ({strategy}): {escape(facts.line)}"]
    if rollout.ended_at is not None:
        ended = next((s for s in reversed(rollout.stages) if s.state in ("failed", "aborted")), None)
        outcome = {"passed": ":large_green_circle: passed", "aborted": ":black_square_for_stop: aborted",
                   "failed": ":red_circle: failed"}.get(rollout.outcome or "", rollout.outcome or "ended")
        lines.append(f"*Rollout {outcome}* {when(rollout.ended_at)}"
                     + (f" at {ended.label}: {ended.decision}" if ended is not None and ended.decision else ""))
    elif rollout.abort_requested_at is not None:
        lines.append(f":black_square_for_stop: *Aborting* — {rollout.abort_reason or 'abort requested'} "
                     f"{when(rollout.abort_requested_at)}")
    elif rollout.paused:
        lines.append(paused_text(rollout))
    stage = facts.shown
    if stage is not None and stage.analysis:
        lines.append(f"*{stage.label}* checks:")
        lines += [check_line(name, facts.of(stage.position, name), facts.checks.get(name)) for name in stage.analysis]
    return clip("\n".join(lines), MAX_SECTION_TEXT)


def paused_text(rollout: Rollout) -> str:
    """Who paused the rollout, when and why (the reason is stored as mrkdwn)."""
    who = "Slipway's analysis" if rollout.paused_by == ANALYSIS_ACTOR else mention(rollout.paused_by)
    reason = rollout.pause_reason or ""
    if reason == f"paused by {mention(rollout.paused_by)}":  # a person's pause says nothing more
        reason = ""
    return (f":double_vertical_bar: *Paused* by {who} {when(rollout.paused_at)}" + (f": {reason}" if reason else "")
            + ". Nothing is promoted until someone resumes it.")


def abort_plan_text(deploy: Deploy, rollout: Rollout) -> str:
    """What Abort does, for its confirmation: before full traffic, traffic
    goes back; after it, the abort is a rollback."""
    if rollout.full_traffic:
        return (f"{deploy.service} {deploy.display_version} is at full traffic on {deploy.environment}: "
                "this rolls back to the last good version, at once.")
    at = rollout.current.label if rollout.current is not None else "where it is"
    return (f"{deploy.service} {deploy.display_version} stops at {at} on {deploy.environment}: all traffic "
            f"returns to {deploy.previous_version or 'the stable version'}.")


def clock_time(iso: str) -> str:
    """``12:04:05 UTC``: a measurement's time, short (the stage's times give the day)."""
    return datetime.fromisoformat(iso).astimezone(timezone.utc).strftime("%H:%M:%S UTC")


def measurement_text(measured: Measurement) -> str:
    """``12:04:05 UTC error_rate 0.004, stable 0.003: pass`` (and what Prometheus said, escaped, unless it passed)."""
    text = f"{clock_time(measured.at)} {escape(measured.check)} {_number(measured.value)}"
    if measured.baseline is not None:
        text += f", stable {format_value(measured.baseline)}"
    text += f": {measured.verdict}"
    if measured.verdict != "pass" and measured.detail:
        text += f" — {escape(measured.detail)}"
    return text


def stage_record(stage: Stage, at: Callable[[str | None], str]) -> str:
    """``25%: passed, started … ended … (10m) — promoted by <@U…>``; ``at`` writes a time."""
    text = f"{stage.label}: {stage.state}"
    if stage.started_at or stage.watch_started_at:
        text += f", started {at(stage.started_at or stage.watch_started_at)}"
    if stage.ended_at:
        text += f", ended {at(stage.ended_at)}"
        began = stage.started_at or stage.watch_started_at
        if began:
            seconds = (datetime.fromisoformat(stage.ended_at) - datetime.fromisoformat(began)).total_seconds()
            text += f" ({format_duration(seconds)})"
    if stage.decision:
        text += f" — {stage.decision}"
    return text


def fit_lines(groups: Sequence[tuple[str, Sequence[str]]], budget: int, noun: str) -> list[str]:
    """Every group's head line and as many of its item lines as fit in
    ``budget`` characters (newlines counted); once an item is left out, the
    rest follow it, and a last line says how many: ``… 12 more measurement(s) not shown``."""
    total = sum(len(items) for _, items in groups)
    room = budget - sum(len(head) + 1 for head, _ in groups)
    if sum(len(item) + 1 for _, items in groups for item in items) > room:
        room -= len(f"… {total} more {noun}(s) not shown") + 1  # kept for the note
    lines: list[str] = []
    shown, full = 0, False
    for head, items in groups:
        lines.append(head)
        for item in items:
            full = full or len(item) + 1 > room
            if not full:
                lines.append(item)
                room -= len(item) + 1
                shown += 1
    if shown < total:
        lines.append(f"… {total - shown} more {noun}(s) not shown")
    return lines


def stage_groups(facts: RolloutFacts, at: Callable[[str | None], str], bullet: str = "•",
                 item: str = "    ◦") -> list[tuple[str, list[str]]]:
    """Each stage's line and its measurements' lines, for :func:`fit_lines`."""
    return [(f"{bullet} {stage_record(stage, at)}",
             [f"{item} {measurement_text(m)}" for m in facts.of(stage.position)]) for stage in facts.rollout.stages]


def rollout_record(facts: RolloutFacts, budget: int) -> list[str]:
    """``/deploy show``'s rollout: the stages, every stage with its times and
    decision and every measurement, in ``budget`` characters (the last
    measurements left out first, and counted)."""
    rollout = facts.rollout
    strategy = STRATEGY_WORDS.get(rollout.strategy, rollout.strategy)
    head = f"*Rollout* ({strategy}, on failure: {rollout.on_failure}): {escape(facts.line)}"
    if rollout.ended_at is not None:
        head += f" — {rollout.outcome or 'ended'} {when(rollout.ended_at)}"
    heads = [head]
    if rollout.ended_at is None and rollout.abort_requested_at is not None:
        heads.append(f":black_square_for_stop: Aborting — {rollout.abort_reason or 'abort requested'}")
    elif rollout.ended_at is None and rollout.paused:
        heads.append(paused_text(rollout))
    room = budget - sum(len(line) + 1 for line in heads)
    return heads + fit_lines(stage_groups(facts, when), room, "measurement")


# -- what a deploy ships (bot.changes) ------------------------------------------------------

CHECKING_TEXT = ":hourglass_flowing_sand: Checking what it ships and whether its artifacts exist…"
MAX_PULLS_SHOWN = 5  # pull requests (or commits) the deploy message names; /deploy show and the ship report list all
MAX_FILES_SHOWN = 5  # migration files the deploy message names
MAX_FILES_LISTED = 20  # migration files /deploy show and the ship report name
MAX_TITLE = 150  # characters of a pull request's or commit's title shown
MAX_NAME = 200  # characters of a tag, an author, a path or a reason shown
MAX_LINK = 600  # characters of a pull request's or compare link (escaped URL and label): longer ones are no link
MAX_RECORD_CHANGES = 12000  # characters of /deploy show's list of changes (a Slack message holds 40,000)


@dataclass(frozen=True)
class Shipped:
    """A deploy's ``changes`` record read back: the change set, or why there is
    none (raw, as the source said it), and what its artifact check found
    (mrkdwn: escaped when recorded)."""

    changes: ChangeSet | None = None
    unavailable: str | None = None
    artifact_problems: tuple[str, ...] = ()


def shipped(deploy: Deploy) -> Shipped | None:
    """What ``deploy``'s lookups recorded; None when nothing was (no lookup,
    still checking, or nothing to say)."""
    record = deploy.change_set
    if not record:
        return None
    problems = tuple(str(problem) for problem in record.get("artifact_problems") or ())
    changes = None
    if "direction" in record:
        fields = ChangeSet.__dataclass_fields__
        changes = ChangeSet.from_record({key: value for key, value in record.items() if key in fields})
    unavailable = record.get("unavailable")
    return Shipped(changes, str(unavailable) if unavailable is not None else None, problems)


def _plural(count: int, noun: str, plural: str | None = None) -> str:
    return f"{count} {noun if count == 1 else (plural or noun + 's')}"


def clip_mrkdwn(text: str, limit: int) -> str:
    """Escaped text cut to ``limit`` characters like :func:`clip`, without
    leaving half an entity (``&am…``) at the cut."""
    if len(text) <= limit:
        return text
    return re.sub(r"&[a-z]*$", "", text[: limit - 1]) + "…"


def _one_line(text: str | None, limit: int = MAX_TITLE) -> str:
    """A source's text on one line, escaped, in at most ``limit`` characters."""
    return clip_mrkdwn(escape(" ".join((text or "").split())), limit)


def _short_link(url: str | None, label: str) -> str | None:
    """:func:`link`, or None when the link would be too long to show."""
    text = link(url, label)
    return text if text is not None and len(text) <= MAX_LINK else None


def changes_summary(deploy: Deploy, changes: ChangeSet) -> str:
    """``14 commits, 5 pull requests by 4 people``; what a downgrade or
    rollback takes out; a first deploy or the same code said so (escaped)."""
    if changes.direction == FIRST:
        return f"First deploy of {deploy.service} to {deploy.environment}: nothing to compare with"
    if changes.direction == SAME:
        return "Same code as what runs"
    count = changes.commit_count
    if count == 0 and not changes.pulls:
        return f"No commits between {_one_line(changes.base, MAX_NAME)} and {_one_line(changes.head, MAX_NAME)}"
    text = _plural(count, "commit")
    if changes.pulls:
        text += ", " + _plural(len(changes.pulls), "pull request")
    if people := changes.people:
        text += " by " + _plural(len(people), "person", "people")
    return ("Takes out " + text) if changes.direction == BACKWARD else text


def _compare(changes: ChangeSet) -> str | None:
    """``<url|compare v2.6.0…v2.7.0>``, when the source gave a usable URL."""
    if not changes.compare_url or changes.base is None:
        return None
    older, newer = (changes.base, changes.head) if changes.direction != BACKWARD else (changes.head, changes.base)
    return _short_link(changes.compare_url, f"compare {clip(older, 60)}…{clip(newer, 60)}")


def pull_line(pull: PullRequest) -> str:
    """``<url|#123> Fix the thing — alice``: its number linked when the URL is a plain web one."""
    number = _short_link(pull.url, f"#{pull.number}") or f"#{pull.number}"
    return f"{number} {_one_line(pull.title)}" + (f" — {_one_line(pull.author, MAX_NAME)}" if pull.author else "")


def commit_line(commit: Commit) -> str:
    """```abc1234` Fix the thing — alice (#123)``."""
    text = f"`{escape(commit.short)}` {_one_line(commit.title)}"
    if commit.author:
        text += f" — {_one_line(commit.author, MAX_NAME)}"
    if commit.pull is not None and f"#{commit.pull}" not in commit.title:
        text += f" (#{commit.pull})"
    return text


def _take(items: Sequence[str], room: int, more: Callable[[int], str]) -> list[str]:
    """As many of ``items`` (lines) as fit in ``room`` characters (newlines
    counted), then ``more(n)`` when ``n`` were left out (room kept for it)."""
    if sum(len(item) + 1 for item in items) <= room:
        return list(items)
    room -= len(more(len(items))) + 1
    taken: list[str] = []
    for item in items:
        if len(item) + 1 > room:
            break
        taken.append(item)
        room -= len(item) + 1
    return [*taken, more(len(items) - len(taken))]


def _problems_repeated(deploy: Deploy, problems: Sequence[str]) -> bool:
    """The status reason already says what the artifact check found (it cancelled the request)."""
    reason = deploy.status_reason or ""
    return deploy.status == DeployStatus.CANCELLED and all(problem in reason for problem in problems)


def name_list(names: Sequence[str], most: int, budget: int) -> str:
    """``a, b, c, and 12 more``: at most ``most`` of ``names`` (mrkdwn) and
    no more than ``budget`` characters of them (the first is always named)."""
    taken: list[str] = []
    for name in names[:most]:
        if taken and sum(len(shown) + 2 for shown in taken) + len(name) > budget:
            break
        taken.append(name)
    return ", ".join(taken) + (f", and {len(names) - len(taken)} more" if len(taken) < len(names) else "")


def _migration_text(deploy: Deploy, changes: ChangeSet, most: int) -> str | None:
    """The migration files the range touches: what made it carry a migration
    (at most ``most`` of them named, in 1,200 characters)."""
    files = changes.migration_files
    if not files:
        return None
    listed = name_list([_one_line(path, MAX_NAME) for path in files], most, 1200)
    if deploy.migration:
        return f":card_file_box: *Carries a migration:* {listed} (touched by this range)"
    if changes.direction == BACKWARD:
        return f":card_file_box: *Takes out migration files:* {listed}"
    return f":card_file_box: *Touches migration files:* {listed}"


def changes_text(deploy: Deploy) -> str | None:
    """The deploy message's "What it ships": the summary, the first pull
    requests (or commits) by title, the commits outside pull requests, the
    compare link, the migration files that made it carry a migration, why
    the changes are unavailable, what the artifact check found; within a
    section's 3000 characters however many commits there are. None when no
    lookup recorded anything (a deploy still checking shows
    :data:`CHECKING_TEXT` instead)."""
    found = shipped(deploy)
    if found is None:
        return None
    head: list[str] = ["*What it ships*"]
    tail: list[str] = []
    items: list[str] = []
    more: Callable[[int], str] = lambda n: ""
    if (changes := found.changes) is not None:
        summary = changes_summary(deploy, changes)
        if compare := _compare(changes):
            summary += f" · {compare}"
        head.append(summary)
        if changes.direction not in (FIRST, SAME):
            outside = [commit for commit in changes.commits if commit.pull is None]
            if changes.pulls:
                items = [f"• {pull_line(pull)}" for pull in changes.pulls]
                more = lambda n: f"…and {n} more pull request{'s' if n != 1 else ''}"
                if outside:
                    tail.append(f"…plus {_plural(len(outside), 'commit')} outside pull requests")
            else:
                items = [f"• {commit_line(commit)}" for commit in changes.commits]
                more = lambda n: f"…and {n} more commit{'s' if n != 1 else ''}"
            if len(changes.commits) < changes.commit_count:
                tail.append(f"_The source listed {len(changes.commits)} of the {changes.commit_count} commits._")
        if migration := _migration_text(deploy, changes, MAX_FILES_SHOWN):
            tail.append(migration)
    if found.unavailable is not None:
        head.append(f":grey_question: Changes unavailable: {_one_line(found.unavailable, MAX_NAME * 2)}")
    if found.artifact_problems and not _problems_repeated(deploy, found.artifact_problems):
        tail.append(clip_mrkdwn(":warning: *Artifacts:* " + "; ".join(found.artifact_problems), 800))
    if len(head) == 1 and not tail:
        return None
    # the fixed lines, and room kept for "…and N more" (an item that does not fit is counted there)
    room = MAX_SECTION_TEXT - len("\n".join([*head, *tail])) - 1 - (len(more(len(items))) + 1)
    lines: list[str] = []
    for item in items[:MAX_PULLS_SHOWN]:
        if len(item) + 1 > room:
            break
        lines.append(item)
        room -= len(item) + 1
    if len(lines) < len(items):
        lines.append(more(len(items) - len(lines)))
    return clip("\n".join([*head, *lines, *tail]), MAX_SECTION_TEXT)


def changes_record(deploy: Deploy, budget: int = MAX_RECORD_CHANGES) -> list[str]:
    """``/deploy show``'s changes: the summary, every pull request and every
    commit (short sha, title, author), the migration files, why the changes
    are unavailable, what the artifact check found; in ``budget`` characters
    (what does not fit is counted: ``… 212 more commit(s) not shown``)."""
    if deploy.checking:
        return ["• *What it ships:* checking…"]
    found = shipped(deploy)
    if found is None:
        return []
    heads: list[str] = []
    pulls: list[str] = []
    commits: list[str] = []
    if (changes := found.changes) is not None:
        summary = changes_summary(deploy, changes)
        if compare := _compare(changes):
            summary += f" ({compare})"
        heads.append(f"• *What it ships:* {summary}")
        if changes.direction not in (FIRST, SAME):
            pulls = [f"    ◦ {pull_line(pull)}" for pull in changes.pulls]
            commits = [f"    ◦ {commit_line(commit)}" for commit in changes.commits]
            if len(changes.commits) < changes.commit_count:
                heads.append(f"• The source listed {len(changes.commits)} of the {changes.commit_count} commits")
        if migration := _migration_text(deploy, changes, MAX_FILES_LISTED):
            heads.append("• " + migration)
    if found.unavailable is not None:
        heads.append(f"• Changes unavailable: {_one_line(found.unavailable, MAX_NAME * 2)}")
    if found.artifact_problems:
        heads.append(clip_mrkdwn("• Artifacts: " + "; ".join(found.artifact_problems), 1500))
    pull_head = ["• *Pull requests:*"] if pulls else []
    commit_head = ["• *Commits:*"] if commits else []
    return _two_lists(heads, (pull_head, pulls, "pull request"), (commit_head, commits, "commit"), budget)


def _two_lists(heads: list[str], first: tuple[list[str], list[str], str], second: tuple[list[str], list[str], str],
               budget: int) -> list[str]:
    """``heads``, then two headed lists in ``budget`` characters: the first
    gets at least half of what is left when both do not fit, and each says
    how many of its own items it left out."""
    room = budget - sum(len(line) + 1 for line in [*heads, *first[0], *second[0]])
    need = [sum(len(item) + 1 for item in items) for _, items, _ in (first, second)]
    first_room = room if sum(need) <= room else max(room // 2, room - need[1])
    one = _take(first[1], first_room, lambda n: f"    … {n} more {first[2]}(s) not shown")
    rest = room - sum(len(line) + 1 for line in one)
    two = _take(second[1], rest, lambda n: f"    … {n} more {second[2]}(s) not shown")
    return [*heads, *first[0], *one, *second[0], *two]
