"""Block Kit for the deploy message and the rollback offer, with the small
builders the other renderers share (``header``, ``section``, ``context``).

Blocks are slack_sdk's typed models, which check Block Kit's limits when
``to_dict()`` turns them into what Slack receives (3000 characters of
section text, 150 of header text, 75 of button text, 300 of confirmation
text, 2000-character button values, 255-character action and block ids,
10 fields a section...): a renderer that breaks one raises
``SlackObjectFormationError`` here rather than having Slack refuse the
message. Meeting the limits gracefully stays ours: long texts are clipped,
and a message keeps to 50 blocks, which the library does not count.

The words are bot/slack/mrkdwn.py's. No business rules live here: whether
a person may click a button is the workflow's question; this module only
shows the state it is given.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from slack_sdk.models.blocks import (
    ActionsBlock,
    Block,
    BlockElement,
    ButtonElement,
    CheckboxesElement,
    ConfirmObject,
    ContextBlock,
    DividerBlock,
    HeaderBlock,
    MarkdownTextObject,
    Option,
    PlainTextObject,
    SectionBlock,
)

from bot.deploys.steering import STEERABLE
from bot.slack.mrkdwn import (
    CHECKING_TEXT,
    MAX_SECTION_TEXT,
    RolloutFacts,
    abort_plan_text,
    changes_text,
    clip,
    mention,
    override_text,
    rollback_plan_text,
    rollout_text,
    status_text,
    steps_text,
    version_change,
    when,
)
from store import Deploy, DeployStatus, Rollout

# Every interactive element Slipway renders; handlers register one listener
# each and tests check the manifest and help against this list.
ACTION_APPROVE = "deploy_approve"
ACTION_REJECT = "deploy_reject"
ACTION_CANCEL = "deploy_cancel"
ACTION_CHECKLIST = "checklist_tick"
ACTION_ROLLBACK = "deploy_rollback"
# steering a staged rollout (bot.deploys.steering); Promote's value names the stage it was drawn on
ACTION_PROMOTE = "rollout_promote"
ACTION_PAUSE = "rollout_pause"
ACTION_RESUME = "rollout_resume"
ACTION_ABORT = "rollout_abort"
ACTION_IDS = (ACTION_APPROVE, ACTION_REJECT, ACTION_CANCEL, ACTION_CHECKLIST, ACTION_ROLLBACK,
              ACTION_PROMOTE, ACTION_PAUSE, ACTION_RESUME, ACTION_ABORT)

MAX_BLOCKS = 50  # blocks in a message: slack_sdk does not count them
MAX_FIELD_TEXT = 2000  # characters of a section field: slack_sdk does not check them
MAX_HEADER_TEXT = HeaderBlock.text_max_length
# MAX_SECTION_TEXT (3000) comes from mrkdwn, whose texts fill sections


# -- small builders -------------------------------------------------------------------


def plain(text: str) -> PlainTextObject:
    """Plain text, without an ``emoji`` flag (as Slipway always sent it)."""
    return PlainTextObject(text=text)


def header(text: str) -> HeaderBlock:
    """A header, its text clipped to the 150 characters Slack allows."""
    return HeaderBlock(text=PlainTextObject(text=clip(text, MAX_HEADER_TEXT), emoji=True))


def field(text: str) -> MarkdownTextObject:
    """One of a section's fields, clipped to the 2000 characters Slack allows."""
    return MarkdownTextObject(text=clip(text, MAX_FIELD_TEXT))


def section(text: str | None, *, fields: Iterable[str] = (), block_id: str | None = None,
            accessory: BlockElement | None = None) -> SectionBlock:
    """A mrkdwn section (and its fields), the text clipped to 3000 characters."""
    return SectionBlock(block_id=block_id, text=MarkdownTextObject(text=clip(text, MAX_SECTION_TEXT)) if text else None,
                        fields=[field(cell) for cell in fields], accessory=accessory)


def context(text: str) -> ContextBlock:
    """A line of small print, clipped to 3000 characters."""
    return ContextBlock(elements=[MarkdownTextObject(text=clip(text, MAX_SECTION_TEXT))])


def as_dicts(blocks: Iterable[Block]) -> list[dict[str, Any]]:
    """What Slack receives (and the outbox stores); each block checks its
    limits on the way.

    Raises:
        SlackObjectFormationError: a block breaks one of Block Kit's limits.
    """
    return [block.to_dict() for block in blocks]


def deploy_blocks(deploy: Deploy, *, required_approvals: int, rollback_to: str | None = None,
                  rollback_note: str | None = None, stale_approvals: tuple[str, ...] = (),
                  rollout: RolloutFacts | None = None, queue_position: int | None = None) -> list[dict[str, Any]]:
    """The deploy's message in #deployments, for its current state (≤ 50 blocks).

    ``rollback_to`` is the version a Rollback button would go back to (the
    button is shown only with it); ``rollback_note`` says why there is none.
    ``stale_approvals``: who approved too long ago for it to count.
    ``rollout``: its staged rollout, shown with its stages and checks, and
    with Promote, Pause or Resume, and Abort while it is in progress.
    """
    # a queued request is approved (and ticked) while it waits, until its approvals are complete
    open_for_votes = deploy.status == DeployStatus.AWAITING_APPROVAL or (
        deploy.status == DeployStatus.QUEUED and deploy.approved_at is None)
    facts = [f"*Service*\n{deploy.service}", f"*Environment*\n{deploy.environment}",
             f"*Version*\n{version_change(deploy)}", f"*Requested by*\n{mention(deploy.requested_by)}"]
    if deploy.migration:
        facts.append("*Database migration*\n:card_file_box: carried by this deploy")
    top: list[Block] = [
        header(f"Deploy {deploy.service} {deploy.display_version} to {deploy.environment}"),
        section(None, fields=facts),
        section(status_text(deploy, required_approvals, stale_approvals, queue_position)),
    ]
    if deploy.override_reason:
        top.append(section(override_text(deploy, stale_approvals)))
    if deploy.checking:  # its lookups run: no Approve yet (see _buttons)
        top.append(context(CHECKING_TEXT))
    elif shipped := changes_text(deploy):
        top.append(section(shipped))
    if rollout is not None:
        top.append(section(rollout_text(rollout)))
    bottom: list[Block] = []
    if steps := steps_text(deploy):
        bottom.append(section(steps))
    if open_for_votes:
        bottom.append(_buttons(deploy))
    elif rollout is not None and rollout_in_progress(deploy, rollout.rollout):
        bottom.append(rollout_buttons(deploy, rollout.rollout))
    elif rollback_to is not None:
        bottom.append(rollback_button(deploy, rollback_to))
    bottom.append(context(_footer(deploy, rollback_note)))
    checklist = _checklist(deploy, open_for_votes, room=MAX_BLOCKS - len(top) - len(bottom))
    return as_dicts([*top, *checklist, *bottom])


def _footer(deploy: Deploy, rollback_note: str | None) -> str:
    footer = f"Deploy #{deploy.id} · requested {when(deploy.requested_at)}"
    if deploy.rollback_of is not None:
        footer += (f" · rolls back #{deploy.rollback_of}; {deploy.environment} locked and {deploy.previous_version} "
                   "blocked there since it started (`/deploy locks`)")
    if rollback_note:
        footer += f" · {rollback_note}"
    return footer


def _checklist(deploy: Deploy, interactive: bool, room: int) -> list[Block]:
    """A divider and a block per item, in at most ``room`` blocks: the
    config allows far fewer items than a message holds, but should a
    checklist ever outgrow it, the message still posts and says so."""
    items = deploy.checklist
    if not items:
        return []
    shown = items if len(items) + 1 <= room else items[:max(0, room - 2)]
    blocks: list[Block] = [DividerBlock(), *(_checklist_block(deploy, item, interactive) for item in shown)]
    if len(shown) < len(items):
        blocks.append(context(f"…and {len(items) - len(shown)} more checklist item(s): more than a Slack message "
                              f"can show ({MAX_BLOCKS} blocks)"))
    return blocks


def rollback_button(deploy: Deploy, target: str, block_id: str | None = None) -> ActionsBlock:
    """A Rollback button whose Slack confirmation names exactly what happens."""
    plan = rollback_plan_text(deploy, target)
    return ActionsBlock(block_id=block_id or f"rollback:{deploy.id}", elements=[ButtonElement(
        action_id=ACTION_ROLLBACK, style="danger", value=f"{deploy.id}:{target}",
        text=plain(clip(f"Roll back to {target}", ButtonElement.text_max_length)),
        confirm=ConfirmObject(
            title=plain("Roll back now?"),
            text=MarkdownTextObject(text=clip(f"{plan}. This runs at once, without approvals.",
                                              ConfirmObject.text_max_length)),
            confirm=plain("Roll back"), deny=plain("Not now"), style="danger"),
    )])


def rollback_offer_blocks(deploy: Deploy, target: str) -> list[dict[str, Any]]:
    """The ephemeral confirmation `/deploy rollback` answers with."""
    return as_dicts([
        section(f"*{rollback_plan_text(deploy, target)}*\nThis undoes #{deploy.id} ({deploy.display_version}, "
                f"{deploy.status.replace('_', ' ')}, deployed by {mention(deploy.requested_by)}) and runs at once."),
        rollback_button(deploy, target),
    ])


def _checklist_block(deploy: Deploy, item: Any, interactive: bool) -> SectionBlock:
    who = f"\n_ticked by {mention(item.ticked_by)}_" if item.ticked else ""
    mark = ":white_check_mark:" if item.ticked else ":white_large_square:"
    accessory = None
    if interactive:
        option = Option(text=MarkdownTextObject(text="Done"), value=f"{deploy.id}:{item.position}")
        accessory = CheckboxesElement(action_id=ACTION_CHECKLIST, options=[option],
                                      initial_options=[option] if item.ticked else None)
    return section(f"{mark} {item.label}{who}", block_id=f"checklist:{deploy.id}:{item.position}", accessory=accessory)


def _buttons(deploy: Deploy) -> ActionsBlock:
    """Approve (not while the deploy is held for its lookups: it may not be
    approved yet), Reject and Cancel."""
    value = str(deploy.id)
    approve = [] if deploy.held else [
        ButtonElement(action_id=ACTION_APPROVE, style="primary", value=value, text=plain("Approve"))]
    return ActionsBlock(block_id=f"deploy:{deploy.id}", elements=[
        *approve,
        ButtonElement(action_id=ACTION_REJECT, style="danger", value=value, text=plain("Reject"), confirm=ConfirmObject(
            title=plain("Reject this deploy?"),
            text=MarkdownTextObject(text=clip(f"{deploy.service} {deploy.display_version} will not go to "
                                              f"{deploy.environment}; a new request is needed to try again.",
                                              ConfirmObject.text_max_length)),
            confirm=plain("Reject"), deny=plain("Keep it"), style="danger")),
        ButtonElement(action_id=ACTION_CANCEL, value=value, text=plain("Cancel")),
    ])


def rollout_in_progress(deploy: Deploy, rollout: Rollout) -> bool:
    """Whether people may still steer the rollout (bot.deploys.steering says
    who): it has not ended and no abort is under way."""
    return deploy.status in STEERABLE and rollout.ended_at is None and rollout.abort_requested_at is None


def rollout_buttons(deploy: Deploy, rollout: Rollout) -> ActionsBlock:
    """Promote (the stage under way, named in its value so that a second,
    stale click cannot promote the next one), Pause or Resume, and Abort,
    whose confirmation says what it does."""
    current = rollout.current
    elements: list[BlockElement] = []
    if current is not None and current.promoted_by is None:
        elements.append(ButtonElement(action_id=ACTION_PROMOTE, style="primary",
                                      value=f"{deploy.id}:{current.position}",
                                      text=plain(clip("End the bake now" if current.kind == "bake"
                                                      else f"Promote {current.label}", ButtonElement.text_max_length))))
    if rollout.paused:
        elements.append(ButtonElement(action_id=ACTION_RESUME, value=str(deploy.id), text=plain("Resume")))
    else:
        elements.append(ButtonElement(action_id=ACTION_PAUSE, value=str(deploy.id), text=plain("Pause")))
    elements.append(ButtonElement(
        action_id=ACTION_ABORT, style="danger", value=str(deploy.id), text=plain("Abort"),
        confirm=ConfirmObject(title=plain("Abort this rollout?"),
                              text=MarkdownTextObject(text=clip(abort_plan_text(deploy, rollout),
                                                                ConfirmObject.text_max_length)),
                              confirm=plain("Abort"), deny=plain("Keep going"), style="danger")))
    return ActionsBlock(block_id=f"rollout:{deploy.id}", elements=elements)
