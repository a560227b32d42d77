"""Keeping people in the loop of requests that wait: expiry, reminders and
direct messages.

* A request nobody decided on expires (``approvals.expire_after``): its
  message is updated in place to say so and its requester is told.
* The approvers of a waiting request are reminded every
  ``approvals.remind_every``, with one line in the request's thread, never
  a new post in the channel.
* The requester gets a direct message when their deploy needs them (it
  expired, was rejected, was stopped, its approvals went stale, or an
  approval waits on their checklist), succeeds or fails.

What is due is decided by the injectable clock, so tests move time instead of
sleeping; ``run`` only decides how often to look.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from bot.config import DEFAULT_REMIND_EVERY, USER_ID, Config
from bot.deploys.policy import role_holders
from bot.deploys.ports import DeployViews, People
from bot.deploys.workflow import DeployWorkflow
from bot.durations import format_duration
from bot.events import (
    ChecklistBlocked,
    DeployChanged,
    EventBus,
    LocksExpired,
    RequestExpired,
)
from bot.runtime.tasks import BackgroundTasks
from bot.slack.mrkdwn import expired_locks_text, mention, when
from store import Deploy, DeployStatus, StateConflict, Store, stamp

log = logging.getLogger(__name__)

# the states a requester hears of by direct message (see ``_news``)
NEWS_STATES = frozenset({DeployStatus.SUCCEEDED, DeployStatus.FAILED, DeployStatus.REJECTED, DeployStatus.EXPIRED,
                         DeployStatus.ROLLED_BACK, DeployStatus.CANCELLED})
SWEEP_INTERVAL = 30.0  # seconds between two looks for expired and overdue requests


class Nudges:
    def __init__(self, config: Config, store: Store, workflow: DeployWorkflow, views: DeployViews,
                 directory: People, events: EventBus, tasks: BackgroundTasks, clock: Callable[[], datetime]) -> None:
        self.config = config
        self.store = store
        self.workflow = workflow
        self.views = views
        self.events = events
        self.directory = directory
        self.tasks = tasks
        self.clock = clock
        self._loop: asyncio.Task | None = None

    # -- the periodic look --------------------------------------------------------

    def start(self, interval: float = SWEEP_INTERVAL) -> None:
        # its own task, not a background one: it never ends, and tests wait for background work to end
        if self._loop is None:
            self._loop = asyncio.create_task(self._run(interval), name="nudges")

    async def close(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            await asyncio.gather(self._loop, return_exceptions=True)
            self._loop = None

    async def _run(self, interval: float) -> None:
        while True:
            try:
                await self.sweep()
            except Exception:  # noqa: BLE001 — one bad sweep must not end the ones after it
                log.exception("sweeping waiting requests failed; trying again in %.0f s", interval)
            await asyncio.sleep(interval)  # how often to look; what is due is the clock's to say

    async def sweep(self) -> None:
        """Expire the requests whose time is up and remind the approvers of
        those that are due a reminder."""
        now = self.clock()
        self.workflow.expire_locks()
        for deploy in self.store.deploys.in_states((DeployStatus.AWAITING_APPROVAL, DeployStatus.QUEUED)):
            if self.workflow.is_expired(deploy):
                self.workflow.expire(deploy)
            elif self._reminder_due(deploy, now):
                await self.remind(deploy)

    def _reminder_due(self, deploy: Deploy, now: datetime) -> bool:
        approvals = self.config.environment_for(deploy.service, deploy.environment).approvals
        interval = approvals.remind_every if approvals is not None else DEFAULT_REMIND_EVERY
        if interval is None or deploy.message_ts is None or not self.workflow.required_approvals(deploy):
            return False
        last = datetime.fromisoformat(deploy.reminded_at or deploy.requested_at)
        return now >= last + timedelta(seconds=interval)

    async def remind(self, deploy: Deploy) -> None:
        """One line in the request's thread naming who can still approve it:
        the ``approve`` role, and the ``override`` role on a request that
        overrides a freeze, less whoever has already approved."""
        environment = self.config.environment_for(deploy.service, deploy.environment)
        roles = (["approve"] if environment.approvals else []) + (["override"] if deploy.override_reason else [])
        entries = [entry for role in roles for entry in (role_holders(environment, role).entries or ())]
        fresh = self.workflow.fresh_approvals(deploy)
        waiting_on = [entry for entry in dict.fromkeys(entries) if entry not in fresh and entry != deploy.requested_by]
        whom = ", ".join([await self.directory.mention(entry) for entry in waiting_on])
        missing = max(self.workflow.required_approvals(deploy) - len(fresh), 0)
        deploy = self.store.deploys.mark_reminded(deploy.id, waiting_on)  # first: a failed post is not retried every sweep
        if missing:
            need = f"needs {missing} more approval{'s' if missing != 1 else ''} from {whom or 'its approvers'}"
        else:
            need = "has its approvals but waits on its checklist"
        unticked = f" Unticked: {len(deploy.unticked)} checklist item(s)." if deploy.unticked else ""
        self.views.thread(
            deploy, f":bell: Reminder: #{deploy.id} ({deploy.service} {deploy.display_version} to "
                    f"{deploy.environment}) {need}.{unticked} It expires {when(deploy.expires_at)}.")

    # -- reacting to changes --------------------------------------------------------

    def request_expired(self, event: RequestExpired) -> None:
        """Say in the thread that a request expired (its message and the DM follow DeployChanged)."""
        deploy = event.deploy
        self.views.thread(deploy, f":hourglass: Expired: {deploy.status_reason}. "
                                  f"Request it again if it is still wanted.")

    def locks_expired(self, event: LocksExpired) -> None:
        """An expired lock releases itself when Slipway next reads the locks (or sweeps), and says so once."""
        self.views.post(expired_locks_text(list(event.locks)))

    def checklist_blocked(self, event: ChecklistBlocked) -> None:
        """Ask the requester to finish the checklist an approver is waiting on."""
        deploy, approver = event.deploy, event.approver
        if not _person(deploy.requested_by):
            return
        # once per state of the checklist: a double click, or a second approver
        # meeting the same unticked items, does not message the requester again
        unticked = ",".join(str(item.position) for item in deploy.checklist if not item.ticked)
        items = "\n".join(f"• {label}" for label in deploy.unticked)
        with self.store.transaction():  # claimed and queued together: told once, never lost
            if self.store.deploys.claim_notification(deploy.id, f"checklist:{unticked}"):
                self.views.direct(
                    deploy.requested_by,
                    f":ballot_box_with_check: {mention(approver)} wants to give the final approval of your deploy "
                    f"{_name(deploy)}, but its checklist is not done. Tick these in {_link(deploy)}:\n{items}")

    async def reopen_if_stale(self, deploy: Deploy) -> Deploy | None:
        """Just before an approved deploy starts: if its approvals are no longer
        fresh enough to count (e.g. it waited out a restart), it goes back to
        awaiting approval instead of starting. Returns the reopened deploy, or
        None when it may start."""
        required = self.workflow.required_approvals(deploy)
        fresh = self.workflow.fresh_approvals(deploy)
        if deploy.rollback_of is not None or not required or len(fresh) >= required:
            return None
        valid_for = self.workflow.approval_valid_for(deploy)
        reason = (f"its approvals were given more than {format_duration(valid_for)} before it could start; "
                  f"{required - len(fresh)} more needed")
        # waiting again, it gets a lifetime of its own: the one it was requested
        # with may have run out while it waited to start
        lifetime = self.workflow.expire_after(self.config.environment_for(deploy.service, deploy.environment))
        expires_at = stamp(self.clock() + timedelta(seconds=lifetime))
        try:
            with self.store.transaction():
                self.store.deploys.transition(deploy.id, allowed_from=(DeployStatus.APPROVED,),
                                              to=DeployStatus.AWAITING_APPROVAL, actor=None, action="approvals_stale",
                                              reason=reason,
                                              detail={"expires_at": expires_at})
                reopened = self.store.deploys.set_expiry(deploy.id, expires_at)
                self.events.publish(DeployChanged(deploy.id))
                self.views.thread(reopened, f":hourglass: Not started: {reason}. Approve it again to deploy.")
                if _person(deploy.requested_by):
                    self.views.direct(deploy.requested_by, f":hourglass: Your deploy {_name(deploy)} did not start: "
                                                           f"{reason}. See {_link(deploy)}.")
        except StateConflict:
            return None
        return reopened

    def deploy_changed(self, event: DeployChanged) -> None:
        """Tell the requester by direct message when their deploy reached news (see ``_news``)."""
        deploy_id = event.deploy_id
        # called on every change of every deploy: read the whole record only when the state is news
        if self.store.deploys.status_of(deploy_id) not in NEWS_STATES:
            return
        deploy = self.store.deploys.get(deploy_id)
        if deploy.notified_status == deploy.status:
            return  # told already: a later redraw of a finished deploy is no news (the claim below settles races)
        text = self._news(deploy)
        if text is None or not _person(deploy.requested_by):
            return
        with self.store.transaction():  # claimed and queued together: told once, never lost
            if self.store.deploys.claim_notification(deploy.id, deploy.status):
                self.views.direct(deploy.requested_by, text)

    def _news(self, deploy: Deploy) -> str | None:
        """What the requester is told of ``deploy``'s state, or None."""
        name, link = _name(deploy), _link(deploy)
        reason = f": {deploy.status_reason}" if deploy.status_reason else ""
        if deploy.status == DeployStatus.SUCCEEDED:
            return f":large_green_circle: Your deploy {name} succeeded. {link}"
        if deploy.status == DeployStatus.FAILED:
            return f":red_circle: Your deploy {name} failed{reason}. The thread has what the engine said: {link}"
        if deploy.status == DeployStatus.REJECTED:
            return f":no_entry: Your deploy {name} was rejected{reason}. {link}"
        if deploy.status == DeployStatus.EXPIRED:
            again = f"`/deploy {deploy.service} {deploy.display_version} {deploy.environment}`"
            return f":hourglass: Your deploy {name} expired{reason}. If it is still wanted, request it again: {again}"
        if deploy.status == DeployStatus.ROLLED_BACK:
            return f":rewind: Your deploy {name} was rolled back{reason}. {link}"
        if deploy.status == DeployStatus.CANCELLED and not self._cancelled_by_requester(deploy):
            return f":heavy_multiplication_x: Your deploy {name} was cancelled{reason}. {link}"
        return None

    def _cancelled_by_requester(self, deploy: Deploy) -> bool:
        ends = [e for e in self.store.audit.events(deploy.id) if e.action == "cancelled"]
        return bool(ends) and ends[-1].actor == deploy.requested_by


def _person(user: str | None) -> bool:
    """A real Slack user (not "slipway", which starts automatic rollbacks)."""
    return bool(user and USER_ID.match(user))


def _name(deploy: Deploy) -> str:
    return f"#{deploy.id} ({deploy.service} {deploy.display_version} to {deploy.environment})"


def _link(deploy: Deploy) -> str:
    return f"<{deploy.permalink}|Open the deploy message>" if deploy.permalink else "See the deploy channel."
