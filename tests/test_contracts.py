"""What the manifest, the renderer, the help and the listeners promise each
other: every command and action id has a listener and help text."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from bot.deploys.command_text import HELP_TEXT, SUBCOMMANDS
from bot.sandbox.fake_slack import Message
from bot.slack.blocks import ACTION_IDS
from handlers.commands import COMMAND
from tests.conftest import CHANNEL, Harness

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = yaml.safe_load((ROOT / "manifest.yml").read_text())


def test_the_manifest_declares_exactly_the_commands_the_code_registers() -> None:
    assert [c["command"] for c in MANIFEST["features"]["slash_commands"]] == [COMMAND]


def test_the_manifest_sends_commands_and_clicks_to_the_events_path() -> None:
    command = MANIFEST["features"]["slash_commands"][0]
    assert command["url"].endswith("/slack/events")
    assert MANIFEST["settings"]["interactivity"]["is_enabled"] is True
    assert MANIFEST["settings"]["interactivity"]["request_url"].endswith("/slack/events")
    for subcommand in SUBCOMMANDS:
        assert subcommand in command["usage_hint"]


# The bot scope each Web API method Slipway calls needs (Slack's method docs).
METHOD_SCOPES = {
    "auth_test": None, "chat_getPermalink": None, "views_publish": None,
    "chat_postMessage": "chat:write", "chat_update": "chat:write", "chat_postEphemeral": "chat:write",
    "conversations_open": "im:write", "usergroups_list": "usergroups:read", "usergroups_users": "usergroups:read",
}


# Scopes no method names: they widen what a method may do. chat:write.public lets
# chat.postMessage post in a public channel the bot was not invited to (a
# service's own channel, services.<name>.channel).
WIDENING_SCOPES = {"chat:write.public": "chat:write"}


def test_the_manifest_asks_only_for_the_scopes_the_code_uses() -> None:
    source = "\n".join(path.read_text() for folder in ("bot", "handlers") for path in (ROOT / folder).rglob("*.py")
                       if "fake_" not in path.name and "sandbox" not in path.parts)
    called = set(re.findall(r"client\.([a-z]+_[A-Za-z]+)\(", source))
    assert called <= set(METHOD_SCOPES), f"which scope does {called - set(METHOD_SCOPES)} need?"
    used = {"commands"} | {METHOD_SCOPES[method] for method in called} - {None}
    used |= {scope for scope, widened in WIDENING_SCOPES.items() if widened in used}
    assert set(MANIFEST["oauth_config"]["scopes"]["bot"]) == used


def test_the_messages_tab_is_on_so_direct_messages_can_be_read() -> None:
    home = MANIFEST["features"]["app_home"]
    assert home["messages_tab_enabled"] is True and home["messages_tab_read_only_enabled"] is True


def test_every_subcommand_has_help() -> None:
    for subcommand in SUBCOMMANDS:
        assert f"/deploy {subcommand}" in HELP_TEXT


@pytest.mark.parametrize("action_id", ACTION_IDS)
async def test_every_rendered_action_id_has_a_listener(harness: Harness, action_id: str) -> None:
    """Bolt answers 404 to a request no listener matches; ours must answer 200."""
    element = {"type": "checkboxes", "action_id": action_id, "options": [{"value": "1:0", "text": {}}]} \
        if action_id == "checklist_tick" else {"type": "button", "action_id": action_id, "value": "1",
                                               "text": {"type": "plain_text", "text": "x"}}
    block_id = "checklist:1:0" if action_id == "checklist_tick" else "deploy:1"
    message = Message(CHANNEL, "1.1", "", [{"type": "actions", "block_id": block_id, "elements": [element]}])
    assert await harness.click(message, "U0ALICE", action_id) == 200
    # there is no deploy #1, and the clicker is told so
    assert "There is no deploy #1" in harness.fake.ephemerals_for("U0ALICE")[-1].text


async def test_an_unknown_action_is_not_silently_accepted(harness: Harness) -> None:
    element = {"type": "button", "action_id": "not_ours", "value": "1", "text": {"type": "plain_text", "text": "x"}}
    message = Message(CHANNEL, "1.1", "", [{"type": "actions", "block_id": "b", "elements": [element]}])
    assert await harness.click(message, "U0ALICE", "not_ours") == 404
