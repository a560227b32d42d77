"""A deploy's states and the one table of the moves between them.

Every state write in the store (:meth:`store.deploys.Deploys.transition`,
the final approval in ``record_approval``) checks its edge against
:data:`TRANSITIONS` and refuses any other with
:class:`store.errors.IllegalTransition`. The values are the strings stored
in ``deploys.status``, so stored rows and comparisons with plain strings
keep working.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType


class DeployStatus(enum.StrEnum):
    """Where a deploy is in its life."""

    AWAITING_APPROVAL = "awaiting_approval"
    QUEUED = "queued"  # waiting in line for its service and environment (``queue: true``); approvals may be given
    APPROVED = "approved"
    DEPLOYING = "deploying"
    VERIFYING = "verifying"
    BAKING = "baking"  # at full traffic, watched through the environment's bake window
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REJECTED = "rejected"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    ROLLED_BACK = "rolled_back"


_S = DeployStatus  # short, for the tables below

# States in which a deploy still occupies its service+environment (a unique
# index allows one such deploy per pair).
ACTIVE_STATES: tuple[DeployStatus, ...] = (_S.AWAITING_APPROVAL, _S.APPROVED, _S.DEPLOYING, _S.VERIFYING,
                                           _S.BAKING)
# States of a request waiting its turn: outside the one-in-flight rule.
WAITING_STATES: tuple[DeployStatus, ...] = (_S.QUEUED,)
# States a deploy ends in (``expired``: a request nobody decided on in time).
FINISHED_STATES: tuple[DeployStatus, ...] = (_S.SUCCEEDED, _S.FAILED, _S.REJECTED, _S.CANCELLED, _S.ROLLED_BACK,
                                             _S.EXPIRED)
# The states of a deploy whose engine ran to an end. Cancelled, rejected and
# expired requests never reached the engine.
RAN_STATES: tuple[DeployStatus, ...] = (_S.SUCCEEDED, _S.FAILED, _S.ROLLED_BACK)
# What a new request starts as: awaiting approval, or approved at once where
# the environment needs none.
INITIAL_STATES: tuple[DeployStatus, ...] = (_S.AWAITING_APPROVAL, _S.APPROVED, _S.QUEUED)

TRANSITIONS: Mapping[DeployStatus, frozenset[DeployStatus]] = MappingProxyType({
    # its turn came with its approvals complete; decided against, withdrawn, or left too long
    _S.QUEUED: frozenset({_S.APPROVED, _S.REJECTED, _S.CANCELLED, _S.EXPIRED}),
    # the final approval; a decision against it; nobody deciding in time
    _S.AWAITING_APPROVAL: frozenset({_S.APPROVED, _S.REJECTED, _S.CANCELLED, _S.EXPIRED}),
    _S.APPROVED: frozenset({
        _S.DEPLOYING,
        _S.AWAITING_APPROVAL,  # its approvals went stale before it could start
        _S.CANCELLED,  # abandoned (never announced), superseded by a rollback, or stopped by a lock or freeze
        _S.FAILED,  # no engine configured, or Slipway failed before the engine started
    }),
    # a staged rollout (canary, blue-green) verifies inside its first step and reaches the bake from deploying
    # (and, without a bake, succeeds from deploying when its last step passed)
    _S.DEPLOYING: frozenset({_S.VERIFYING, _S.BAKING, _S.SUCCEEDED, _S.FAILED}),
    _S.VERIFYING: frozenset({_S.SUCCEEDED, _S.BAKING, _S.FAILED}),
    _S.BAKING: frozenset({_S.SUCCEEDED, _S.FAILED}),  # the bake passed (or was promoted); it failed or was aborted
    # a later rollback undid it; a failed deploy stays failed (its rollback points at it)
    _S.SUCCEEDED: frozenset({_S.ROLLED_BACK}),
    _S.FAILED: frozenset(),
    _S.REJECTED: frozenset(),
    _S.CANCELLED: frozenset(),
    _S.EXPIRED: frozenset(),
    _S.ROLLED_BACK: frozenset(),
})


def is_legal(current: str, wanted: str) -> bool:
    """Whether a deploy in state ``current`` may move to ``wanted``."""
    try:
        return DeployStatus(wanted) in TRANSITIONS[DeployStatus(current)]
    except ValueError:  # not a state at all
        return False
