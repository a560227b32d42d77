"""The store's named errors: one base, :class:`StoreError`, and a subclass
per thing a caller may want to answer differently."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from store.records import Deploy


__all__ = [
    "StoreError", "DeployNotFound", "StateConflict", "IllegalTransition", "DeployInFlight",
    "DuplicateRequest", "AlreadyApproved", "ChecklistIncomplete", "UnknownMessage",
]

class StoreError(Exception):
    """Base of the store's named errors."""


class DeployNotFound(StoreError, LookupError):
    """No deploy has that id."""


class StateConflict(StoreError):
    """The deploy is not in a state the caller allows the change from (it
    moved on meanwhile: a double click, a race, a retried request).

    ``current`` is the state it was found in, ``wanted`` the one asked for.
    """

    def __init__(self, deploy_id: int, current: str, wanted: str) -> None:
        super().__init__(f"deploy {deploy_id} is {current}, cannot become {wanted}")
        self.deploy_id = deploy_id
        self.current = current
        self.wanted = wanted


class IllegalTransition(StoreError):
    """The move asked for is not an edge of the state machine
    (:data:`store.status.TRANSITIONS`): a bug in the caller, never a race.

    ``current`` is the state the deploy is in, ``wanted`` the one asked for.
    """

    def __init__(self, deploy_id: int, current: str, wanted: str) -> None:
        super().__init__(f"deploy {deploy_id} is {current}: a deploy never moves from {current} to {wanted}")
        self.deploy_id = deploy_id
        self.current = current
        self.wanted = wanted


class DeployInFlight(StoreError):
    """Another deploy already occupies that service and environment."""

    def __init__(self, existing: Deploy) -> None:
        super().__init__(f"deploy {existing.id} is {existing.status}")
        self.existing = existing


class DuplicateRequest(StoreError):
    """This Slack request (same trigger id) was already recorded."""

    def __init__(self, existing: Deploy) -> None:
        super().__init__(f"already recorded as deploy {existing.id}")
        self.existing = existing


class AlreadyApproved(StoreError):
    """That person's approval is already counted."""


class ChecklistIncomplete(StoreError):
    """The approval would be the final one but items are still unticked."""

    def __init__(self, unticked: list[str]) -> None:
        super().__init__(f"{len(unticked)} checklist item(s) unticked")
        self.unticked = unticked


class UnknownMessage(StoreError, LookupError):
    """No message has that key: nothing was ever posted or queued under it."""
