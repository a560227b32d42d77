"""Block Kit rendering: plain asserts, and Block Kit's limits at the
largest config the validator accepts."""

from __future__ import annotations

from typing import Any

import pytest

from bot.config import MAX_CHECKLIST_ITEMS, MAX_CHECKLIST_TEXT
from bot.slack.blocks import (
    ACTION_IDS,
    MAX_BLOCKS,
    MAX_HEADER_TEXT,
    MAX_SECTION_TEXT,
    deploy_blocks,
    version_change,
)
from store import Approval, ChecklistItem, Deploy


def make_deploy(**overrides: Any) -> Deploy:
    fields: dict[str, Any] = dict(
        id=7, service="api", environment="production", version="2.7.0", version_prefixed=True,
        status="awaiting_approval", status_reason=None, requested_by="U0DAVE",
        requested_at="2026-11-23T12:00:00.000+00:00", previous_version="2.6.3", approved_at=None,
        started_at=None, finished_at=None, rollback_of=None, channel="C0DEPLOYS", message_ts="1.2",
        permalink=None)
    return Deploy(**{**fields, **overrides})


def elements(blocks: list[dict[str, Any]]):
    for block in blocks:
        for element in [block.get("accessory")] + list(block.get("elements", [])):
            if element and "action_id" in element:
                yield element


@pytest.mark.parametrize(("previous", "version", "expected"), [
    ("2.6.3", "2.7.0", "2.6.3 → v2.7.0 (minor)"),
    ("2.6.3", "3.0.0", "2.6.3 → v3.0.0 (major)"),
    ("2.6.3", "2.6.4", "2.6.3 → v2.6.4 (patch)"),
    ("2.7.0-rc.1", "2.7.0-rc.2", "2.7.0-rc.1 → v2.7.0-rc.2 (prerelease)"),
    (None, "1.0.0", "nothing → v1.0.0 (initial)"),
])
def test_version_change_names_the_bump(previous, version, expected) -> None:
    assert version_change(make_deploy(previous_version=previous, version=version)) == expected


def test_the_biggest_allowed_message_stays_within_block_kit_limits() -> None:
    checklist = tuple(ChecklistItem(i, "x" * MAX_CHECKLIST_TEXT, "U" + "9" * 20 if i % 2 else None, None)
                      for i in range(MAX_CHECKLIST_ITEMS))
    approvals = tuple(Approval("U" + str(i) * 10, "t") for i in range(10))
    deploy = make_deploy(service="s" * 60, environment="e" * 40, version="1.2.3-" + "a" * 200,
                         checklist=checklist, approvals=approvals, status_reason="r" * 4000)
    blocks = deploy_blocks(deploy, required_approvals=10)
    assert len(blocks) <= MAX_BLOCKS
    assert len(blocks[0]["text"]["text"]) <= MAX_HEADER_TEXT
    for block in blocks:
        if block["type"] == "section":
            assert len(block.get("text", {}).get("text", "")) <= MAX_SECTION_TEXT
            for field in block.get("fields", []):
                assert len(field["text"]) <= 2000
            assert len(block.get("fields", [])) <= 10
        assert len(block.get("block_id", "")) <= 255
    for element in elements(blocks):
        assert len(element["action_id"]) <= 255
        assert len(element.get("value", "")) <= 2000
        assert all(len(o["value"]) <= 150 for o in element.get("options", []))


def test_only_known_action_ids_are_rendered() -> None:
    deploy = make_deploy(checklist=(ChecklistItem(0, "one", None, None),))
    rendered = {e["action_id"] for e in elements(deploy_blocks(deploy, required_approvals=2))}
    done = make_deploy(status="succeeded")
    rendered |= {e["action_id"] for e in elements(deploy_blocks(done, required_approvals=2, rollback_to="2.6.3"))}
    assert rendered == set(ACTION_IDS)


@pytest.mark.parametrize("status", ["approved", "rejected", "cancelled"])
def test_a_decided_deploy_has_no_buttons_and_a_read_only_checklist(status: str) -> None:
    deploy = make_deploy(status=status, checklist=(ChecklistItem(0, "one", "U0ALICE", "t"),))
    blocks = deploy_blocks(deploy, required_approvals=2)
    assert list(elements(blocks)) == []
    assert ":white_check_mark: one\n_ticked by <@U0ALICE>_" in [b.get("text", {}).get("text") for b in blocks]


def test_the_fake_slack_refuses_what_slack_refuses() -> None:
    """Every message the scenario tests send passes through this check."""
    from bot.sandbox.fake_slack import block_kit_problem

    assert block_kit_problem([{"type": "divider"}] * 51) == "51 blocks (at most 50)"
    too_long = {"type": "section", "text": {"type": "mrkdwn", "text": "x" * 3001}}
    assert block_kit_problem([too_long]) == "block 0: section is 3001 (at most 3000)"
    button = {"type": "button", "action_id": "a", "value": "v", "text": {"type": "plain_text", "text": "b" * 76}}
    assert block_kit_problem([{"type": "actions", "elements": [button]}]) == "block 0: button_text is 76 (at most 75)"


def test_the_biggest_messages_pass_the_fake_slacks_check() -> None:
    from bot.deploys.versions import MAX_VERSION_LENGTH
    from bot.sandbox.fake_slack import block_kit_problem
    from bot.slack.blocks import rollback_offer_blocks

    long_version = "1.2.3-" + "a" * (MAX_VERSION_LENGTH - 6)
    checklist = tuple(ChecklistItem(i, "x" * MAX_CHECKLIST_TEXT, None, None) for i in range(MAX_CHECKLIST_ITEMS))
    waiting = make_deploy(version=long_version, previous_version=long_version, checklist=checklist)
    done = make_deploy(status="failed", version=long_version, status_reason="r" * 4000)
    assert block_kit_problem(deploy_blocks(waiting, required_approvals=10)) is None
    assert block_kit_problem(deploy_blocks(done, required_approvals=1, rollback_to=long_version,
                                           rollback_note="n" * 3000)) is None
    assert block_kit_problem(rollback_offer_blocks(done, long_version)) is None
