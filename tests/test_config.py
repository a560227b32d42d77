"""Config validation: every problem, with its key path and line."""

from __future__ import annotations

import re
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


# -- progressive delivery (issue 12) -----------------------------------------------------

ROLLOUT_CONFIG = """\
channel: C0DEPLOYS
environments:
  - name: staging
  - name: production
    requires: staging
    bake: {duration: 15m, analysis: [error_rate]}   # the watch after 100%
analysis:
  prometheus_url: http://prometheus:9090   # defaults to alerts.prometheus_url
  checks:
    error_rate:
      query: >-
        sum(rate(http_requests_total{service="{service}",track="canary",code=~"5.."}[1m]))
        / sum(rate(http_requests_total{service="{service}",track="canary"}[1m]))
      baseline_query: >-           # optional: the same measure on the stable version
        sum(rate(http_requests_total{service="{service}",track="stable",code=~"5.."}[1m]))
        / sum(rate(http_requests_total{service="{service}",track="stable"}[1m]))
      max: 0.05                    # absolute ceiling (optional)
      max_ratio: 2                 # value / baseline ceiling (optional; needs baseline_query)
      min_baseline: 0.001          # floor under the baseline, so 2x of ~0 stays quiet
      interval: 30s                # one measurement every interval
      failure_limit: 2             # the stage fails when this many measurements in it failed
      inconclusive: pause          # no data / NaN / Prometheus unreachable: pause | fail (counts as failed)
services:
  api:
    deploy:
      command: ["./scripts/deploy.sh"]
    strategy:                      # per environment; absent: direct (the engine does it all)
      production:
        canary:
          steps:
            - {weight: 5, pause: 10m}
            - {weight: 25, pause: 10m}
            - {weight: 50, pause: 10m}
            - {weight: 100}
          analysis: [error_rate]
          on_failure: abort        # abort | pause
      staging:
        blue_green:
          pause: 5m                # after the switch, before the old colour is released
          analysis: [error_rate]
"""


def test_the_issue_rollout_config_is_valid_as_written() -> None:
    config = parse_config(ROLLOUT_CONFIG)
    canary = config.strategy_of("api", "production").canary
    assert [(s.weight, s.pause) for s in canary.steps] == [(5, 600.0), (25, 600.0), (50, 600.0), (100, 0.0)]
    assert config.strategy_of("api", "staging").blue_green.pause == 300.0
    assert config.environment("production").bake.duration == 900.0
    check = config.analysis.checks["error_rate"]
    assert (check.max, check.max_ratio, check.min_baseline, check.interval, check.failure_limit,
            check.inconclusive) == (0.05, 2, 0.001, 30.0, 2, "pause")
    assert config.prometheus_url == "http://prometheus:9090"
    assert config.strategy_of("api", "local") is None  # direct


@pytest.mark.parametrize(("edit", "expected"), [
    (("analysis: [error_rate]\n          on_failure", "analysis: [errors]\n          on_failure"),
     "services.api.strategy.production.canary.analysis: unknown check 'errors' (analysis.checks defines error_rate)"),
    (("bake: {duration: 15m, analysis: [error_rate]}", "bake: {duration: 15m, analysis: [latency]}"),
     "environments[1].bake.analysis: unknown check 'latency'"),
    (("- {weight: 100}", "- {weight: 90}"), "the last step must take all traffic: weight 100 (it is 90)"),
    (("- {weight: 25, pause: 10m}", "- {weight: 5, pause: 10m}"), "step weights must rise from above 0"),
    (("      baseline_query: >-           # optional: the same measure on the stable version\n"
      "        sum(rate(http_requests_total{service=\"{service}\",track=\"stable\",code=~\"5..\"}[1m]))\n"
      "        / sum(rate(http_requests_total{service=\"{service}\",track=\"stable\"}[1m]))\n", ""),
     "analysis.checks.error_rate: max_ratio compares with the stable version: it needs a baseline_query"),
    (("  prometheus_url: http://prometheus:9090   # defaults to alerts.prometheus_url\n", ""),
     "checks are measured in Prometheus: set analysis.prometheus_url"),
    (("      staging:\n        blue_green:", "      qa:\n        blue_green:"),
     "services.api.strategy.qa: unknown environment 'qa'"),
    (("inconclusive: pause ", "inconclusive: promote "), "inconclusive"),
    (("        blue_green:\n", "        canary: {steps: [{weight: 100}]}\n        blue_green:\n"),
     "give exactly one of canary, blue_green (found canary, blue_green)"),
])
def test_check_config_refuses_a_broken_rollout(edit: tuple[str, str], expected: str) -> None:
    old, new = edit
    assert old in ROLLOUT_CONFIG
    found = [re.sub(r" \(line \d+\)", "", problem) for problem in problems(ROLLOUT_CONFIG.replace(old, new, 1))]
    assert any(expected in problem for problem in found), found


def test_alerts_prometheus_url_serves_the_analysis_too() -> None:
    text = ROLLOUT_CONFIG.replace("  prometheus_url: http://prometheus:9090   # defaults to alerts.prometheus_url\n",
                                  "") + "alerts:\n  channel: C0ALERTS\n  prometheus_url: http://other:9090\n"
    assert parse_config(text).prometheus_url == "http://other:9090"


def test_a_per_service_approvals_block_must_name_an_environment_the_service_deploys_to() -> None:
    text = ROLLOUT_CONFIG.replace("""services:
  api:
""", """services:
  api:
    environments: [staging]
    owners: ["@payments"]
    approvals:
      production: {required: 1, approvers: ["@payments"]}
      qa: {required: 1, approvers: ["@payments"]}
""").replace("    strategy:                      # per environment; absent: direct (the engine does it all)\n", "    strategy:\n")
    found = [re.sub(r" \(line \d+\)", "", problem) for problem in problems(text)]
    assert "services.api.approvals.production: api does not deploy to production (services.api.environments)" in found
    assert "services.api.approvals.qa: unknown environment 'qa'" in found
