"""The durable outbox: Slack messages waiting to be sent, in SQLite.

Callers write here (usually in the same transaction that records what the
message is about, so the two cannot disagree after a crash) and
:class:`bot.slack.outbox.Outbox` delivers. Every message has a logical key; where
it ended up in Slack is kept in ``slack_messages`` under that key, so a
reply can name its parent and an edit its message before either was sent.

A row's ``state`` is one of:

- ``pending``: waiting to be sent (possibly after ``next_attempt_at``);
- ``sending``: claimed by the worker, its Slack call in flight (a restart
  puts it back to ``pending``, see :func:`requeue_interrupted`);
- ``sent``: Slack accepted it;
- ``failed``: given up on for good, with ``last_error`` saying why. Nothing
  is dropped without leaving such a row behind.

Each function is one transaction of its own, or joins the caller's when one
is already open on the store's connection.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from store import Store, StoreError, stamp

POST = "post"
UPDATE = "update"

PENDING = "pending"
SENDING = "sending"
SENT = "sent"
FAILED = "failed"

UNSETTLED = (PENDING, SENDING)


class UnknownMessage(StoreError, LookupError):
    """No message has that key: nothing was ever posted or queued under it."""


@dataclass(frozen=True)
class OutboxItem:
    """One queued Slack call (a post or an edit of a message)."""

    id: int
    message_key: str
    op: str  # post | update
    channel: str
    thread_key: str | None
    text: str
    blocks: list[dict[str, Any]] | None
    state: str
    attempts: int
    next_attempt_at: str | None
    created_at: str
    sent_at: str | None
    last_error: str | None


@dataclass(frozen=True)
class Delivery:
    """An item the worker may send now, with the Slack coordinates it needs."""

    item: OutboxItem
    # post: the parent's ts (None: not a reply, or the parent will never be
    # posted and the reply goes to the channel instead). update: the ts of
    # the message to edit.
    ts: str | None
    # update: the channel Slack answered the post with (an id even when the
    # post named the channel "#deploys"); post: the item's channel.
    slack_channel: str
    orphaned: bool = False  # a reply whose parent failed or was never queued


def _item(row: dict[str, Any]) -> OutboxItem:
    fields = {name: row[name] for name in OutboxItem.__dataclass_fields__ if name in row}
    fields["blocks"] = json.loads(row["blocks"]) if row["blocks"] else None
    fields["attempts"] = row["attempts"] or 0
    return OutboxItem(**fields)


def _blocks_json(blocks: list[dict[str, Any]] | None) -> str | None:
    return json.dumps(blocks) if blocks is not None else None


# -- writing: what callers queue ------------------------------------------------------


def enqueue_post(store: Store, key: str, channel: str, text: str,
                 blocks: list[dict[str, Any]] | None = None, thread_key: str | None = None) -> int | None:
    """Queue a new message known as ``key`` in ``channel``; with
    ``thread_key``, as a reply in the thread of the message known by that key
    (which may itself still be queued: the reply waits for it).

    A key names one message: when a post for ``key`` is already queued, in
    flight or sent, nothing is queued and None is returned. Otherwise the
    new item's id. (After a post failed for good, the key may be posted
    again.)
    """
    with store.transaction():
        if has_message(store, key):
            return None
        cursor = store.db.execute(
            "INSERT INTO outbox (message_key, op, channel, thread_key, text, blocks, state, attempts, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?)",
            [key, POST, channel, thread_key, text, _blocks_json(blocks), PENDING, store._now()],
        )
        return cursor.lastrowid


def enqueue_update(store: Store, key: str, text: str, blocks: list[dict[str, Any]] | None = None) -> int:
    """Queue an edit of the message known as ``key`` (sent or still queued).

    Edits coalesce: when an edit of ``key`` is still waiting, its text and
    blocks are replaced, so a storm of changes becomes one ``chat.update``
    carrying the last of them. Returns the id of the item that will carry it.

    Raises:
        UnknownMessage: nothing was ever posted or queued under ``key``.
    """
    with store.transaction():
        waiting = store.db.execute(
            "SELECT id FROM outbox WHERE message_key = ? AND op = ? AND state = ? ORDER BY id DESC LIMIT 1",
            [key, UPDATE, PENDING],
        ).fetchone()
        if waiting is not None:
            store.db.execute("UPDATE outbox SET text = ?, blocks = ? WHERE id = ?",
                             [text, _blocks_json(blocks), waiting[0]])
            return waiting[0]
        channel = _channel_of(store, key)
        cursor = store.db.execute(
            "INSERT INTO outbox (message_key, op, channel, text, blocks, state, attempts, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, 0, ?)",
            [key, UPDATE, channel, text, _blocks_json(blocks), PENDING, store._now()],
        )
        return cursor.lastrowid


def has_message(store: Store, key: str) -> bool:
    """Whether a message is known as ``key``: sent, or queued and not failed."""
    if message_ts(store, key) is not None:
        return True
    row = store.db.execute(
        "SELECT 1 FROM outbox WHERE message_key = ? AND op = ? AND state IN (?, ?, ?) LIMIT 1",
        [key, POST, PENDING, SENDING, SENT],
    ).fetchone()
    return row is not None


def _channel_of(store: Store, key: str) -> str:
    """The channel of the message known as ``key``: where its post went or
    will go (the name it was queued with, so edits are paced with posts)."""
    row = store.db.execute(
        "SELECT channel FROM outbox WHERE message_key = ? AND op = ? ORDER BY id DESC LIMIT 1", [key, POST],
    ).fetchone()
    if row is None:
        row = store.db.execute("SELECT channel FROM slack_messages WHERE key = ?", [key]).fetchone()
    if row is None:
        raise UnknownMessage(f"no message is known as {key!r}")
    return row[0]


# -- reading --------------------------------------------------------------------------


def message_ts(store: Store, key: str) -> str | None:
    """The Slack ts of the message known as ``key``, once it is posted."""
    row = store.db.execute("SELECT ts FROM slack_messages WHERE key = ?", [key]).fetchone()
    return row[0] if row else None


def pending_count(store: Store, channel: str | None = None) -> int:
    """How many items are not settled yet (waiting or in flight), in
    ``channel`` or everywhere."""
    where, params = "state IN (?, ?)", list(UNSETTLED)
    if channel is not None:
        where, params = where + " AND channel = ?", params + [channel]
    return store.db.execute(f"SELECT count(*) FROM outbox WHERE {where}", params).fetchone()[0]


def items(store: Store, key: str | None = None, state: str | None = None) -> list[OutboxItem]:
    """Outbox items, oldest first: those of message ``key`` and/or in ``state``."""
    clauses, params = [], []
    if key is not None:
        clauses, params = clauses + ["message_key = ?"], params + [key]
    if state is not None:
        clauses, params = clauses + ["state = ?"], params + [state]
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    return [_item(r) for r in store.db.query(f"SELECT * FROM outbox {where} ORDER BY id", params)]


def get_item(store: Store, item_id: int) -> OutboxItem:
    """The item with that id.

    Raises:
        LookupError: no item has that id.
    """
    rows = list(store.db.query("SELECT * FROM outbox WHERE id = ?", [item_id]))
    if not rows:
        raise LookupError(f"no outbox item {item_id}")
    return _item(rows[0])


# -- the worker's side ----------------------------------------------------------------

# A queued post whose key has no live post (queued or in flight) and no
# known ts will never be posted: its replies go to the channel, its edits fail.
_NO_LIVE_POST = (
    "NOT EXISTS (SELECT 1 FROM outbox q WHERE q.message_key = {key} AND q.op = 'post' "
    "AND q.state IN ('pending', 'sending'))"
)


def next_deliveries(store: Store) -> list[Delivery]:
    """For each channel, its oldest waiting item that can be sent now (in
    enqueue order per channel), oldest channel first.

    A reply waits for its parent's post and an edit for its message's post;
    neither holds up the rest of its channel meanwhile. A reply whose parent
    will never be posted is delivered to the channel (``orphaned``); an edit
    of a message that will never be posted is left to :func:`fail_dead_updates`.
    """
    rows = store.db.query(
        "SELECT o.*, m.ts AS message_ts, m.channel AS message_channel, p.ts AS parent_ts, "
        f"  (o.thread_key IS NOT NULL AND p.ts IS NULL AND {_NO_LIVE_POST.format(key='o.thread_key')}) AS orphaned "
        "FROM outbox o "
        "LEFT JOIN slack_messages m ON m.key = o.message_key "
        "LEFT JOIN slack_messages p ON p.key = o.thread_key "
        "WHERE o.state = 'pending' AND ("
        "  (o.op = 'post' AND (o.thread_key IS NULL OR p.ts IS NOT NULL "
        f"    OR {_NO_LIVE_POST.format(key='o.thread_key')}))"
        "  OR (o.op = 'update' AND m.ts IS NOT NULL)) "
        "ORDER BY o.id",
    )
    heads: dict[str, Delivery] = {}
    for row in rows:
        if row["channel"] in heads:
            continue
        item = _item(row)
        if item.op == POST:
            heads[item.channel] = Delivery(item, row["parent_ts"], item.channel, bool(row["orphaned"]))
        else:
            heads[item.channel] = Delivery(item, row["message_ts"], row["message_channel"])
    return list(heads.values())


def fail_dead_updates(store: Store) -> list[OutboxItem]:
    """Fail every waiting edit of a message that will never be posted (its
    post failed for good, or was never queued); return them, failed."""
    dead = store.db.execute(
        "SELECT o.id, o.message_key FROM outbox o WHERE o.state = 'pending' AND o.op = 'update' "
        "AND NOT EXISTS (SELECT 1 FROM slack_messages m WHERE m.key = o.message_key) "
        f"AND {_NO_LIVE_POST.format(key='o.message_key')}",
    ).fetchall()
    for item_id, key in dead:
        mark_failed(store, item_id, f"message_never_posted: {key!r} was not posted")
    return [get_item(store, item_id) for item_id, _ in dead]


def claim(store: Store, item_id: int) -> bool:
    """Mark a waiting item as in flight; False if it is no longer waiting.

    From here until :func:`mark_sent`/:func:`mark_retry`/:func:`mark_failed`,
    edits of the same message queue a new item instead of changing this one
    (whose text is already on its way to Slack).
    """
    with store.transaction():
        cursor = store.db.execute("UPDATE outbox SET state = ? WHERE id = ? AND state = ?",
                                  [SENDING, item_id, PENDING])
        return cursor.rowcount == 1


def mark_sent(store: Store, item_id: int, channel: str | None = None, ts: str | None = None) -> None:
    """Slack accepted the item; for a post, remember where the message is
    (``channel`` as Slack answered it, and ``ts``)."""
    with store.transaction():
        row = store.db.execute("SELECT message_key, op FROM outbox WHERE id = ?", [item_id]).fetchone()
        store.db.execute("UPDATE outbox SET state = ?, sent_at = ?, next_attempt_at = NULL WHERE id = ?",
                         [SENT, store._now(), item_id])
        if row is not None and row[1] == POST and ts is not None:
            store.db.execute("INSERT OR REPLACE INTO slack_messages (key, channel, ts) VALUES (?, ?, ?)",
                             [row[0], channel, ts])


def mark_retry(store: Store, item_id: int, delay: float, error: str, *, count_attempt: bool = True) -> None:
    """The attempt failed and the item waits ``delay`` seconds before the
    next one. A rate-limit answer is not the item's fault and is not counted
    (``count_attempt=False``)."""
    with store.transaction():
        store.db.execute(
            "UPDATE outbox SET state = ?, attempts = coalesce(attempts, 0) + ?, next_attempt_at = ?, "
            "last_error = ? WHERE id = ?",
            [PENDING, 1 if count_attempt else 0, _after(store, delay), error, item_id],
        )


def mark_failed(store: Store, item_id: int, error: str, *, count_attempt: bool = False) -> None:
    """Give up on the item for good; the row stays, with ``error`` as why."""
    with store.transaction():
        store.db.execute(
            "UPDATE outbox SET state = ?, attempts = coalesce(attempts, 0) + ?, next_attempt_at = NULL, "
            "last_error = ? WHERE id = ?",
            [FAILED, 1 if count_attempt else 0, error, item_id],
        )


def requeue_interrupted(store: Store) -> int:
    """Put items left in flight by a previous run back to waiting; return
    how many. (Slack may have received such a post before the crash: it is
    sent again, the one way the outbox can duplicate.)"""
    with store.transaction():
        return store.db.execute("UPDATE outbox SET state = ? WHERE state = ?", [PENDING, SENDING]).rowcount


def retry_waits(store: Store) -> dict[str, float]:
    """Per channel, the seconds (by the store's clock) still to wait after
    the last failed attempt there: what a restarted worker honours."""
    now = datetime.fromisoformat(store._now())
    waits: dict[str, float] = {}
    for channel, next_attempt_at in store.db.execute(
        "SELECT channel, max(next_attempt_at) FROM outbox WHERE state = 'pending' "
        "AND next_attempt_at IS NOT NULL GROUP BY channel",
    ).fetchall():
        wait = (datetime.fromisoformat(next_attempt_at) - now).total_seconds()
        if wait > 0:
            waits[channel] = wait
    return waits


def _after(store: Store, seconds: float) -> str:
    return stamp(datetime.fromisoformat(store._now()) + timedelta(seconds=seconds))
