"""Deploys that carry a database migration: the migration checklist, and a
backup command that runs before the engine and stops the deploy when it
fails. The backup and the engine are real programs."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from bot.config import DEFAULT_MIGRATION_CHECKLIST, parse_config
from bot.errors import ConfigError
from bot.slack.blocks import ACTION_APPROVE, ACTION_CHECKLIST
from store import Deploy
from tests.conftest import ENGINE, PYTHON, Harness, engine_calls

BACKUP = """\
import json, os, sys
with open(sys.argv[1], "a") as out:
    out.write(json.dumps({k: v for k, v in os.environ.items() if k.startswith("SLIPWAY_")}) + "\\n")
print("backup of", os.environ["SLIPWAY_SERVICE"], "to", sys.argv[1])
sys.exit(int(sys.argv[2]))
"""


@pytest.fixture
def backup_log(tmp_path: Path) -> Path:
    return tmp_path / "backups.jsonl"


@pytest.fixture
def config_text(record: Path, backup_log: Path, tmp_path: Path) -> str:
    script = tmp_path / "backup.py"
    script.write_text(BACKUP)
    return textwrap.dedent(f"""\
        channel: C0DEPLOYS
        environments:
          - name: staging
          - name: production
            requires: staging
            approvals:
              required: 1
              approvers: [U0ALICE]
            checklist: [Rollback plan documented]
        services:
          api:
            deploy:
              command: ["{PYTHON}", "{ENGINE}", "--record", "{record}"]
            migrations:
              backup:
                command: ["{PYTHON}", "{script}", "{backup_log}", "0"]
                environments: [production]
          billing:
            deploy:
              command: ["{PYTHON}", "{ENGINE}", "--record", "{record}"]
            migrations:
              always: true
              backup:
                command: ["{PYTHON}", "{script}", "{backup_log}", "4"]
        """)


async def approve(harness: Harness, deploy: Deploy) -> Deploy:
    for item in deploy.checklist:
        await harness.click(harness.message_of(deploy), "U0DAVE", ACTION_CHECKLIST,
                            block_id=f"checklist:{deploy.id}:{item.position}", selected=True)
    await harness.click(harness.message_of(deploy), "U0ALICE", ACTION_APPROVE)
    return harness.deploy(deploy.id)


def backups(backup_log: Path) -> list[dict]:
    return [json.loads(line) for line in backup_log.read_text().splitlines()] if backup_log.exists() else []


def thread(harness: Harness, deploy: Deploy) -> list[str]:
    return [c.args["text"] for c in harness.fake.calls_to("chat.postMessage")
            if c.args.get("thread_ts") == deploy.message_ts]


async def test_a_migration_request_gets_the_migration_checklist_and_says_so(harness: Harness) -> None:
    harness.mark_succeeded("api", "staging", "2.7.0")
    await harness.command("api 2.7.0 production --migration")
    deploy = harness.latest_deploy()
    assert deploy.migration
    assert [item.label for item in deploy.checklist] == ["Rollback plan documented", *DEFAULT_MIGRATION_CHECKLIST]
    shown = str(harness.message_of(deploy).blocks)
    assert "Database migration" in shown and "Backup taken before migrating" in shown

    await harness.command("api 2.7.1 staging")
    plain = harness.latest_deploy()
    assert not plain.migration and plain.checklist == ()


async def test_a_migration_deploy_runs_the_backup_first_with_the_deploy_in_its_environment(
        harness: Harness, record: Path, backup_log: Path) -> None:
    harness.mark_succeeded("api", "staging", "2.7.0")
    await harness.command("api 2.7.0 production --migration")
    deploy = await approve(harness, harness.latest_deploy())
    assert deploy.status == "succeeded"
    [backup] = backups(backup_log)
    assert backup["SLIPWAY_VERSION"] == "2.7.0" and backup["SLIPWAY_ENVIRONMENT"] == "production"
    assert len(engine_calls(record)) == 1
    replies = thread(harness, deploy)
    assert replies.index(next(r for r in replies if "Taking a backup" in r)) < replies.index(
        next(r for r in replies if "Handing api" in r))  # the backup came first
    assert "*Backup*: exit 0" in str(harness.message_of(deploy).blocks)
    assert any(e.action == "backup" and e.detail["succeeded"] for e in harness.store.audit.events(deploy.id))


async def test_a_failed_backup_stops_the_deploy_before_the_engine(
        harness: Harness, record: Path, backup_log: Path) -> None:
    # billing: every deploy carries a migration; its backup exits 4
    await harness.command("billing 1.4.0 staging")
    deploy = harness.latest_deploy()
    assert deploy.migration and deploy.checklist == ()  # no approvals on staging, so no checklist to tick
    failed = harness.deploy(deploy.id)
    assert failed.status == "failed" and failed.status_reason.startswith("backup failed (exit 4")
    assert "the engine was not run" in failed.status_reason
    assert engine_calls(record) == []  # never reached
    assert len(backups(backup_log)) == 1
    assert any("Backup failed (exit 4" in r and "backup of billing" in r for r in thread(harness, failed))
    assert ":x: *Backup*: exit 4" in str(harness.message_of(failed).blocks)


async def test_no_backup_where_the_service_does_not_ask_for_one(
        harness: Harness, record: Path, backup_log: Path) -> None:
    await harness.command("api 2.7.0 staging --migration")  # api backs up on production only
    deploy = harness.latest_deploy()
    assert deploy.migration and harness.deploy(deploy.id).status == "succeeded"
    assert backups(backup_log) == [] and len(engine_calls(record)) == 1


async def test_an_unknown_option_is_refused_by_name(harness: Harness) -> None:
    reply = await harness.command("api 2.7.0 staging --migrate")
    assert "I don't know the option `--migrate`" in reply and "`--migration`" in reply
    assert harness.store.db.execute("SELECT count(*) FROM deploys").fetchone()[0] == 0


def test_a_backup_must_name_known_environments(config_text: str) -> None:
    with pytest.raises(ConfigError) as bad:
        parse_config(config_text.replace("environments: [production]", "environments: [prod]"))
    assert bad.value.problems == ["services.api.migrations.backup.environments (line 17): unknown environment 'prod'"]


def test_the_migration_checklist_is_configurable_per_environment(config_text: str) -> None:
    config = parse_config(config_text.replace("    checklist: [Rollback plan documented]",
                                              "    checklist: [Rollback plan documented]\n"
                                              "    migration_checklist: [Down migration rehearsed]"))
    assert config.environments[1].migration_checklist == ["Down migration rehearsed"]
    assert config.environments[0].migration_checklist == list(DEFAULT_MIGRATION_CHECKLIST)


async def test_a_restart_during_the_backup_fails_the_deploy_without_running_the_engine(
        harness: Harness, record: Path, backup_log: Path) -> None:
    # Slipway stopped while the backup ran: the deploy is `deploying` and no backup result was recorded
    deploy = harness.store.deploys.create(service="api", environment="production", version="2.7.0",
                                          version_prefixed=False, requested_by="U0DAVE", previous_version=None,
                                          checklist=[], needs_approval=False, migration=True)
    harness.store.deploys.transition(deploy.id, allowed_from=("approved",), to="deploying", actor=None,
                                     action="deploy_started")
    await harness.restart()
    await harness.settle()
    failed = harness.deploy(deploy.id)
    assert failed.status == "failed" and "before its backup finished" in failed.status_reason
    assert engine_calls(record) == [] and backups(backup_log) == []
