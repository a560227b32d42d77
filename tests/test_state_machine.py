"""The deploy state machine on a real SQLite store: every edge of
``store.status.TRANSITIONS`` is taken, every other move is refused with
IllegalTransition, changing nothing and auditing nothing."""

from __future__ import annotations

import itertools
from collections import deque
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

import store.status as status_module
from store import Deploy, IllegalTransition, StateConflict, Store, StoreError
from store.status import ACTIVE_STATES, FINISHED_STATES, INITIAL_STATES, TRANSITIONS, WAITING_STATES, DeployStatus

S = DeployStatus

# The table, spelled out once more on purpose: a change to the machine must
# change this test too.
EDGES = {
    (S.QUEUED, S.APPROVED),  # its turn, its approvals complete
    (S.QUEUED, S.REJECTED),
    (S.QUEUED, S.CANCELLED),  # withdrawn, or its version blocked while it waited
    (S.QUEUED, S.EXPIRED),
    (S.AWAITING_APPROVAL, S.APPROVED),  # the final approval
    (S.AWAITING_APPROVAL, S.REJECTED),
    (S.AWAITING_APPROVAL, S.CANCELLED),  # by the requester or an approver, or superseded by a rollback
    (S.AWAITING_APPROVAL, S.EXPIRED),
    (S.APPROVED, S.DEPLOYING),
    (S.APPROVED, S.AWAITING_APPROVAL),  # its approvals went stale before it could start
    (S.APPROVED, S.CANCELLED),  # abandoned, superseded, or stopped by a lock or freeze before it started
    (S.APPROVED, S.FAILED),  # no engine configured, or Slipway failed before the engine ran
    (S.DEPLOYING, S.VERIFYING),
    (S.DEPLOYING, S.FAILED),
    (S.DEPLOYING, S.BAKING),  # a staged rollout reached full traffic (it verified inside its first step)
    (S.DEPLOYING, S.SUCCEEDED),  # a staged rollout without a bake passed its last step
    (S.VERIFYING, S.SUCCEEDED),
    (S.VERIFYING, S.FAILED),
    (S.VERIFYING, S.BAKING),  # a direct deploy verified, on an environment with a bake
    (S.BAKING, S.SUCCEEDED),  # the bake passed, or was promoted
    (S.BAKING, S.FAILED),  # the bake failed, or was aborted
    (S.SUCCEEDED, S.ROLLED_BACK),
}
REFUSED = sorted(set(itertools.product(S, S)) - EDGES)

START = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now

    def tick(self) -> str:
        """Move on a minute; the new moment as the store writes it."""
        self.now += timedelta(minutes=1)
        return self.now.isoformat(timespec="milliseconds")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock):
    opened = Store.open(tmp_path / "slipway.db", clock)
    yield opened
    opened.close()


def path_to(state: DeployStatus) -> list[DeployStatus]:
    """The shortest walk through the table from a new request to ``state``."""
    walks = deque([start] for start in INITIAL_STATES)
    while walks:
        walk = walks.popleft()
        if walk[-1] == state:
            return walk
        walks.extend(walk + [after] for after in sorted(TRANSITIONS[walk[-1]]) if after not in walk)
    raise AssertionError(f"{state} cannot be reached")


def deploy_in(store: Store, state: DeployStatus) -> Deploy:
    """A deploy brought to ``state`` through the store's own writes."""
    walk = path_to(state)
    deploy = store.deploys.create(service="api", environment="production", version="2.7.0", version_prefixed=False,
                                  requested_by="U0DAVE", previous_version="2.6.0", checklist=[],
                                  needs_approval=walk[0] != S.APPROVED, queued=walk[0] == S.QUEUED)
    for after in walk[1:]:
        deploy = store.deploys.transition(deploy.id, allowed_from=(deploy.status,), to=after, actor=None, action=after)
    assert deploy.status == state
    return deploy


def row(store: Store, deploy_id: int) -> dict:
    return next(store.db.query("SELECT * FROM deploys WHERE id = ?", [deploy_id]))


def test_the_table_is_the_one_this_test_spells_out() -> None:
    assert {(before, after) for before, afters in TRANSITIONS.items() for after in afters} == EDGES
    assert set(TRANSITIONS) == set(S)
    assert set(ACTIVE_STATES) | set(FINISHED_STATES) | set(WAITING_STATES) == set(S)
    assert not set(ACTIVE_STATES) & set(FINISHED_STATES)
    assert all(not TRANSITIONS[state] for state in FINISHED_STATES if state != S.SUCCEEDED)


def test_the_values_are_the_strings_stored_before_the_enum() -> None:
    assert [state.value for state in S] == ["awaiting_approval", "queued", "approved", "deploying", "verifying", "baking",
                                            "succeeded",
                                            "failed", "rejected", "cancelled", "expired", "rolled_back"]
    assert S.ROLLED_BACK == "rolled_back" and f"{S.ROLLED_BACK}" == "rolled_back"


@pytest.mark.parametrize(("before", "after"), sorted(EDGES), ids=lambda state: state.value)
def test_an_edge_of_the_table_is_taken(store: Store, clock: Clock, before: DeployStatus,
                                       after: DeployStatus) -> None:
    deploy = deploy_in(store, before)
    events = len(store.audit.events(deploy.id))
    now = clock.tick()
    moved = store.deploys.transition(deploy.id, allowed_from=(before,), to=after, actor="U0ALICE", action="moved",
                                     reason="because")
    assert moved.status == after and isinstance(moved.status, DeployStatus)
    assert moved.status_reason == "because"
    event = store.audit.events(deploy.id)[-1]
    assert len(store.audit.events(deploy.id)) == events + 1
    assert (event.action, event.actor, event.detail["from"], event.detail["to"]) == ("moved", "U0ALICE", before, after)
    if after == S.APPROVED:
        assert moved.approved_at == now
    if after == S.DEPLOYING:
        assert moved.started_at == now
    if after in FINISHED_STATES:
        # finished once: a rollback leaves the moment the deploy went live alone
        assert moved.finished_at == (deploy.finished_at or now)
    if after == S.ROLLED_BACK:
        assert moved.rolled_back_at == now and moved.finished_at == deploy.finished_at != now
    else:
        assert moved.rolled_back_at is None


@pytest.mark.parametrize(("before", "after"), REFUSED, ids=lambda state: state.value)
def test_a_move_outside_the_table_is_refused_and_changes_nothing(store: Store, clock: Clock, before: DeployStatus,
                                                                 after: DeployStatus) -> None:
    deploy = deploy_in(store, before)
    was, events = row(store, deploy.id), store.audit.events()
    clock.tick()
    with pytest.raises(IllegalTransition) as refused:
        store.deploys.transition(deploy.id, allowed_from=(before,), to=after, actor="U0ALICE", action="moved")
    assert (refused.value.deploy_id, refused.value.current, refused.value.wanted) == (deploy.id, before, after)
    assert f"never moves from {before} to {after}" in str(refused.value)
    assert row(store, deploy.id) == was
    assert store.audit.events() == events


def test_an_illegal_move_is_a_store_error_but_not_a_state_conflict() -> None:
    assert issubclass(IllegalTransition, StoreError)
    assert not issubclass(IllegalTransition, StateConflict) and not issubclass(StateConflict, IllegalTransition)


def test_a_deploy_found_elsewhere_than_the_caller_expects_is_a_conflict_not_an_illegal_move(store: Store) -> None:
    deploy = deploy_in(store, S.REJECTED)
    # rejected → approved is illegal too, but what the caller must hear is that the deploy moved on
    with pytest.raises(StateConflict) as caught:
        store.deploys.transition(deploy.id, allowed_from=(S.AWAITING_APPROVAL,), to=S.APPROVED, actor=None, action="x")
    assert caught.value.current == S.REJECTED


def test_the_final_approval_is_checked_against_the_table_too(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    deploy = deploy_in(store, S.AWAITING_APPROVAL)
    without = {**TRANSITIONS, S.AWAITING_APPROVAL: TRANSITIONS[S.AWAITING_APPROVAL] - {S.APPROVED}}
    monkeypatch.setattr(status_module, "TRANSITIONS", without)
    was, events = row(store, deploy.id), store.audit.events()
    with pytest.raises(IllegalTransition):
        store.deploys.record_approval(deploy.id, "U0ALICE", required=1)
    assert row(store, deploy.id) == was
    assert store.audit.events() == events
    assert store.deploys.get(deploy.id).approvals == ()
    monkeypatch.undo()
    approved = store.deploys.record_approval(deploy.id, "U0ALICE", required=1)
    assert approved.status == S.APPROVED
    assert store.audit.events(deploy.id)[-1].detail == {"from": "awaiting_approval", "to": "approved"}
