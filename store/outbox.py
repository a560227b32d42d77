"""The durable outbox: Slack messages waiting to be sent, in SQLite.

Callers write here (usually in the same transaction that records what the
message is about, so the two cannot disagree after a crash) and
:class:`bot.slack.outbox.Outbox` delivers. Every message has a logical key; where
it ended up in Slack is kept in ``slack_messages`` under that key, so a
reply can name its parent and an edit its message before either was sent.

A row's ``state`` is one of:

- ``pending``: waiting to be sent (possibly after ``next_attempt_at``);
- ``sending``: claimed by the worker, its Slack call in flight (a restart
  puts it back to ``pending``, see :meth:`OutboxQueue.requeue_interrupted`);
- ``sent``: Slack accepted it;
- ``failed``: given up on for good, with ``last_error`` saying why. Nothing
  is dropped without leaving such a row behind.

Each method is one transaction of its own, or joins the caller's when one
is already open on the store's connection.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from store.database import Database, stamp
from store.errors import UnknownMessage
from store.records import Delivery, OutboxItem

POST = "post"
UPDATE = "update"
DM = "dm"  # a direct message: ``channel`` holds the user id; the worker opens the conversation
PUBLISH = "publish"  # an App Home view: ``channel`` holds the user id
PERMALINK = "permalink"  # ask Slack the permalink of a posted message (paced and retried like the rest)
PERMALINK_LANE = "(permalinks)"  # the ``channel`` permalink requests are paced in

PENDING = "pending"
SENDING = "sending"
SENT = "sent"
FAILED = "failed"

UNSETTLED = (PENDING, SENDING)


def deploy_message_key(deploy_id: int) -> str:
    """The outbox's name for a deploy's message."""
    return f"deploy-{deploy_id}"


def deploy_of_key(key: str) -> int | None:
    """The deploy a message belongs to, by its key (its message, or a note in its thread)."""
    prefix, _, rest = key.partition("-")
    number = rest.partition("-")[0]
    return int(number) if prefix == "deploy" and number.isdigit() else None


def _item(row: dict[str, Any]) -> OutboxItem:
    fields = {name: row[name] for name in OutboxItem.__dataclass_fields__ if name in row}
    fields["blocks"] = json.loads(row["blocks"]) if row["blocks"] else None
    fields["attempts"] = row["attempts"] or 0
    return OutboxItem(**fields)


def _blocks_json(blocks: list[dict[str, Any]] | None) -> str | None:
    return json.dumps(blocks) if blocks is not None else None


# A queued post whose key has no live post (queued or in flight) and no
# known ts will never be posted: its replies go to the channel, its edits fail.
_NO_LIVE_POST = (
    "NOT EXISTS (SELECT 1 FROM outbox q WHERE q.message_key = {key} AND q.op = 'post' "
    "AND q.state IN ('pending', 'sending'))"
)


class OutboxQueue:
    """The outbox's rows: what callers queue, and what the worker
    (:class:`bot.slack.outbox.Outbox`) claims, sends and settles."""

    def __init__(self, database: Database) -> None:
        self._database = database
        self._db = database.db

    # -- writing: what callers queue ------------------------------------------------------

    def enqueue_post(self, key: str, channel: str, text: str, blocks: list[dict[str, Any]] | None = None,
                     thread_key: str | None = None, view: str | None = None) -> int | None:
        """Queue a new message known as ``key`` in ``channel``; with
        ``thread_key``, as a reply in the thread of the message known by that key
        (which may itself still be queued: the reply waits for it).

        A key names one message: when a post for ``key`` is already queued, in
        flight or sent, nothing is queued and None is returned. Otherwise the
        new item's id. (After a post failed for good, the key may be posted
        again.) ``view``: the text and blocks are drawn when it is sent (see
        :class:`bot.slack.outbox.Outbox`), ``text`` is only a fallback.
        """
        with self._database.transaction():
            if self.has_message(key):
                return None
            return self._insert(key, POST, channel, text, blocks, thread_key=thread_key, view=view)

    def enqueue_dm(self, key: str, user: str, text: str) -> int | None:
        """Queue a direct message to ``user`` known as ``key`` (once per key, as a post)."""
        with self._database.transaction():
            if self._db.execute("SELECT 1 FROM outbox WHERE message_key = ? AND state != ? LIMIT 1",
                                [key, FAILED]).fetchone() is not None:
                return None
            return self._insert(key, DM, user, text, None)

    def enqueue_publish(self, user: str, view: str) -> int:
        """Queue publishing ``user``'s App Home tab, drawn from ``view`` when
        sent; coalesced: one waiting publish per person carries the latest."""
        key = f"home-{user}"
        with self._database.transaction():
            waiting = self._db.execute("SELECT id FROM outbox WHERE message_key = ? AND state = ? LIMIT 1",
                                       [key, PENDING]).fetchone()
            if waiting is not None:
                return waiting[0]
            return self._insert(key, PUBLISH, user, "", None, view=view)

    def enqueue_permalink(self, key: str, view: str | None) -> int:
        """Queue asking Slack for the permalink of the message known as ``key``
        (posted). Permalinks wait in a lane of their own, not in the message's
        channel: a link that cannot be had must not hold up the messages."""
        with self._database.transaction():
            return self._insert(key, PERMALINK, PERMALINK_LANE, "", None, view=view)

    def _insert(self, key: str, op: str, channel: str, text: str, blocks: list[dict[str, Any]] | None, *,
                thread_key: str | None = None, view: str | None = None) -> int:
        cursor = self._db.execute(
            "INSERT INTO outbox (message_key, op, channel, thread_key, text, blocks, view, state, attempts, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, ?)",
            [key, op, channel, thread_key, text, _blocks_json(blocks), view, PENDING, self._database.now()],
        )
        return cursor.lastrowid

    def enqueue_update(self, key: str, text: str, blocks: list[dict[str, Any]] | None = None,
                       view: str | None = None) -> int:
        """Queue an edit of the message known as ``key`` (sent or still queued).

        Edits coalesce: when an edit of ``key`` is still waiting, its text and
        blocks are replaced, so a storm of changes becomes one ``chat.update``
        carrying the last of them. Returns the id of the item that will carry it.

        Raises:
            UnknownMessage: nothing was ever posted or queued under ``key``.
        """
        with self._database.transaction():
            waiting = self._db.execute(
                "SELECT id FROM outbox WHERE message_key = ? AND op = ? AND state = ? ORDER BY id DESC LIMIT 1",
                [key, UPDATE, PENDING],
            ).fetchone()
            if waiting is not None:
                self._db.execute("UPDATE outbox SET text = ?, blocks = ?, view = ? WHERE id = ?",
                                 [text, _blocks_json(blocks), view, waiting[0]])
                return waiting[0]
            return self._insert(key, UPDATE, self._channel_of(key), text, blocks, view=view)

    def has_message(self, key: str) -> bool:
        """Whether a message is known as ``key``: sent, or queued and not failed."""
        if self.message_ts(key) is not None:
            return True
        row = self._db.execute(
            "SELECT 1 FROM outbox WHERE message_key = ? AND op = ? AND state IN (?, ?, ?) LIMIT 1",
            [key, POST, PENDING, SENDING, SENT],
        ).fetchone()
        return row is not None

    def _channel_of(self, key: str) -> str:
        """The channel of the message known as ``key``: where its post went or
        will go (the name it was queued with, so edits are paced with posts)."""
        row = self._db.execute(
            "SELECT channel FROM outbox WHERE message_key = ? AND op = ? ORDER BY id DESC LIMIT 1", [key, POST],
        ).fetchone()
        if row is None:
            row = self._db.execute("SELECT channel FROM slack_messages WHERE key = ?", [key]).fetchone()
        if row is None:
            raise UnknownMessage(f"no message is known as {key!r}")
        return row[0]

    def remember_message(self, key: str, channel: str, ts: str) -> None:
        """Note where a message posted outside the outbox is (a deploy's own
        message), so replies and edits queued under ``key`` find it."""
        with self._database.transaction():
            # not INSERT OR REPLACE: that would drop the permalink already kept for the same message
            self._db.execute("INSERT INTO slack_messages (key, channel, ts) VALUES (?, ?, ?) ON CONFLICT (key) DO "
                             "UPDATE SET channel = excluded.channel, ts = excluded.ts, "
                             "permalink = CASE WHEN ts = excluded.ts THEN permalink END",
                             [key, channel, ts])

    def fresh_number(self) -> int:
        """A number no earlier item had, for a new message's key (a thread line's):
        the id the next row will get (the rowid's maximum, one index step;
        ``count(*)`` read the whole table for every thread line of an alert storm)."""
        return self._db.execute("SELECT coalesce(max(id), 0) + 1 FROM outbox").fetchone()[0]

    # -- reading --------------------------------------------------------------------------

    def fail_post(self, key: str, error: str) -> None:
        """Give up the waiting post known as ``key`` (its purpose is gone)."""
        with self._database.transaction():
            self._db.execute("UPDATE outbox SET state = ?, next_attempt_at = NULL, last_error = ? "
                             "WHERE message_key = ? AND op = ? AND state IN (?, ?)",
                             [FAILED, error, key, POST, PENDING, SENDING])

    def remember_permalink(self, key: str, permalink: str) -> None:
        """Keep the permalink Slack gave the message known as ``key``."""
        with self._database.transaction():
            self._db.execute("UPDATE slack_messages SET permalink = ? WHERE key = ?", [permalink, key])

    def permalink(self, key: str) -> str | None:
        """The permalink of the message known as ``key``, once known."""
        row = self._db.execute("SELECT permalink FROM slack_messages WHERE key = ?", [key]).fetchone()
        return row[0] if row else None

    def post_state(self, key: str) -> str | None:
        """The state of the latest post queued as ``key`` (None: none was queued)."""
        row = self._db.execute("SELECT state FROM outbox WHERE message_key = ? AND op IN (?, ?) "
                               "ORDER BY id DESC LIMIT 1", [key, POST, DM]).fetchone()
        return row[0] if row else None

    def message_ts(self, key: str) -> str | None:
        """The Slack ts of the message known as ``key``, once it is posted."""
        row = self._db.execute("SELECT ts FROM slack_messages WHERE key = ?", [key]).fetchone()
        return row[0] if row else None

    def depth(self, states: tuple[str, ...]) -> dict[str, int]:
        """How many items are in each of ``states`` (states with none left out)."""
        placeholders = ", ".join("?" for _ in states)
        rows = self._db.execute(
            f"SELECT state, count(*) FROM outbox WHERE state IN ({placeholders}) GROUP BY state", list(states))
        return dict(rows.fetchall())

    def pending_count(self, channel: str | None = None) -> int:
        """How many items are not settled yet (waiting or in flight), in
        ``channel`` or everywhere."""
        where, params = "state IN (?, ?)", list(UNSETTLED)
        if channel is not None:
            where, params = where + " AND channel = ?", params + [channel]
        return self._db.execute(f"SELECT count(*) FROM outbox WHERE {where}", params).fetchone()[0]

    def items(self, key: str | None = None, state: str | None = None) -> list[OutboxItem]:
        """Outbox items, oldest first: those of message ``key`` and/or in ``state``."""
        clauses, params = [], []
        if key is not None:
            clauses, params = clauses + ["message_key = ?"], params + [key]
        if state is not None:
            clauses, params = clauses + ["state = ?"], params + [state]
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        return [_item(r) for r in self._db.query(f"SELECT * FROM outbox {where} ORDER BY id", params)]

    def get_item(self, item_id: int) -> OutboxItem:
        """The item with that id (LookupError when there is none)."""
        return _item(self._database.row_by_id("outbox", item_id, LookupError(f"no outbox item {item_id}")))

    # -- the worker's side ----------------------------------------------------------------

    def next_deliveries(self) -> list[Delivery]:
        """For each channel, its oldest waiting item that can be sent now (in
        enqueue order per channel), oldest channel first.

        A reply waits for its parent's post and an edit for its message's post;
        neither holds up the rest of its channel meanwhile. A reply whose parent
        will never be posted is delivered to the channel (``orphaned``); an edit
        of a message that will never be posted is left to :meth:`fail_dead_updates`.
        """
        # The head of each channel is picked inside SQLite (min(id) per channel
        # among the items that can go now): one row per channel reaches Python,
        # however long the queue. A burst queues hundreds in one channel, and
        # this runs before every delivery: reading them all made each delivery
        # cost in proportion to the queue (40% of Slipway's CPU under
        # bench/ack_latency.py's Approve at concurrency 50).
        rows = self._db.query(
            "SELECT o.*, m.ts AS message_ts, m.channel AS message_channel, p.ts AS parent_ts, "
            f"  (o.thread_key IS NOT NULL AND p.ts IS NULL AND {_NO_LIVE_POST.format(key='o.thread_key')}) AS orphaned "
            "FROM outbox o "
            "LEFT JOIN slack_messages m ON m.key = o.message_key "
            "LEFT JOIN slack_messages p ON p.key = o.thread_key "
            "WHERE o.id IN (SELECT min(o.id) FROM outbox o "
            "  LEFT JOIN slack_messages m ON m.key = o.message_key "
            "  LEFT JOIN slack_messages p ON p.key = o.thread_key "
            "  WHERE o.state = 'pending' AND ("
            "    (o.op = 'post' AND (o.thread_key IS NULL OR p.ts IS NOT NULL "
            f"      OR {_NO_LIVE_POST.format(key='o.thread_key')}))"
            "    OR (o.op IN ('update', 'permalink') AND m.ts IS NOT NULL) OR o.op IN ('dm', 'publish')) "
            "  GROUP BY o.channel) "
            "ORDER BY o.id",
        )
        heads: dict[str, Delivery] = {}
        for row in rows:
            item = _item(row)
            if item.op == POST:
                heads[item.channel] = Delivery(item, row["parent_ts"], item.channel, bool(row["orphaned"]))
            elif item.op in (DM, PUBLISH):
                heads[item.channel] = Delivery(item, None, item.channel)
            else:
                heads[item.channel] = Delivery(item, row["message_ts"], row["message_channel"])
        return list(heads.values())

    def fail_dead_updates(self) -> list[OutboxItem]:
        """Fail every waiting edit of a message that will never be posted (its
        post failed for good, or was never queued); return them, failed."""
        dead = self._db.execute(
            "SELECT o.id, o.message_key FROM outbox o WHERE o.state = 'pending' AND o.op = 'update' "
            "AND NOT EXISTS (SELECT 1 FROM slack_messages m WHERE m.key = o.message_key) "
            f"AND {_NO_LIVE_POST.format(key='o.message_key')}",
        ).fetchall()
        for item_id, key in dead:
            self.mark_failed(item_id, f"message_never_posted: {key!r} was not posted")
        return [self.get_item(item_id) for item_id, _ in dead]

    def claim(self, item_id: int) -> bool:
        """Mark a waiting item as in flight; False if it is no longer waiting.

        From here until :meth:`mark_sent`/:meth:`mark_retry`/:meth:`mark_failed`,
        edits of the same message queue a new item instead of changing this one
        (whose text is already on its way to Slack).
        """
        with self._database.transaction():
            cursor = self._db.execute("UPDATE outbox SET state = ? WHERE id = ? AND state = ?",
                                      [SENDING, item_id, PENDING])
            return cursor.rowcount == 1

    def mark_sent(self, item_id: int, channel: str | None = None, ts: str | None = None) -> None:
        """Slack accepted the item; for a post, remember where the message is
        (``channel`` as Slack answered it, and ``ts``)."""
        with self._database.transaction():
            row = self._db.execute("SELECT message_key, op FROM outbox WHERE id = ?", [item_id]).fetchone()
            self._db.execute("UPDATE outbox SET state = ?, sent_at = ?, next_attempt_at = NULL WHERE id = ?",
                             [SENT, self._database.now(), item_id])
            if row is not None and row[1] == POST and ts is not None:
                self._db.execute("INSERT OR REPLACE INTO slack_messages (key, channel, ts) VALUES (?, ?, ?)",
                                 [row[0], channel, ts])

    def mark_retry(self, item_id: int, delay: float, error: str, *, count_attempt: bool = True) -> None:
        """The attempt failed and the item waits ``delay`` seconds before the
        next one. A rate-limit answer is not the item's fault and is not counted
        (``count_attempt=False``)."""
        with self._database.transaction():
            self._db.execute(
                "UPDATE outbox SET state = ?, attempts = coalesce(attempts, 0) + ?, next_attempt_at = ?, "
                "last_error = ? WHERE id = ?",
                [PENDING, 1 if count_attempt else 0, self._after(delay), error, item_id],
            )

    def mark_failed(self, item_id: int, error: str, *, count_attempt: bool = False) -> None:
        """Give up on the item for good; the row stays, with ``error`` as why."""
        with self._database.transaction():
            self._db.execute(
                "UPDATE outbox SET state = ?, attempts = coalesce(attempts, 0) + ?, next_attempt_at = NULL, "
                "last_error = ? WHERE id = ?",
                [FAILED, 1 if count_attempt else 0, error, item_id],
            )

    def requeue_interrupted(self) -> int:
        """Put items left in flight by a previous run back to waiting; return
        how many. (Slack may have received such a post before the crash: it is
        sent again, the one way the outbox can duplicate.)"""
        with self._database.transaction():
            return self._db.execute("UPDATE outbox SET state = ? WHERE state = ?", [PENDING, SENDING]).rowcount

    def retry_waits(self) -> dict[str, float]:
        """Per channel, the seconds (by the store's clock) still to wait after
        the last failed attempt there: what a restarted worker honours."""
        now = datetime.fromisoformat(self._database.now())
        waits: dict[str, float] = {}
        for channel, next_attempt_at in self._db.execute(
            "SELECT channel, max(next_attempt_at) FROM outbox WHERE state = 'pending' "
            "AND next_attempt_at IS NOT NULL GROUP BY channel",
        ).fetchall():
            wait = (datetime.fromisoformat(next_attempt_at) - now).total_seconds()
            if wait > 0:
                waits[channel] = wait
        return waits

    def _after(self, seconds: float) -> str:
        return stamp(datetime.fromisoformat(self._database.now()) + timedelta(seconds=seconds))
