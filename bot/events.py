"""What happened, told to whoever listens: a small typed event bus.

The deploy domain publishes facts (a deploy changed, a request expired, a
lock ran out); the Slack views, the App Home, direct messages, metrics and
alert messages subscribe. Who listens to what is said in one place, the
composition root (``bot.runtime.composition.subscribe``), never by setting
callbacks on objects after they are built.

``publish`` calls every subscriber of the event's type synchronously, in the
order they subscribed, in the publisher's context. That is a promise, not an
accident: a subscriber that writes to the store joins the publisher's open
transaction (``Store.transaction`` joins one), so the durable work an event
calls for can commit with the state change that raised it. Subscribers are
quick and do not wait: slow work (a Slack call) is spawned as a background
task or queued in the outbox. A subscriber that fails is logged with its
traceback and never stops the change it follows, nor the subscribers after it.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from store import Deploy, Lock

log = logging.getLogger(__name__)

E = TypeVar("E")


@dataclass(frozen=True)
class DeployPosted:
    """A deploy's message is in the channel (its ``permalink`` is known)."""

    deploy_id: int


@dataclass(frozen=True)
class DeployChanged:
    """A deploy's record changed (state, ticks, approvals): its views are stale."""

    deploy_id: int


@dataclass(frozen=True)
class RequestExpired:
    """A request nobody decided on in time became ``expired``."""

    deploy: Deploy


@dataclass(frozen=True)
class ChecklistBlocked:
    """``approver`` tried to give the final approval, but the checklist is not done."""

    deploy: Deploy
    approver: str


@dataclass(frozen=True)
class LocksChanged:
    """A lock or a version block was placed, lifted or expired."""


@dataclass(frozen=True)
class LocksExpired:
    """These locks ran out and were released (told once each, whoever noticed)."""

    locks: tuple[Lock, ...]


@dataclass(frozen=True)
class AlertsRelayed:
    """A monitor's alerts were stored with the Slack messages they call for.

    ``page_deploys``: deploys a page-level alert was tied to (candidates for
    an automatic rollback)."""

    source: str
    received: int
    relayed: int
    duplicates: int
    stale: int
    page_deploys: tuple[int, ...]


@dataclass(frozen=True)
class RollbackIntended:
    """A rollback was decided with a deploy's end (a bake that failed where
    ``auto_rollback`` is on, an abort after the old version was gone) and
    recorded as an intent: carry it out."""

    deploy_id: int


@dataclass(frozen=True)
class SlackWorkQueued:
    """Slack work was queued in the durable outbox: its worker should look now."""


@dataclass(frozen=True)
class MessagePosted:
    """The outbox posted the message known as ``key`` (drawn from ``view``)."""

    key: str
    view: str | None
    channel: str
    ts: str
    permalink: str | None


@dataclass(frozen=True)
class MessageRefused:
    """Slack refused (or never answered) a call for the message known as
    ``key``; the outbox has already settled when to try again, or given up."""

    key: str
    view: str | None
    code: str | None  # Slack's error code; None: no JSON answer (connection, timeout, a proxy's page)
    detail: str


@dataclass(frozen=True)
class ExecutorStarted:
    """The deploy engine was handed a deploy (a probe for benchmarks)."""

    deploy_id: int


class EventBus:
    """Typed publish/subscribe, synchronous and in-process (see the module docstring)."""

    def __init__(self) -> None:
        self._subscribers: dict[type, list[Callable[[Any], None]]] = defaultdict(list)

    def subscribe(self, event_type: type[E], subscriber: Callable[[E], None]) -> None:
        """Call ``subscriber`` with every event of ``event_type`` published from now on."""
        self._subscribers[event_type].append(subscriber)

    def subscribers(self, event_type: type) -> list[Callable[[Any], None]]:
        """Who listens to ``event_type``, in the order they are told."""
        return list(self._subscribers.get(event_type, ()))

    def publish(self, event: object) -> None:
        """Tell every subscriber of ``event``'s type, in order; one that fails is logged, never raised."""
        for subscriber in self._subscribers.get(type(event), ()):
            try:
                subscriber(event)
            except Exception:  # noqa: BLE001 — a view that fails must not undo or stop the change it follows
                log.exception("subscriber %r failed for %r", subscriber, event)
