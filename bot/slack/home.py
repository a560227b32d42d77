"""The App Home tab: what runs where and the last deploys, published for
each person who opens it and republished when something it shows changes.

Slack sends ``app_home_opened`` every time someone opens the tab, so the set
of people to keep current lives in memory: after a restart it refills as
people come back. Each publish is a row in the durable outbox, drawn from
the stored state when it is sent (the ``home`` view) and coalesced: however
many changes land at once, each person's tab is published once per burst,
and a refused publish is retried by the outbox, never raised into the
deploy that caused it.
"""

from __future__ import annotations

from bot.events import DeployChanged, DeployPosted, LocksChanged
from bot.slack.outbox import Outbox
from store import Store

HOME_VIEW = "home:"  # the outbox's view of a person's tab: ``home:U0ALICE`` (their ``/deploy home --owner`` choice)


class HomeTabs:
    """Keeps the Home tab of everyone who opened it since start current."""

    def __init__(self, store: Store, outbox: Outbox) -> None:
        self._store = store
        self._outbox = outbox
        self._viewers: set[str] = set()

    def opened(self, user: str) -> None:
        self._viewers.add(user)
        self._publish({user})

    def chosen(self, user: str) -> None:
        """``user`` chose which services their tab shows: it is republished (and kept current)."""
        self.opened(user)

    def changed(self, event: DeployPosted | DeployChanged | LocksChanged) -> None:
        """Something the tab shows changed (a deploy, a lock, a block): cheap,
        never raises into the change, publishes later."""
        self._publish(self._viewers)

    def _publish(self, users: set[str]) -> None:
        if not users:
            return
        with self._store.transaction():
            for user in sorted(users):
                self._store.outbox.enqueue_publish(user, HOME_VIEW + user)
        self._outbox.notify()
