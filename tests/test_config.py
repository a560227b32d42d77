"""Config validation: every problem, with its key path and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.config import load_config, parse_config
from bot.errors import ConfigError
from tests.conftest import CONFIG
from tests.conftest import config_problems as problems

ROOT = Path(__file__).resolve().parent.parent


def test_the_example_config_is_valid() -> None:
    config = load_config(ROOT / "slipway.example.yml")
    assert config.environment_names == ["staging", "production"]
    production = config.environment("production")
    assert production.requires == "staging" and production.approvals.required == 2
    assert production.approvals.usergroup_handles == ["sre"]
    assert len(production.checklist) == 7
    assert config.services["api"].deploy.command == ["./scripts/deploy.sh"]
    backup = config.services["api"].migrations.backup
    assert backup.command == ["./scripts/backup.sh"] and (ROOT / "scripts" / "backup.sh").exists()
    assert production.roles.lock == ["U0ALICE", "@sre"] and production.approvals.remind_every == 2 * 3600
    assert [f.reason for f in config.freeze] == ["Holiday freeze", "No production deploys over the weekend"]
    assert config.alerts.channel == "C0ALERTS" and [r.metric for r in config.alerts.rules] == [
        "error_rate", "latency_p95"]


def test_the_issue_config_is_valid_as_written() -> None:
    config = parse_config(CONFIG)
    assert config.freeze[0].reason == "Holiday freeze"
    assert config.environment("staging").approvals is None


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (("required: 2", "required: 0"), "environments[1].approvals.required (line 7): Input should be greater than or equal to 1"),
        (("allow_self_approval: false", "allow_self_approval: false\n    x: 1"), "environments[1].x (line 10): unknown key"),
        (("[U0ALICE, U0BOB, U0CAROL, \"@sre\"]", "[alice]"), "environments[1].approvals.approvers (line 8): not a Slack user id (U…) or usergroup handle (@name): 'alice'"),
        (("[U0ALICE, U0BOB, U0CAROL, \"@sre\"]", "[U0ALICE]"), "environments[1].approvals (line 6): required is 2 but only 1 approver(s) are listed"),
        (("requires: staging", "requires: qa"), "environments[1].requires (line 5): 'qa' must name an earlier environment (staging)"),
        (("approvals:", "aprovals:"), "environments[1].aprovals (line 6): unknown key"),
        (("channel: C0DEPLOYS\n", ""), "channel (line 1): required key is missing"),
        (('from: "2026-12-24T00:00:00Z"', 'from: "2026-12-28T00:00:00Z"'), "freeze[0] (line 14): until must be after from"),
        (('from: "2026-12-24T00:00:00Z"', "from: 2026-12-24"), "freeze[0].from (line 15): needs a time zone"),
        (("environments: [production]", "environments: [prod]"), "freeze[0].environments (line 14): unknown environment 'prod'"),
        (("  api:\n", "  API:\n"), "services (line 18): service names must be lower-case words: 'API'"),
        (('- Rollback plan documented', '- ' + 'x' * 151), "environments[1].checklist[1] (line 12): String should have at most 150 characters"),
    ],
)
def test_each_problem_names_its_key_and_line(edit: tuple[str, str], expected: str) -> None:
    text = CONFIG.replace(*edit, 1)
    assert text != CONFIG
    found = problems(text)
    assert any(p.startswith(expected) for p in found), found


def test_every_problem_is_reported_at_once() -> None:
    text = CONFIG.replace("required: 2", "required: 0").replace("approvals:", "approvals:\n      colour: red")
    text = text.replace("channel: C0DEPLOYS", "channel: ''")
    found = problems(text)
    assert len(found) == 3, found


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("channel: [unclosed", "<yaml> (line 1)"),
        ("- just\n- a list\n", "<root>: the config must be a mapping"),
        ("", "<root>: the config must be a mapping"),
    ],
)
def test_not_a_config_at_all(text: str, expected: str) -> None:
    assert problems(text)[0].startswith(expected)


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "nope.yml")
    assert caught.value.problems[0].startswith("<file>: cannot read")
