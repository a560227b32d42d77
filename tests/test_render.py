"""Block Kit rendering: plain asserts, and Block Kit's limits at the
largest config the validator accepts."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from slack_sdk.errors import SlackObjectFormationError
from slack_sdk.models.blocks import SectionBlock

from bot.config import MAX_CHECKLIST_ITEMS, MAX_CHECKLIST_TEXT
from bot.deploys.stats import Figures
from bot.slack.blocks import (
    ACTION_IDS,
    MAX_BLOCKS,
    MAX_HEADER_TEXT,
    MAX_SECTION_TEXT,
    context,
    deploy_blocks,
    field,
    header,
    rollback_button,
    section,
)
from bot.slack.mrkdwn import RolloutFacts, version_change
from bot.slack.status import Cell, Matrix, stats_blocks, status_blocks
from store import Approval, ChecklistItem, Deploy, Lock, Rollout, Stage


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
    stages = (Stage(7, 1, "step", 5, None, 60, (), "watching"), Stage(7, 2, "step", 100, None, 0, (), "pending"))
    for paused in (None, "2026-11-23T12:00:00.000+00:00"):  # Pause, then Resume
        rollout = RolloutFacts(Rollout(7, "canary", "abort", "t", stages, paused_at=paused), "5% → 100%")
        rendered |= {e["action_id"] for e in elements(deploy_blocks(make_deploy(status="deploying"),
                                                                    required_approvals=2, rollout=rollout))}
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


def test_the_text_helpers_reach_no_slack_library() -> None:
    """The deploy domain writes its messages with bot.slack.mrkdwn, and must
    not reach slack_sdk or slack_bolt through it."""
    code = ("import sys, bot.slack.mrkdwn, bot.durations; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('slack_sdk', 'slack_bolt')))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_the_mrkdwn_section_limit_is_block_kits() -> None:
    assert MAX_SECTION_TEXT == SectionBlock.text_max_length


def test_too_long_texts_are_clipped_rather_than_refused() -> None:
    assert len(header("h" * 500).to_dict()["text"]["text"]) == MAX_HEADER_TEXT
    clipped = section("s" * 5000, fields=["f" * 5000]).to_dict()
    assert len(clipped["text"]["text"]) == MAX_SECTION_TEXT and clipped["text"]["text"].endswith("…")
    assert len(clipped["fields"][0]["text"]) == 2000
    assert len(context("c" * 5000).to_dict()["elements"][0]["text"]) == 3000
    assert len(field("f" * 2001).to_dict()["text"]) == 2000
    deploy = make_deploy(status="failed", status_reason="r" * 4000, service="s" * 200,
                         override_reason="o" * 4000, engine_summary="e" * 4000, started_at="2026-11-23T12:00:00+00:00")
    blocks = deploy_blocks(deploy, required_approvals=2, rollback_to="2.6.3-" + "x" * 250, rollback_note="n" * 4000)
    texts = [b["text"]["text"] for b in blocks if b["type"] == "section" and "text" in b]
    assert len(texts) == 3 and all(len(text) == MAX_SECTION_TEXT for text in texts)
    button = blocks[-2]["elements"][0]
    assert len(button["text"]["text"]) == 75 and len(button["confirm"]["text"]["text"]) == 300


def test_what_cannot_be_clipped_is_refused_before_slack_sees_it() -> None:
    """A button value cannot be cut (the click would name another version):
    slack_sdk refuses it when the block becomes a dict."""
    with pytest.raises(SlackObjectFormationError, match="value"):
        rollback_button(make_deploy(), "1." + "9" * 2000).to_dict()


def test_a_checklist_too_long_for_a_message_stays_within_50_blocks() -> None:
    """The config allows 20 items; should a checklist ever outgrow a
    message, the message still posts and says what it left out."""
    checklist = tuple(ChecklistItem(i, f"step {i}", None, None) for i in range(80))
    blocks = deploy_blocks(make_deploy(checklist=checklist, override_reason="hotfix", engine_summary="e",
                                       started_at="2026-11-23T12:00:00+00:00"), required_approvals=2)
    assert len(blocks) == MAX_BLOCKS
    assert blocks[-1]["type"] == "context" and blocks[-2]["type"] == "actions"  # the footer and buttons stay
    shown = sum(1 for b in blocks if b.get("block_id", "").startswith("checklist:"))
    note = next(b for b in blocks if b["type"] == "context" and "more checklist item" in str(b))
    assert f"…and {80 - shown} more checklist item(s)" in note["elements"][0]["text"]


def cell(environment: str, reason: str = "") -> Cell:
    locks = (Lock("svc", environment, "U0ERIN", "2026-11-23T12:00:00+00:00", reason),) if reason else ()
    live = make_deploy(status="succeeded", finished_at="2026-11-23T12:00:00+00:00")
    return Cell(environment, True, live, None, locks, None)


def test_a_matrix_too_big_for_a_message_stays_within_50_blocks() -> None:
    """Rows that do not fit are named in the last line, whoever built the matrix."""
    environments = [f"e{n:02d}" for n in range(12)]  # two sections a service
    services = [(f"svc{n:03d}", tuple(cell(env, "x" * 3000) for env in environments)) for n in range(40)]
    blocks = status_blocks(Matrix(services, ["later"], {}))
    assert len(blocks) <= MAX_BLOCKS
    rows = [b for b in blocks if b.get("text", {}).get("text", "").startswith("*svc")]
    assert 0 < len(rows) < 40
    assert f"…and {40 - len(rows) + 1} more service(s)" in blocks[-1]["elements"][0]["text"]
    assert blocks[-1]["elements"][0]["text"].count("later") == 1
    assert all(len(f["text"]) <= 2000 for b in blocks for f in b.get("fields", []))


def test_a_matrix_that_fits_leaves_nothing_out() -> None:
    services = [(f"svc{n:03d}", (cell("prod"),)) for n in range(MAX_BLOCKS - 1)]  # the header, then 49 rows
    blocks = status_blocks(Matrix(services, [], {}))
    assert len(blocks) == MAX_BLOCKS and "more service" not in str(blocks)


def test_stats_for_many_environments_stay_within_50_blocks() -> None:
    figures = [Figures(f"e{n:02d}", 30, deploys=3, lead_times=[1800, 3600, 5400]) for n in range(80)]
    blocks = stats_blocks(figures, None, 30)
    assert len(blocks) == MAX_BLOCKS and "more environment(s) not shown" in blocks[-1]["elements"][0]["text"]
    assert "median 1h · p90 1h 24m" in str(blocks[2])
