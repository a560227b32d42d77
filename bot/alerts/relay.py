"""From a monitor's alerts to Slack messages, in one transaction, off the
event loop.

Each alert is stored (a repeat or an HA duplicate lands on the row it
repeats and changes nothing), judged against the threshold rules, tied to
the deploy most likely behind it, and turned into outbox entries: one
message per (deploy or alert group, rule), edited in place as its alerts
change, with a thread line per state change. The Slack work happens later,
in the outbox, so the monitor gets its answer at once and nothing is lost if
Slack is slow, rate-limits, or Slipway restarts.

An alert storm must not hold the event loop that answers Slack's acks. A
delivery is parsed and recorded in the store writer's thread, on a
connection of its own (``store/writer.py``); the door awaits the outcome,
and only once it is committed are ``AlertsRelayed`` and ``SlackWorkQueued``
published, on the loop. What a delivery asks of the database (which of its
alerts are already stored, the deploy behind them, which episode each
message is in, how many threads a service opened lately) is asked once per
delivery, from indexes, not once per alert (:class:`_Delivery`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from bot.alerts import render
from bot.alerts.baseline import fill_baselines
from bot.alerts.model import Alert
from bot.alerts.rules import LEVELS, Judgement, judge
from bot.config import AlertLabels, AlertRule, Config
from bot.deploys.ports import People
from bot.durations import format_duration
from bot.events import AlertsRelayed, DeployChanged, EventBus, SlackWorkQueued
from bot.runtime.tasks import BackgroundTasks
from store import Deploy, DeployStatus, Store, StoredAlert, deploy_message_key, stamp
from store.alerts import episode_base
from store.intents import AUTO_ROLLBACK
from store.writer import StoreWriter

STORM_WINDOW = timedelta(minutes=10)


@dataclass
class Receipt:
    """What one webhook delivery did."""

    received: int = 0
    duplicates: int = 0  # repeats, HA duplicates and stale firings: recorded, not reposted
    stale: int = 0  # of those, firings of an occurrence that had already resolved
    relayed: int = 0  # alerts whose change Slack will show (a post, an edit, a thread line)
    posted: int = 0  # Slack messages queued (new, edits and thread lines)
    page_deploys: list[int] = field(default_factory=list)  # deploys an auto-rollback should undo


RollbackOffer = Callable[[Store, Deploy], tuple[str | None, str | None]]


class AlertRelay:
    """Monitors' deliveries in; the alerts and the Slack work they call for
    recorded together, off the event loop when a writer is given."""

    def __init__(self, config: Config, store: Store, rollback_offer: RollbackOffer,
                 clock: Callable[[], datetime], *, directory: People, events: EventBus,
                 tasks: BackgroundTasks, writer: StoreWriter | None = None) -> None:
        assert config.alerts is not None
        self.config = config
        self.settings = config.alerts
        self.store = store
        self.rollback_offer = rollback_offer  # (store, deploy): what a Rollback button would go back to
        self.clock = clock
        self.directory = directory
        self.events = events  # publishes AlertsRelayed, and SlackWorkQueued when the outbox has work
        self.tasks = tasks
        # Runs each delivery's transaction in a thread on a connection of its
        # own, so a storm never holds the event loop (None: on the loop, on ``store``).
        self.writer = writer

    async def ingest(self, source: str, group_key: str | None, alerts: list[Alert]) -> Receipt:
        """A monitor's delivery, whole: baselines filled from Prometheus where
        a rule says how, the alerts recorded with the Slack work they call for
        (one transaction, in the writer's thread), and, once committed,
        ``AlertsRelayed`` and ``SlackWorkQueued`` told (metrics,
        auto-rollback, the outbox worker)."""
        alerts = await fill_baselines(alerts, self.settings, self.store)
        oncall = await self.oncall_mention()

        def told(receipt: Receipt) -> Receipt:
            self.events.publish(SlackWorkQueued())
            self.events.publish(AlertsRelayed(source, receipt.received, receipt.relayed, receipt.duplicates,
                                              receipt.stale, tuple(receipt.page_deploys)))
            return receipt

        if self.writer is None:
            return told(self.receive(group_key, alerts, oncall))
        recorded = self.writer.submit(lambda store: self.receive(group_key, alerts, oncall, store=store))
        # Told from the loop as soon as it is committed, even if this request
        # is cancelled meanwhile: what is stored is always announced.
        recorded.add_done_callback(lambda done: told(done.result()) if not done.cancelled()
                                   and done.exception() is None else None)
        return await asyncio.shield(recorded)

    async def parse(self, parse: Callable[[bytes, AlertLabels], tuple[str | None, list[Alert]]],
                    body: bytes) -> tuple[str | None, list[Alert]]:
        """``parse(body, alerts.labels)`` (a monitor's format), in the writer's
        thread when there is one: checking and reading a 1000-alert body takes
        tens of milliseconds, which must not hold the event loop. Raises what
        ``parse`` raises (``MalformedPayload``)."""
        if self.writer is None:
            return parse(body, self.settings.labels)
        return await self.writer.run(lambda store: parse(body, self.settings.labels))

    async def oncall_mention(self) -> str | None:
        """How a page notifies the on-call (``alerts.oncall``), e.g. ``<!subteam^S0ONCALL>``."""
        return await self.directory.mention(self.settings.oncall) if self.settings.oncall else None

    async def close(self) -> None:
        """Let the writer finish the deliveries it was given, then stop it."""
        if self.writer is not None:
            await self.writer.close()

    def deploy_changed(self, event: DeployChanged) -> None:
        """Once a deploy is rolled back, the alert messages tied to it stop
        offering to roll it back."""
        if self.store.deploys.status_of(event.deploy_id) == DeployStatus.ROLLED_BACK:
            self.tasks.spawn(self._redraw(event.deploy_id), name=f"redraw-alerts-{event.deploy_id}")

    async def _redraw(self, deploy_id: int) -> None:
        oncall = await self.oncall_mention()
        if self.writer is None:
            queued = self.redraw_for_deploy(deploy_id, oncall)
        else:
            queued = await self.writer.run(lambda store: self.redraw_for_deploy(deploy_id, oncall, store=store))
        if queued:
            self.events.publish(SlackWorkQueued())

    def receive(self, group_key: str | None, alerts: list[Alert], oncall: str | None = None, *,
                store: Store | None = None) -> Receipt:
        """Record ``alerts`` and queue what Slack should see, atomically, on
        ``store`` (the writer thread's; by default the relay's own).

        Each message is rendered once per delivery, however many of its
        alerts changed (a 1000-alert group is one edit and one thread line,
        not a thousand). ``oncall`` is the mention a page carries (resolved by
        the caller, e.g. ``<!subteam^S0ONCALL>``).
        """
        return _Delivery(self, store or self.store, oncall).record(group_key, alerts)

    def redraw_for_deploy(self, deploy_id: int, oncall: str | None = None, *, store: Store | None = None) -> int:
        """Queue an edit of every posted alert message tied to ``deploy_id``,
        e.g. once it is rolled back, so none keeps offering a Rollback that no
        longer applies. Returns how many edits were queued."""
        return _Delivery(self, store or self.store, oncall).redraw_for_deploy(deploy_id)


@dataclass
class _Prepared:
    """An alert, and what is known of it before any stored state is read."""

    alert: Alert
    judgement: Judgement  # by the rules (a resolution then takes the level it had)
    starts_at: str | None
    ends_at: str | None
    payload: str  # its labels and annotations, as the store keeps them (JSON)


class _Delivery:
    """One delivery's work on one store, in one transaction, with what it has
    looked up so far.

    The transaction holds SQLite's write lock from its start (``BEGIN
    IMMEDIATE``), so nobody else changes what was read: a fact is asked of
    the database once per delivery (the deploy behind a service's alerts,
    the episode a message is in, how many threads a service opened) instead
    of once per alert, and kept up to date here as this delivery's own
    writes change it.
    """

    def __init__(self, relay: AlertRelay, store: Store, oncall: str | None) -> None:
        self.relay = relay
        self.settings = relay.settings
        self.store = store
        self.oncall = oncall
        self._known: dict[tuple[str, str, str | None], StoredAlert | None] = {}  # (source, fingerprint, start)
        self._deploys: dict[int, Deploy] = {}
        self._behind: dict[tuple[str, str, str], Deploy | None] = {}
        self._episodes: dict[str, tuple[str, bool] | None] = {}  # base -> (newest key, any alert firing)
        self._threads: dict[str | None, int] = {}  # service -> threads of its own opened lately
        self._offers: dict[int, tuple[str | None, str | None]] = {}
        self._stamps: dict[datetime | None, str | None] = {}
        self._now = ""  # the moment the delivery is recorded at (set once its transaction has begun)
        self._events: list[tuple[object, ...]] = []  # its alert_events rows, written together

    def record(self, group_key: str | None, alerts: list[Alert]) -> Receipt:
        receipt = Receipt(received=len(alerts))
        changed: dict[str, list[tuple[StoredAlert, str, Judgement]]] = {}
        deploys: dict[str, Deploy | None] = {}
        # What needs no stored state is worked out before the transaction: the
        # write lock (which the event loop's connection may be waiting for) is
        # held only for what does.
        prepared = [self._prepare(alert) for alert in alerts]
        with self.store.transaction():
            self._now = self.store.database.now()
            self._look_up(prepared)
            for alert in prepared:
                stored, change, judgement, deploy = self._record(alert, group_key)
                if change == "duplicate":
                    receipt.duplicates += 1
                    receipt.stale += stored.status != alert.alert.status  # a stale firing finds the row resolved
                    continue
                changed.setdefault(stored.message_key, []).append((stored, change, judgement))
                deploys[stored.message_key] = deploy
            self.store.alerts.record_events(self._events)
            for key, changes in changed.items():
                self._show(key, changes, deploys[key], receipt)
        return receipt

    def _prepare(self, alert: Alert) -> _Prepared:
        return _Prepared(alert, judge(alert, self.settings.rules), self._iso(alert.starts_at),
                         self._iso(alert.ends_at),
                         json.dumps({"labels": alert.labels, "annotations": alert.annotations}, default=str))

    def _iso(self, moment: datetime | None) -> str | None:
        """``moment`` as the store writes it (a delivery's alerts mostly share their times)."""
        if moment not in self._stamps:
            self._stamps[moment] = _iso(moment)
        return self._stamps[moment]

    def _look_up(self, prepared: list[_Prepared]) -> None:
        """Every occurrence the delivery names, read in one query per source.
        (A generic sender's alert may be a repeat of one still firing under
        another start: those are looked up one by one, in :meth:`_existing`.)"""
        by_source: dict[str, set[tuple[str, str | None]]] = {}
        for alert in prepared:
            if alert.alert.source != "generic":
                by_source.setdefault(alert.alert.source, set()).add((alert.alert.fingerprint, alert.starts_at))
        for source, occurrences in by_source.items():
            found = self.store.alerts.find_many(source, occurrences)
            for fingerprint, starts_at in occurrences:
                self._known[(source, fingerprint, starts_at)] = found.get((fingerprint, starts_at))

    def _existing(self, source: str, fingerprint: str, starts_at: str | None) -> StoredAlert | None:
        known = (source, fingerprint, starts_at)
        if known not in self._known:
            self._known[known] = self.store.alerts.find(source, fingerprint, starts_at)
        return self._known[known]

    def _record(self, prepared: _Prepared, group_key: str | None) -> tuple[StoredAlert, str, Judgement, Deploy | None]:
        """Store an alert; how it changed what is known (``duplicate``: it
        changed nothing, and the row it repeats is returned)."""
        alert, judgement, starts_at = prepared.alert, prepared.judgement, prepared.starts_at
        if alert.source == "generic" and (open_alert := self.store.alerts.latest_firing(alert.source,
                                                                                        alert.fingerprint)):
            # a generic sender may leave out started_at (it defaults to now):
            # a repeat or a resolve of an alert still firing is that alert
            starts_at = open_alert.starts_at
        existing = self._existing(alert.source, alert.fingerprint, starts_at)
        if existing is not None and alert.status == "resolved":
            # a resolution ends what was shown: it carries no numbers of its own,
            # and an alert that was never loud must not appear now as "resolved"
            judgement = Judgement(existing.level, judgement.rule_key, None, "resolved")
        deploy = self._deploy_behind(alert) if existing is None else (
            self._deploy(existing.deploy_id) if existing.deploy_id else None)
        key = existing.message_key if existing is not None and existing.message_key else self._message_key(
            alert, group_key, judgement, deploy)
        fields = {
            "source": alert.source, "fingerprint": alert.fingerprint, "group_key": group_key or alert.group_key,
            "status": alert.status, "name": alert.name, "service": alert.service,
            "environment": alert.environment, "metric": alert.metric, "value": alert.value,
            "baseline": alert.baseline, "severity": alert.severity, "level": judgement.level,
            "starts_at": starts_at, "ends_at": prepared.ends_at, "deploy_id": deploy.id if deploy else None,
            "message_key": key, "summary": alert.summary, "url": alert.url,
        }
        stored, change = self.store.alerts.upsert(fields, prepared.payload, levels=LEVELS, existing=existing,
                                                  at=self._now, events=self._events)
        if change != "duplicate":
            self._known[(alert.source, alert.fingerprint, starts_at)] = stored
            self._episode_written(stored, new=existing is None)
        return stored, change, judgement, deploy

    def _deploy(self, deploy_id: int) -> Deploy:
        if deploy_id not in self._deploys:
            self._deploys[deploy_id] = self.store.deploys.get(deploy_id)
        return self._deploys[deploy_id]

    def _deploy_behind(self, alert: Alert) -> Deploy | None:
        if not (alert.service and alert.environment):
            return None
        moment = self._iso(alert.starts_at) or self._now
        where = (alert.service, alert.environment, moment)
        if where not in self._behind:
            self._behind[where] = self.store.deploys.behind(alert.service, alert.environment, moment,
                                                            self.settings.correlation_window)
        return self._behind[where]

    def _message_key(self, alert: Alert, group_key: str | None, judgement: Judgement, deploy: Deploy | None) -> str:
        """One message per (deploy or alert group, rule) and episode: once
        every alert on a message has resolved, the problem's next occurrence
        opens a new message instead of editing one far up the channel."""
        if deploy is not None:
            base = f"alert-deploy-{deploy.id}-{judgement.rule_key}"
        else:
            group = hashlib.sha256(f"{alert.source}|{group_key or alert.fingerprint}".encode()).hexdigest()[:16]
            base = f"alert-group-{group}-{judgement.rule_key}"
        if base not in self._episodes:
            self._episodes[base] = self.store.alerts.latest_episode(base)
        episode = self._episodes[base]
        if episode is None:
            return f"{base}-1"
        key, firing = episode
        if firing:
            return key
        return f"{base}-{int(key.rsplit('-', 1)[1]) + 1}"

    def _episode_written(self, stored: StoredAlert, *, new: bool) -> None:
        """Keep the episodes read so far true after ``stored`` was written."""
        base = episode_base(stored.message_key)
        if base is None:
            return
        if not new:  # a status changed: whether the episode still fires is asked again
            self._episodes.pop(base, None)
            return
        before = self._episodes.get(base)
        firing = stored.status == "firing" or (before is not None and before[0] == stored.message_key and before[1])
        self._episodes[base] = (stored.message_key, firing)

    def auto_rollback_wanted(self, stored: StoredAlert, change: str, deploy: Deploy | None) -> bool:
        """A page-level breach tied, within the window, to a deploy on an
        environment with auto_rollback — and not to a rollback (rolling a
        rollback back would walk further back each time), nor to a deploy
        already undone."""
        if deploy is None or stored.status != "firing" or stored.level != "page" or change not in ("new", "louder"):
            return False
        if not self.relay.config.environment(deploy.environment).auto_rollback:
            return False
        deploy = self._deploy(deploy.id)
        if deploy.rollback_of is None and deploy.status in (DeployStatus.DEPLOYING, DeployStatus.VERIFYING,
                                                            DeployStatus.BAKING):
            rollout = self.store.rollouts.get(deploy.id)  # a staged rollout in progress is aborted instead
            return rollout is not None and rollout.ended_at is None
        if deploy.rollback_of is not None or deploy.status not in (DeployStatus.SUCCEEDED, DeployStatus.FAILED):
            return False
        if deploy.status == DeployStatus.FAILED and (rollout := self.store.rollouts.get(deploy.id)) is not None \
                and rollout.outcome == "aborted":
            return False  # aborted before full traffic: the stable version serves, nothing to roll back
        if deploy.finished_at and stored.starts_at:
            gap = (datetime.fromisoformat(stored.starts_at) - datetime.fromisoformat(deploy.finished_at))
            return gap.total_seconds() <= self.settings.correlation_window
        return True

    def redraw_for_deploy(self, deploy_id: int) -> int:
        queued = 0
        with self.store.transaction():
            keys = self.store.alerts.message_keys_of_deploy(deploy_id)
            if not keys:
                return 0
            deploy = self._deploy(deploy_id)
            for key in keys:
                shown = self.store.alerts.with_message(key)
                if not shown or not self.store.outbox.has_message(key):
                    continue
                text, blocks = self._render(_visible(shown), deploy)
                self.store.outbox.enqueue_update(key, text, blocks)
                queued += 1
        return queued

    # -- what Slack sees ---------------------------------------------------------------

    def _show(self, key: str, changes: list[tuple[StoredAlert, str, Judgement]], deploy: Deploy | None,
              receipt: Receipt) -> None:
        shown = self.store.alerts.with_message(key)
        loud_shown = [a for a in shown if a.level != "quiet"]
        posted = self.store.outbox.has_message(key)
        if not loud_shown and not posted:
            return  # below every threshold: recorded, not posted
        receipt.relayed += len(changes)
        text, blocks = self._render(_visible(shown), deploy)
        first = changes[0][0]
        channel, thread_key = self._where(first, deploy)
        for stored, change, _ in changes:
            if self.auto_rollback_wanted(stored, change, deploy) and deploy.id not in receipt.page_deploys:
                receipt.page_deploys.append(deploy.id)
                self.store.intents.add(AUTO_ROLLBACK, deploy.id)  # with the alert: a crash loses neither
        if not posted:
            self.store.outbox.enqueue_post(key, channel, text, blocks, thread_key=thread_key)
            receipt.posted += 1
            return
        self.store.outbox.enqueue_update(key, text, blocks)
        receipt.posted += 1
        lines = [render.change_line(stored, change, judgement.reason)
                 for stored, change, judgement in changes if change != "changed" and stored.level != "quiet"]
        if not lines:
            return
        if len(lines) > 5:
            lines = lines[:5] + [f"…and {len(lines) - 5} more change(s) to this alert group"]
        if self.oncall and any(stored.level == "page" and change == "louder" for stored, change, _ in changes):
            lines.append(f"Paging {self.oncall}.")
        line_thread = deploy_message_key(deploy.id) if deploy is not None else key
        line_key = f"{key}-line-{self.store.outbox.fresh_number()}"
        self.store.outbox.enqueue_post(line_key, channel, "\n".join(lines), thread_key=line_thread)
        receipt.posted += 1

    def _where(self, stored: StoredAlert, deploy: Deploy | None) -> tuple[str, str | None]:
        """A deploy's alerts go into its thread (wherever its message is); others
        open their own thread in the service's channel (``services.<name>.channel``),
        else the alerts channel, or, in a storm, go into the service's digest thread there."""
        if deploy is not None and deploy.channel:
            return deploy.channel, deploy_message_key(deploy.id)
        service = self.relay.config.services.get(stored.service or "")
        channel = service.channel if service is not None and service.channel else self.settings.channel
        now = self.relay.clock()
        if stored.service not in self._threads:  # this delivery adds no alert from here on: asked once
            self._threads[stored.service] = self.store.alerts.recent_threads(stored.service,
                                                                             stamp(now - STORM_WINDOW))
        threads = self._threads[stored.service]
        if threads <= self.settings.storm_threshold:
            return channel, None
        bucket = int(now.timestamp() // STORM_WINDOW.total_seconds())
        digest = f"digest-{stored.service or 'unlabelled'}-{bucket}"
        text = render.digest_text(stored.service, threads - self.settings.storm_threshold)
        if self.store.outbox.has_message(digest):
            self.store.outbox.enqueue_update(digest, text)
        else:
            self.store.outbox.enqueue_post(digest, channel, text)
        return channel, digest

    def _render(self, alerts: list[StoredAlert], deploy: Deploy | None) -> tuple[str, list[dict]]:
        reasons = _Reasons(alerts, self.settings.rules)
        rollback_to = None
        tie = None
        if deploy is not None:
            deploy = self._deploy(deploy.id)
            if deploy.rollback_of is None:  # an alert after a rollback is no reason to walk further back
                if deploy.id not in self._offers:
                    self._offers[deploy.id] = self.relay.rollback_offer(self.store, deploy)
                rollback_to, _ = self._offers[deploy.id]
            tie = _tie_text(alerts[0], deploy)
        blocks = render.alert_blocks(alerts, reasons=reasons, tie=tie, deploy=deploy, rollback_to=rollback_to,
                                     oncall=self.oncall)
        return render.fallback_text(alerts), blocks


class _Reasons(Mapping[int, str]):
    """Why each alert is as loud as it is, by alert id, worked out when asked
    (a message lists ten of its alerts, however many it has)."""

    def __init__(self, alerts: list[StoredAlert], rules: list[AlertRule]) -> None:
        self._alerts = {alert.id: alert for alert in alerts}
        self._rules = rules

    def __getitem__(self, alert_id: int) -> str:
        return judge(_as_alert(self._alerts[alert_id]), self._rules).reason

    def __iter__(self) -> Iterator[int]:
        return iter(self._alerts)

    def __len__(self) -> int:
        return len(self._alerts)


def _tie_text(alert: StoredAlert, deploy: Deploy) -> str:
    """Why the alert was tied to this deploy, in words."""
    what = f"{deploy.service} {deploy.display_version}"
    if alert.starts_at and deploy.finished_at and alert.starts_at >= deploy.finished_at:
        gap = (datetime.fromisoformat(alert.starts_at) - datetime.fromisoformat(deploy.finished_at)).total_seconds()
        # a deploy later rolled back did reach it (its finished_at is still when it went live)
        reached = "reached" if deploy.status in (DeployStatus.SUCCEEDED, DeployStatus.ROLLED_BACK) else "finished on"
        return f"Started {format_duration(gap)} after {what} {reached} {deploy.environment} (deploy #{deploy.id})."
    return f"Started during the deploy of {what} to {deploy.environment} (deploy #{deploy.id})."


def _as_alert(stored: StoredAlert) -> Alert:
    return Alert(source=stored.source, fingerprint=stored.fingerprint, status=stored.status, name=stored.name,
                 service=stored.service, environment=stored.environment, metric=stored.metric, value=stored.value,
                 baseline=stored.baseline, severity=stored.severity, summary=stored.summary)


def _visible(shown: list[StoredAlert]) -> list[StoredAlert]:
    """What a message lists of its alerts: the loud ones and the resolved
    (all of them, if every one is quiet)."""
    return [a for a in shown if a.level != "quiet" or a.status == "resolved"] or shown


def _iso(moment: datetime | None) -> str | None:
    return stamp(moment) if moment else None
