"""The store on a real SQLite file: migrations, WAL, state checks, the
append-only audit log."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import sqlite_utils

from store import (
    AlreadyApproved,
    ChecklistIncomplete,
    DeployInFlight,
    DeployNotFound,
    DuplicateRequest,
    StateConflict,
    Store,
)
from store.schema import MIGRATIONS


@pytest.fixture
def store(tmp_path: Path):
    opened = Store.open(tmp_path / "slipway.db")
    yield opened
    opened.close()


def new_deploy(store: Store, **overrides):
    fields = dict(service="api", environment="production", version="2.7.0", version_prefixed=True,
                  requested_by="U0DAVE", previous_version="2.6.0", checklist=["one", "two"], needs_approval=True)
    return store.deploys.create(**{**fields, **overrides})


def test_opening_twice_applies_migrations_once_and_keeps_data(tmp_path: Path) -> None:
    first = Store.open(tmp_path / "s.db")
    deploy = new_deploy(first)
    first.close()
    again = Store.open(tmp_path / "s.db")
    assert again.deploys.get(deploy.id).checklist[1].label == "two"
    assert [r["version"] for r in again.db["schema_migrations"].rows] == list(range(1, len(MIGRATIONS) + 1))
    assert again.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    again.close()


def test_one_deploy_in_flight_per_service_and_environment(store: Store) -> None:
    first = new_deploy(store)
    with pytest.raises(DeployInFlight) as caught:
        new_deploy(store, version="2.7.1")
    assert caught.value.existing.id == first.id
    new_deploy(store, environment="staging")  # another environment is free
    store.deploys.transition(first.id, allowed_from=("awaiting_approval",), to="rejected", actor="U0ALICE",
                             action="rejected")
    assert new_deploy(store, version="2.7.1").id > first.id


def test_the_database_itself_refuses_a_second_deploy_in_flight(store: Store) -> None:
    new_deploy(store)
    with pytest.raises(sqlite3.IntegrityError):
        store.db.execute("INSERT INTO deploys (service, environment, version, status, requested_by, requested_at) "
                         "VALUES ('api', 'production', '9.9.9', 'deploying', 'U1', 'now')")


def test_a_trigger_id_is_recorded_once(store: Store) -> None:
    first = new_deploy(store, trigger_id="t-1")
    with pytest.raises(DuplicateRequest) as caught:
        new_deploy(store, trigger_id="t-1", environment="staging")
    assert caught.value.existing.id == first.id


def test_transitions_check_the_current_state(store: Store) -> None:
    deploy = new_deploy(store)
    store.deploys.transition(deploy.id, allowed_from=("awaiting_approval",), to="cancelled", actor="U0DAVE",
                             action="cancelled")
    with pytest.raises(StateConflict) as caught:
        store.deploys.transition(deploy.id, allowed_from=("awaiting_approval",), to="rejected", actor="U0ALICE",
                                 action="rejected")
    assert caught.value.current == "cancelled"
    assert store.deploys.get(deploy.id).status == "cancelled"
    with pytest.raises(DeployNotFound):
        store.deploys.get(999)


def test_approvals_count_once_and_the_last_needs_the_checklist(store: Store) -> None:
    deploy = new_deploy(store)
    store.deploys.record_approval(deploy.id, "U0ALICE", required=2)
    with pytest.raises(AlreadyApproved):
        store.deploys.record_approval(deploy.id, "U0ALICE", required=2)
    with pytest.raises(ChecklistIncomplete) as caught:
        store.deploys.record_approval(deploy.id, "U0BOB", required=2)
    assert caught.value.unticked == ["one", "two"]
    assert store.deploys.get(deploy.id).approvers == ["U0ALICE"]  # the refused vote left no trace
    for position in (0, 1):
        store.deploys.set_checklist_item(deploy.id, position, True, "U0ALICE")
    approved = store.deploys.record_approval(deploy.id, "U0BOB", required=2)
    assert approved.status == "approved" and approved.approved_at is not None


def test_ticking_twice_is_one_audited_change(store: Store) -> None:
    deploy = new_deploy(store)
    store.deploys.set_checklist_item(deploy.id, 0, True, "U0ALICE")
    store.deploys.set_checklist_item(deploy.id, 0, True, "U0BOB")
    assert store.deploys.get(deploy.id).checklist[0].ticked_by == "U0ALICE"
    assert [e.action for e in store.audit.events(deploy.id)] == ["requested", "checklist_ticked"]


def test_the_audit_log_is_append_only(store: Store) -> None:
    deploy = new_deploy(store)
    for statement in ("UPDATE audit SET actor = 'U0EVE'", "DELETE FROM audit"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            store.db.execute(statement)
    assert [e.actor for e in store.audit.events(deploy.id)] == ["U0DAVE"]


def test_a_failed_transaction_leaves_nothing_half_written(store: Store) -> None:
    with pytest.raises(sqlite3.IntegrityError):
        # the second checklist row breaks NOT NULL after the deploy row and the first item were written
        store.deploys.create(service="api", environment="production", version="1.0.0", version_prefixed=False,
                             requested_by="U0DAVE", previous_version=None, checklist=["a", None],
                             needs_approval=True)
    assert store.db.execute("SELECT count(*) FROM deploys").fetchone()[0] == 0
    assert store.db.execute("SELECT count(*) FROM checklist_items").fetchone()[0] == 0
    assert store.audit.events() == []


def test_locks_expire_and_scope(store: Store) -> None:
    store.locks.acquire("api", "*", "U0ERIN", "all of it")
    assert [l.environment for l in store.locks.stopping("api", "staging")] == ["*"]
    assert store.locks.stopping("web", "staging") == []
    store.locks.acquire("web", "staging", "U0ERIN", "short", until="2000-01-01T00:00:00+00:00")
    assert store.locks.stopping("web", "staging") == []  # expired
    assert [l.reason for l in store.locks.release("api", None, "U0ERIN")] == ["all of it"]


def test_two_processes_racing_for_one_environment_get_one_deploy(tmp_path: Path) -> None:
    """Two connections (as two Slipway processes would have) insert at once;
    the unique index under BEGIN IMMEDIATE lets exactly one through."""
    import threading

    path = tmp_path / "race.db"
    Store.open(path).close()
    barrier = threading.Barrier(8)
    outcomes: list[str] = []

    def request(n: int) -> None:
        store = Store.open(path)
        barrier.wait()
        try:
            new_deploy(store, version=f"2.7.{n}", checklist=[])
            outcomes.append("created")
        except DeployInFlight:
            outcomes.append("in flight")
        finally:
            store.close()

    threads = [threading.Thread(target=request, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["created"] + ["in flight"] * 7


def test_deploys_that_ended_before_direct_messages_existed_are_never_announced_by_dm(tmp_path: Path) -> None:
    from store import schema

    old = sqlite_utils.Database(tmp_path / "old.db")
    old["schema_migrations"].create({"version": int, "applied_at": str}, pk="version")
    for number, migration in enumerate(schema.MIGRATIONS[:5], start=1):  # a database from before migration 6
        migration(old)
        old["schema_migrations"].insert({"version": number, "applied_at": "2026-11-01T00:00:00.000+00:00"})
    for status in ("succeeded", "awaiting_approval"):
        old["deploys"].insert({"service": "api", "environment": "production", "version": "1.0.0",
                               "version_prefixed": 0, "status": status, "requested_by": "U0DAVE",
                               "requested_at": "2026-11-01T00:00:00.000+00:00"})
    old.conn.close()
    store = Store.open(tmp_path / "old.db")
    finished, waiting = store.deploys.get(1), store.deploys.get(2)
    assert finished.notified_status == "succeeded" and not store.deploys.claim_notification(1, "succeeded")
    assert waiting.notified_status is None  # still news when it ends
    store.close()


def test_writes_of_several_repositories_in_one_transaction_commit_or_vanish_together(store: Store) -> None:
    with pytest.raises(RuntimeError), store.transaction():
        deploy = new_deploy(store)
        store.locks.acquire("api", "production", "U0DAVE", "rolling back", deploy_id=deploy.id)
        store.outbox.enqueue_post("note", "C0DEPLOYS", "rolling back")
        raise RuntimeError("the caller changed its mind")
    assert store.db.execute("SELECT count(*) FROM deploys").fetchone()[0] == 0
    assert store.locks.all() == [] and store.outbox.items() == [] and store.audit.events() == []
    with store.transaction():
        deploy = new_deploy(store)
        store.locks.acquire("api", "production", "U0DAVE", "rolling back", deploy_id=deploy.id)
    assert [e.action for e in store.audit.events(deploy.id)] == ["requested", "locked"]
