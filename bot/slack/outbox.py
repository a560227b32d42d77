"""Delivering the durable outbox (store/outbox.py) to Slack.

One worker task sends what callers queued, oldest first within each
channel, at most one call per ``interval`` seconds per channel (Slack's
posting limit is about one message per second per channel), taking the
channels in turns so a busy one does not starve the others.

- A 429 makes that channel wait the Retry-After Slack gave, then the same
  item is tried again: a rate limit never drops a message.
- Any other failure is retried with exponential backoff (1 s, 2 s, 4 s ...
  up to ``max_backoff``), recorded on the row. Errors that cannot heal by
  themselves (a missing channel, invalid blocks ...) are given up after
  three attempts: the row is kept as ``failed`` with the error, and logged.
- Items left in flight by a previous run are sent again when a new Outbox
  starts on the same database: nothing is lost across a restart.
  Delivery is at-least-once: ``chat.postMessage`` has no idempotency key, so
  a crash that lands between Slack's answer and its recording here repeats
  that one post. Nothing else is ever sent twice.
- An item may name a *view* (``deploy:12``, ``home:U0ALICE``) instead of
  carrying its text: it is drawn by the drawer registered for its kind when
  it is sent, from the state stored then, so a message edited after a
  restart shows the truth, and coalesced edits send only the latest.
- What happened is told on the event bus: ``MessagePosted`` (with the
  message's permalink, asked of Slack once, when the item named a view) and
  ``MessageRefused`` (after the outbox has settled the item's next attempt).

The worker owns every retry and wait. slack_sdk's own retry handlers for
HTTP answers (the app's client has its rate-limit handler, which sleeps
inside the call) would hold the single worker, and with it every channel,
for one channel's Retry-After, out of the outbox's sight; so the Outbox
talks to Slack through a copy of the client it is given, with only the
connection-reset retry handler kept (see :func:`outbox_client`).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from slack_sdk.http_retry.builtin_async_handlers import AsyncConnectionErrorRetryHandler
from slack_sdk.web.async_client import AsyncWebClient

from bot.events import EventBus, MessagePosted, MessageRefused
from bot.runtime.logs import deploy_context
from bot.runtime.metrics import Metrics
from bot.runtime.tasks import AckFirst
from bot.slack.failures import SlackFailure, failure_of
from store import Delivery, OutboxItem, Store
from store.outbox import DM, FAILED, PERMALINK, POST, PUBLISH, SENT, deploy_of_key

# A view's drawer: the arguments of the Slack call that shows it now
# (``text``/``blocks``, or ``view`` for App Home), or None: nothing to show.
Drawer = Callable[[str], "dict[str, Any] | None"]

log = logging.getLogger(__name__)

PERMALINK_PLACEHOLDER = re.compile(r"<\{permalink:([^}|>]+)\}\|([^>]*)>")  # see Outbox._linked

# Errors a retry cannot fix by itself. Still tried PERMANENT_AFTER times in
# all (a channel being created, the bot being invited, are a moment away),
# then the item is failed and kept. Everything else (5xx, internal_error,
# timeouts, and auth errors a person can fix) is retried for as long as it
# takes: an alert is worth more late than never.
PERMANENT_ERRORS = frozenset({
    "invalid_blocks", "invalid_blocks_format", "invalid_attachments", "too_many_attachments",
    "msg_too_long", "no_text", "invalid_arguments",
    "message_not_found", "cant_update_message", "edit_window_closed",
})
PERMANENT_AFTER = 3
# A channel a person must fix (invite the bot, unarchive it): retried with
# the capped backoff for about half an hour, so the alert waits for them.
CHANNEL_ERRORS = frozenset({"channel_not_found", "not_in_channel", "is_archived", "restricted_action"})
CHANNEL_ERRORS_AFTER = 40
# Any other error Slack names is retried this many times, then failed and
# kept: an unknown refusal must not hold up the rest of its channel for ever.
# (HTTP errors, timeouts and lost connections are retried without limit.)
UNKNOWN_ERRORS_AFTER = 40
# Errors a person has to fix: retried, but logged at ERROR.
NEEDS_A_PERSON = frozenset({"invalid_auth", "not_authed", "token_revoked", "token_expired",
                            "account_inactive", "missing_scope"})

Sleep = Callable[[float], Awaitable[Any]]


def outbox_client(client: AsyncWebClient) -> AsyncWebClient:
    """A copy of ``client`` (same token, URL and aiohttp session) that only
    retries a reset connection by itself and leaves 429s and server errors
    to the outbox."""
    own = copy.copy(client)
    own.retry_handlers = [h for h in client.retry_handlers if isinstance(h, AsyncConnectionErrorRetryHandler)]
    return own


class Outbox:
    """The worker that delivers queued Slack messages.

    ``sleep`` and ``monotonic`` are injectable so pacing and backoff can be
    tested without waiting; the store's clock only dates the rows.
    """

    def __init__(self, store: Store, client: AsyncWebClient, *, interval: float = 1.0,
                 sleep: Sleep = asyncio.sleep, monotonic: Callable[[], float] = time.monotonic,
                 max_backoff: float = 60.0, backoff: float = 1.0, idle_poll: float = 5.0,
                 grace: float = 10.0, metrics: Metrics | None = None, drawers: dict[str, Drawer] | None = None,
                 events: EventBus | None = None, ack_first: AckFirst | None = None) -> None:
        self.store = store
        self.client = outbox_client(client)
        self.interval = interval
        self.max_backoff = max_backoff
        self.backoff = backoff
        self.idle_poll = idle_poll  # also picks up items queued without notify()
        self.grace = grace  # how long close() lets a call in flight finish
        self.metrics = metrics
        self.drawers = drawers or {}
        self.events = events or EventBus()
        self.ack_first = ack_first  # Slack hears the ack of a request before the messages it causes
        self._dm_channels: dict[str, str] = {}  # user -> their direct-message channel with the bot
        self._sleep = sleep
        self._monotonic = monotonic
        self._last_call: dict[str, float] = {}
        self._retry_at: dict[str, float] = {}
        self._turns: dict[str, int] = {}
        self._turn = itertools.count()
        self._wake = asyncio.Event()
        self._progress = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._in_call = False
        self._quiet = False  # nothing can be sent soon (all sent or failed, or waiting out retries)
        self._backing_off = False
        # wait_settled's callers, by the key of the post each waits for: woken when
        # an item of that key has been tried (and all of them when the worker goes quiet)
        self._settle_waiters: dict[str, set[asyncio.Event]] = {}
        # whether a waiting edit may have become dead since fail_dead_updates last ran
        self._dead_check = True

    # -- life cycle -----------------------------------------------------------------

    def start(self) -> None:
        """Start delivering (what earlier runs left pending first)."""
        if self._task is None or self._task.done():
            self._closing = False
            self._task = asyncio.create_task(self._run(), name="slack-outbox")

    def notify(self) -> None:
        """Wake the worker: something was just queued."""
        self._quiet = False
        self._dead_check = True  # it may be an edit of a post that failed for good
        self._wake.set()

    async def wait_quiet(self, timeout: float = 10.0) -> None:
        """Wait until nothing can be sent right now: everything queued is sent,
        failed, or waiting for a pace or a retry (tests; a graceful stop).

        Raises:
            TimeoutError: still busy after ``timeout`` seconds.
        """
        if self._task is None or self._task.done():
            return
        async with self._progress:
            await asyncio.wait_for(self._progress.wait_for(lambda: self._quiet), timeout)

    async def close(self) -> None:
        """Stop the worker. A Slack call in flight is let finish (up to
        ``grace`` seconds) and recorded, so a restart does not send it twice."""
        task, self._task = self._task, None
        if task is None:
            return
        self._closing = True
        self._wake.set()
        if not self._in_call:
            task.cancel()
        done, _ = await asyncio.wait({task}, timeout=self.grace)
        if not done:
            task.cancel()
            await asyncio.wait({task})
        if not task.cancelled() and task.exception() is not None:
            log.error("outbox worker failed", exc_info=task.exception())

    async def wait_settled(self, key: str, timeout: float, until: Callable[[], bool] | None = None) -> str | None:
        """Wait up to ``timeout`` seconds for the post known as ``key`` to be
        sent or given up (and ``until()``, if given, to hold); its state then
        (``pending`` or ``sending`` when time ran out; None: never queued).

        Checked when the worker has tried an item of ``key`` and whenever it
        goes quiet, not after every delivery: during a burst, re-checking every
        waiting request after each step cost as many queries as waiters
        (60,200 checks for 400 ``/deploy`` at 50 concurrent, bench/ack_latency.py).
        """
        def settled() -> bool:
            return self.store.outbox.post_state(key) in (SENT, FAILED) and (until is None or until())

        self.notify()
        if not settled():
            woken = asyncio.Event()
            self._settle_waiters.setdefault(key, set()).add(woken)
            try:
                async with asyncio.timeout(timeout):
                    while True:
                        await woken.wait()
                        woken.clear()
                        if settled():
                            break
            except TimeoutError:
                pass
            finally:
                waiters = self._settle_waiters.get(key)
                if waiters is not None:
                    waiters.discard(woken)
                    if not waiters:
                        del self._settle_waiters[key]
        return self.store.outbox.post_state(key)

    def _wake_settled(self, key: str | None = None) -> None:
        """Wake the wait_settled callers waiting for ``key`` (None: all of them)."""
        if key is None:
            for waiters in self._settle_waiters.values():
                for woken in waiters:
                    woken.set()
        elif (waiters := self._settle_waiters.get(key)) is not None:
            for woken in waiters:
                woken.set()

    async def drain(self, timeout: float = 10.0) -> None:
        """Wait until nothing is left to send (everything sent or failed).

        Raises:
            RuntimeError: the worker is not running.
            TimeoutError: items are still waiting after ``timeout`` seconds.
        """
        if self._task is None or self._task.done():
            raise RuntimeError("the outbox is not running")
        self.notify()

        async def settled() -> None:
            async with self._progress:
                await self._progress.wait_for(lambda: self.store.outbox.pending_count() == 0)

        await asyncio.wait_for(settled(), timeout)

    # -- the worker -----------------------------------------------------------------

    async def _run(self) -> None:
        resumed = False
        while not self._closing:
            self._wake.clear()  # before reading: a notify() from here on is not missed
            try:
                if not resumed:
                    self._resume()
                    resumed = True
                wait = await self._step()
            except Exception:
                log.exception("outbox: delivering failed; trying again in %ss", self.backoff)
                self._release_claims()
                self._dead_check = True
                self._wake_settled()
                wait = self.backoff
            async with self._progress:
                self._quiet = (wait is None or (wait > 0 and self._backing_off)) and not self._wake.is_set()
                self._progress.notify_all()
            if self._quiet:
                self._wake_settled()  # whatever else they wait for (``until``) has had its chance
            if self._closing:
                break
            if wait is None:
                await self._idle()
            elif wait > 0:
                await self._pause(wait)

    def _release_claims(self) -> None:
        try:
            self.store.outbox.requeue_interrupted()
        except Exception:
            log.exception("outbox: could not put an item in flight back in the queue")

    def _resume(self) -> None:
        if interrupted := self.store.outbox.requeue_interrupted():
            log.warning("outbox: %d item(s) were in flight when Slipway stopped; sending them again", interrupted)
        self._fail_dead_updates()
        now = self._monotonic()
        for channel, wait in self.store.outbox.retry_waits().items():
            self._retry_at[channel] = now + min(wait, self.max_backoff)

    async def _step(self) -> float | None:
        """Send one item if a channel is ready; else how long until one is
        (None: nothing is waiting)."""
        deliveries = self.store.outbox.next_deliveries()
        now = self._monotonic()
        ready = [d for d in deliveries if self._ready_at(d.item.channel) <= now]
        # Edits of a message that will never be posted are failed once nothing
        # can be sent right now, and only if something was queued or failed since
        # the last look: not before every delivery (they hold nothing up meanwhile;
        # next_deliveries never offers them).
        if not ready and self._dead_check and self._fail_dead_updates():
            return 0
        if not deliveries:
            return None
        if not ready:
            # only waiting out retries (not the pace between calls): nothing to send soon
            self._backing_off = all(self._retry_at.get(d.item.channel, -math.inf) > now for d in deliveries)
            return min(self._ready_at(d.item.channel) for d in deliveries) - now
        # Round robin: the channel served longest ago goes next.
        await self._deliver(min(ready, key=lambda d: self._turns.get(d.item.channel, -1)))
        return 0

    def _fail_dead_updates(self) -> int:
        self._dead_check = False
        dead = self.store.outbox.fail_dead_updates()
        for item in dead:
            log.error("outbox: gave up editing %r in %s: %s", item.message_key, item.channel, item.last_error)
        return len(dead)

    def _ready_at(self, channel: str) -> float:
        paced = self._last_call.get(channel, -math.inf) + self.interval
        return max(paced, self._retry_at.get(channel, -math.inf))

    async def _idle(self) -> None:
        try:
            await asyncio.wait_for(self._wake.wait(), self.idle_poll)
        except TimeoutError:
            self._dead_check = True  # items queued without notify() (another process)

    async def _pause(self, seconds: float) -> None:
        """Sleep ``seconds``, or less if notify() brings new work."""
        sleeper = asyncio.ensure_future(self._sleep(seconds))
        waker = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            waker.cancel()

    async def _deliver(self, delivery: Delivery) -> None:
        with deploy_context(deploy_of_key(delivery.item.message_key)):  # its log lines name the deploy
            await self._deliver_item(delivery)

    async def _deliver_item(self, delivery: Delivery) -> None:
        item = delivery.item
        if not self.store.outbox.claim(item.id):
            return
        self._last_call[item.channel] = self._monotonic()
        self._turns[item.channel] = next(self._turn)
        self._in_call = True
        try:
            if self.ack_first is not None:
                await self.ack_first.wait_turn()
            response = await self._call(delivery)
        except asyncio.CancelledError:
            # close() ran out of patience: back in the queue (or, if even that
            # fails, left in flight for the next start to requeue).
            with contextlib.suppress(Exception):
                self.store.outbox.mark_retry(item.id, 0, "interrupted by shutdown", count_attempt=False)
            raise
        except Exception as error:  # noqa: BLE001 — every shape a Slack call can fail in, and bugs of ours
            failure = failure_of(error)
            if failure is None:  # a bug of ours must not silently stall a message
                log.exception("outbox: unexpected error sending %r", item.message_key)
                self._retry(item, f"{type(error).__name__}: {error}")
            elif failure.status is None and failure.code is None:  # no answer at all: connection, timeout
                self._retry(item, failure.detail)
            else:
                self._slack_refused(item, failure)
            if failure is not None:
                self.events.publish(MessageRefused(item.message_key, item.view, failure.code, failure.detail))
            self._dead_check = True  # a post may have failed for good: its waiting edits never will go
        else:
            await self._sent(delivery, response)
        finally:
            self._in_call = False
            self._wake_settled(item.message_key)

    async def _sent(self, delivery: Delivery, response: Any) -> None:
        item = delivery.item
        if item.op in (DM, PUBLISH):
            self.store.outbox.mark_sent(item.id)
            return
        # Settled and told in one transaction (subscribers join it: the deploy
        # learns where its message is, or its permalink): a kill between the
        # two would leave the item sent and what it was for never recorded.
        if item.op == PERMALINK:  # a convenience: the message stood without it meanwhile
            with self.store.transaction():
                self.store.outbox.mark_sent(item.id)
                self.store.outbox.remember_permalink(item.message_key, response["permalink"])
                self.events.publish(MessagePosted(item.message_key, item.view, delivery.slack_channel, delivery.ts,
                                                  response["permalink"]))
            return
        channel, ts = response.get("channel") or delivery.slack_channel, response.get("ts")
        with self.store.transaction():
            self.store.outbox.mark_sent(item.id, channel=channel, ts=ts)
            if item.op == POST and item.view is not None and ts is not None:
                self.store.outbox.enqueue_permalink(item.message_key, item.view)
                self.events.publish(MessagePosted(item.message_key, item.view, channel, ts, None))

    def _drawn(self, item: OutboxItem) -> dict[str, Any] | None:
        """The Slack arguments that show ``item``: its view drawn now, or its stored text and blocks."""
        if item.view is None:
            blocks = {"blocks": item.blocks} if item.blocks is not None else {}
            return {"text": self._linked(item.text), **blocks}
        kind, _, argument = item.view.partition(":")
        return self.drawers[kind](argument)

    def _linked(self, text: str) -> str:
        """Fill ``<{permalink:KEY}|label>`` with the permalink of the message
        known as KEY, or leave the bare label when it has none (yet)."""
        def link(match: re.Match[str]) -> str:
            permalink = self.store.outbox.permalink(match.group(1))
            return f"<{permalink}|{match.group(2)}>" if permalink else match.group(2)

        return PERMALINK_PLACEHOLDER.sub(link, text)

    async def _call(self, delivery: Delivery) -> Any:
        item = delivery.item
        if item.op == PERMALINK:
            return await self.client.chat_getPermalink(channel=delivery.slack_channel, message_ts=delivery.ts)
        drawn = self._drawn(item)
        if drawn is None:  # the view has nothing to show (any more): nothing to send
            return {}
        if item.op == PUBLISH:
            return await self.client.views_publish(user_id=item.channel, **drawn)
        if item.op == DM:
            if item.channel not in self._dm_channels:  # a person's DM channel never changes: one open each
                opened = await self.client.conversations_open(users=item.channel)
                self._dm_channels[item.channel] = opened["channel"]["id"]
            return await self.client.chat_postMessage(channel=self._dm_channels[item.channel], unfurl_links=False,
                                                      **drawn)
        if item.op == POST:
            if delivery.orphaned:
                log.warning("outbox: %r replies to %r, which will never be posted; posting it to %s instead",
                            item.message_key, item.thread_key, item.channel)
            thread = {"thread_ts": delivery.ts} if delivery.ts else {}
            return await self.client.chat_postMessage(channel=item.channel, unfurl_links=False, **drawn, **thread)
        return await self.client.chat_update(channel=delivery.slack_channel, ts=delivery.ts, **drawn)

    # -- failures ---------------------------------------------------------------------

    def _slack_refused(self, item: OutboxItem, failure: SlackFailure) -> None:
        status, code, retry_after = failure.status, failure.code, failure.retry_after
        if failure.rate_limited:
            wait = 1.0 if retry_after is None else retry_after
            self._retry_at[item.channel] = self._monotonic() + wait
            self.store.outbox.mark_retry(item.id, wait, f"ratelimited (Retry-After {wait:g}s)", count_attempt=False)
            if self.metrics is not None:
                self.metrics.outbox_rate_limited.inc()
            log.warning("outbox: Slack rate-limited %s; waiting %gs", item.channel, wait)
            return
        reason = code or f"HTTP {status}"
        limit = (PERMANENT_AFTER if code in PERMANENT_ERRORS else CHANNEL_ERRORS_AFTER if code in CHANNEL_ERRORS
                 else None if code is None or code in NEEDS_A_PERSON or (status or 0) >= 500
                 else UNKNOWN_ERRORS_AFTER)
        if limit is not None and item.attempts + 1 >= limit:
            self.store.outbox.mark_failed(item.id, reason, count_attempt=True)
            log.error("outbox: gave up on %s of %r in %s after %d attempts: %s",
                      item.op, item.message_key, item.channel, item.attempts + 1, reason)
            return
        self._retry(item, reason,
                    level=logging.ERROR if code in NEEDS_A_PERSON or code in CHANNEL_ERRORS else logging.WARNING)

    def _retry(self, item: OutboxItem, reason: str, level: int = logging.WARNING) -> None:
        attempts = item.attempts + 1
        wait = min(self.max_backoff, self.backoff * 2 ** (attempts - 1))
        self._retry_at[item.channel] = self._monotonic() + wait
        self.store.outbox.mark_retry(item.id, wait, reason)
        log.log(level, "outbox: %s of %r in %s failed (attempt %d): %s; retrying in %gs",
                item.op, item.message_key, item.channel, attempts, reason, wait)

