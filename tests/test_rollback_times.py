"""A rollback does not rewrite history: the undone deploy keeps the moment it
went live (its duration in `/deploy show`, its alerts' "… after it reached
production"), and gets a moment of its own for being undone. Databases
written before that are repaired by migration 8."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest
import sqlite_utils

from bot.slack.blocks import ACTION_APPROVE, ACTION_ROLLBACK
from store import Store, schema
from tests.conftest import ENGINE, PYTHON, Harness
from tests.test_alerts import am_alert, am_payload, send

AM_TOKEN = "am-token"


@pytest.fixture
def environ() -> dict[str, str]:
    return {"SLIPWAY_ALERTMANAGER_TOKEN": AM_TOKEN}


@pytest.fixture
def config_text(record: Path) -> str:
    return textwrap.dedent(f"""\
        channel: C0DEPLOYS
        environments:
          - name: production
            approvals:
              required: 1
              approvers: [U0ALICE]
        services:
          api:
            deploy:
              command: ["{PYTHON}", "{ENGINE}", "--record", "{record}"]
        alerts:
          channel: C0ALERTS
        """)


async def ship(harness: Harness, version: str):
    await harness.command(f"api {version} production")
    deploy = harness.latest_deploy()
    await harness.click(harness.message_of(deploy), "U0ALICE", ACTION_APPROVE)
    deploy = harness.deploy(deploy.id)
    assert deploy.status == "succeeded", deploy.status_reason
    return deploy


def said(body: str) -> str:
    try:
        return json.loads(body)["text"]
    except ValueError:
        return body


def started_line(shown: str) -> str:
    return next(line for line in shown.splitlines() if line.startswith("• Started"))


async def test_show_keeps_the_undone_deploys_duration_and_says_when_it_was_rolled_back(harness: Harness,
                                                                                      clock) -> None:
    await ship(harness, "2.6.3")
    current = await ship(harness, "2.7.0")
    before = said(await harness.command(f"show {current.id}"))
    clock.advance(minutes=45)  # it ran for a while before anyone rolled it back
    await harness.click(harness.message_of(current), "U0ALICE", ACTION_ROLLBACK)
    undone = harness.deploy(current.id)
    assert undone.status == "rolled_back"

    after = said(await harness.command(f"show {current.id}"))
    assert started_line(after) == started_line(before)
    assert (undone.finished_at, undone.duration_seconds) == (current.finished_at, current.duration_seconds)
    assert undone.rolled_back_at == (clock.now).isoformat(timespec="milliseconds")
    assert any(line.startswith("• Rolled back <!date^") for line in after.splitlines())
    assert "Rolled back" not in before


async def test_the_alert_still_says_how_long_after_it_reached_production_once_it_is_rolled_back(harness: Harness,
                                                                                                clock) -> None:
    await ship(harness, "2.6.3")
    deploy = await ship(harness, "2.7.0")
    clock.advance(minutes=4)
    await send(harness, "/webhooks/alertmanager", am_payload(am_alert(starts=clock.now)))
    [alert] = [m for m in harness.fake.channel_messages("C0DEPLOYS")
               if m.thread_ts == deploy.message_ts and "Breach" in json.dumps(m.blocks)]
    [tie] = re.findall(r"Started [^.]+ after api 2\.7\.0 reached production \(deploy #\d+\)",
                       json.dumps(alert.blocks, ensure_ascii=False))
    assert tie.startswith("Started 4m") and tie.endswith(f"(deploy #{deploy.id})")

    clock.advance(minutes=20)
    await harness.click(alert, "U0ALICE", ACTION_ROLLBACK)
    assert harness.deploy(deploy.id).status == "rolled_back"
    await harness.slipway.outbox.drain(timeout=20)
    shown = json.dumps(alert.blocks, ensure_ascii=False)
    assert ACTION_ROLLBACK not in shown  # it was redrawn after the rollback…
    assert tie in shown  # …and still dates the alert from when the deploy went live


def test_migration_8_gives_back_the_moment_an_undone_deploy_went_live(tmp_path: Path) -> None:
    old = sqlite_utils.Database(tmp_path / "old.db")
    old["schema_migrations"].create({"version": int, "applied_at": str}, pk="version")
    for number, migration in enumerate(schema.MIGRATIONS[:7], start=1):  # a database from before migration 8
        migration(old)
        old["schema_migrations"].insert({"version": number, "applied_at": "2026-11-01T00:00:00.000+00:00"})
    live, undone = "2026-11-02T10:05:00.000+00:00", "2026-11-02T11:00:00.000+00:00"
    for status, finished in [("rolled_back", undone), ("rolled_back", undone), ("succeeded", live), ("failed", live)]:
        old["deploys"].insert({"service": "api", "environment": "production", "version": "1.0.0",
                               "version_prefixed": 0, "status": status, "requested_by": "U0DAVE",
                               "requested_at": "2026-11-02T10:00:00.000+00:00",
                               "started_at": "2026-11-02T10:01:00.000+00:00", "finished_at": finished})
    # how Store.transition audited deploy 1's way: live at 10:05, undone at 11:00 (deploy 2 left no trace)
    for at, before, after in [("2026-11-02T10:01:00.000+00:00", "approved", "deploying"),
                              ("2026-11-02T10:03:00.000+00:00", "deploying", "verifying"),
                              (live, "verifying", "succeeded"), (undone, "succeeded", "rolled_back")]:
        old["audit"].insert({"at": at, "deploy_id": 1, "action": after,
                             "detail": json.dumps({"from": before, "to": after, "reason": None})})
    old.conn.close()

    store = Store.open(tmp_path / "old.db")
    times = {d.id: (d.finished_at, d.rolled_back_at) for d in map(store.deploys.get, (1, 2, 3, 4))}
    store.close()
    assert times == {
        1: (live, undone),
        2: (undone, undone),  # no audit trace of its success: dated by its undoing, late but never lost
        3: (live, None),
        4: (live, None),
    }
