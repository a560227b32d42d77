"""The alert relay off the event loop (issue 11): its queries asked once per
delivery and answered from indexes, each delivery's transaction run in the
store writer's thread on a connection of its own, and the event loop's
longest stall on /metrics. Correctness, not timing: how fast is
bench/alert_storm.py's business."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest
import sqlite_utils

from bot.events import AlertsRelayed, SlackWorkQueued
from bot.runtime.loop_monitor import LoopMonitor
from store import Store
from store.alerts import episode_base
from store.schema import MIGRATIONS
from store.writer import StoreWriter, WriterClosed
from tests.conftest import Harness, approvals, config_yaml, engine
from tests.test_alerts import ALERTS, AM_TOKEN, am_alert, am_payload, posts, send

LEVELS = ("page", "warn", "notify", "info", "quiet")


@pytest.fixture
def store(tmp_path: Path):
    opened = Store.open(tmp_path / "slipway.db")
    yield opened
    opened.close()


@pytest.fixture
def environ() -> dict[str, str]:
    return {"SLIPWAY_ALERTMANAGER_TOKEN": AM_TOKEN}


@pytest.fixture
def config_text(record: Path) -> str:
    return config_yaml(production={"approvals": approvals("U0ALICE")},
                       services={"api": {"deploy": engine("--record", record)}},
                       alerts={"channel": ALERTS, "oncall": "@oncall", "storm_threshold": 3})


def alert_fields(fingerprint: str, key: str | None, *, status: str = "firing", service: str = "api",
                 starts_at: str = "2026-05-04T10:00:00.000+00:00", level: str = "notify") -> dict:
    return {"source": "alertmanager", "fingerprint": fingerprint, "group_key": "g", "status": status,
            "name": "HighErrorRate", "service": service, "environment": "production", "metric": "error_rate",
            "value": 0.06, "baseline": 0.02, "severity": None, "level": level, "starts_at": starts_at,
            "ends_at": None, "deploy_id": None, "message_key": key, "summary": "", "url": None}


def plan(store: Store, sql: str, params: list) -> str:
    return " / ".join(row[3] for row in store.db.execute(f"EXPLAIN QUERY PLAN {sql}", params))


# -- the store's queries -----------------------------------------------------------------


def test_find_many_returns_the_recorded_occurrences_and_only_those(store: Store) -> None:
    store.alerts.upsert(alert_fields("a", "k-1"), {}, levels=LEVELS)
    store.alerts.upsert(alert_fields("b", "k-1", starts_at="2026-05-04T09:00:00.000+00:00"), {}, levels=LEVELS)
    found = store.alerts.find_many("alertmanager", [("a", "2026-05-04T10:00:00.000+00:00"),
                                                    ("b", "2026-05-04T10:00:00.000+00:00"),  # b started earlier
                                                    ("c", None)])
    assert list(found) == [("a", "2026-05-04T10:00:00.000+00:00")]
    assert found[("a", "2026-05-04T10:00:00.000+00:00")] == store.alerts.find(
        "alertmanager", "a", "2026-05-04T10:00:00.000+00:00")
    assert store.alerts.find_many("grafana", [("a", "2026-05-04T10:00:00.000+00:00")]) == {}


def test_find_many_takes_more_fingerprints_than_one_statement_may_bind(store: Store) -> None:
    with store.transaction():
        for number in range(1200):
            store.alerts.upsert(alert_fields(f"f{number}", "k-1"), {}, levels=LEVELS)
    wanted = [(f"f{number}", "2026-05-04T10:00:00.000+00:00") for number in range(0, 2400, 2)]
    assert len(store.alerts.find_many("alertmanager", wanted)) == 600


@pytest.mark.parametrize(("key", "base"), [("alert-group-0123-error_rate-7", "alert-group-0123-error_rate"),
                                           ("alert-deploy-4-by-severity-12", "alert-deploy-4-by-severity"),
                                           ("alert-group-0123-error_rate", None), ("digest-api-3", "digest-api"),
                                           ("1", None), ("", None), (None, None)])
def test_the_base_of_an_episode_key(key: str | None, base: str | None) -> None:
    assert episode_base(key) == base


def test_the_latest_episode_is_found_by_its_exact_base(store: Store) -> None:
    # a monitor may name a metric "error_rate-p99": LIKE 'base-%' took its messages for error_rate's
    store.alerts.upsert(alert_fields("a", "alert-group-x-error_rate-1", status="resolved"), {}, levels=LEVELS)
    store.alerts.upsert(alert_fields("b", "alert-group-x-error_rate-p99-1"), {}, levels=LEVELS)
    assert store.alerts.latest_episode("alert-group-x-error_rate") == ("alert-group-x-error_rate-1", False)
    assert store.alerts.latest_episode("alert-group-x-error_rate-p99") == ("alert-group-x-error_rate-p99-1", True)
    store.alerts.upsert(alert_fields("c", "alert-group-x-error_rate-2"), {}, levels=LEVELS)
    assert store.alerts.latest_episode("alert-group-x-error_rate") == ("alert-group-x-error_rate-2", True)
    assert store.alerts.latest_episode("alert-group-y-error_rate") is None


def test_recent_threads_counts_a_services_own_messages_since_a_moment(store: Store) -> None:
    store.alerts.upsert(alert_fields("a", "alert-group-1-x-1"), {}, levels=LEVELS, at="2026-05-04T10:00:00.000+00:00")
    store.alerts.upsert(alert_fields("b", "alert-group-1-x-1"), {}, levels=LEVELS, at="2026-05-04T10:01:00.000+00:00")
    store.alerts.upsert(alert_fields("c", "alert-group-2-x-1"), {}, levels=LEVELS, at="2026-05-04T10:02:00.000+00:00")
    store.alerts.upsert(alert_fields("d", "alert-group-3-x-1", service="web"), {}, levels=LEVELS,
                        at="2026-05-04T10:02:00.000+00:00")
    assert store.alerts.recent_threads("api", "2026-05-04T09:00:00.000+00:00") == 2
    assert store.alerts.recent_threads("api", "2026-05-04T10:01:30.000+00:00") == 1
    assert store.alerts.recent_threads("web", "2026-05-04T09:00:00.000+00:00") == 1
    assert store.alerts.recent_threads(None, "2026-05-04T09:00:00.000+00:00") == 0


def test_the_relays_questions_are_answered_from_indexes(store: Store) -> None:
    """What used to scan every alert ever stored, once per alert of a storm."""
    episode = plan(store, "SELECT message_key FROM alerts WHERE message_base = ? ORDER BY id DESC LIMIT 1", ["b"])
    assert "USING INDEX" in episode and "TEMP B-TREE" not in episode
    threads = plan(store, "SELECT count(DISTINCT message_key) FROM alerts WHERE deploy_id IS NULL AND service IS ? "
                          "AND received_at >= ? AND message_key NOT LIKE 'digest-%'", ["api", "2026"])
    assert "alerts_own_threads" in threads
    occurrences = plan(store, "SELECT id FROM alerts WHERE source = ? AND fingerprint IN (?, ?)", ["s", "a", "b"])
    assert "USING INDEX" in occurrences or "USING COVERING INDEX" in occurrences
    assert "SCAN outbox" not in plan(store, "SELECT coalesce(max(id), 0) + 1 FROM outbox", [])


def test_a_thread_line_number_is_one_no_outbox_item_had(store: Store) -> None:
    first = store.outbox.fresh_number()
    store.outbox.enqueue_post(f"line-{first}", "C1", "one")
    second = store.outbox.fresh_number()
    assert second > first
    store.outbox.enqueue_post(f"line-{second}", "C1", "two")
    assert len(store.outbox.items()) == 2


def test_the_migration_names_the_episode_of_alerts_stored_before_it(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite_utils.Database(sqlite3.connect(path))
    db["schema_migrations"].create({"version": int, "applied_at": str}, pk="version")
    before = MIGRATIONS.index(next(m for m in MIGRATIONS if m.__name__ == "_m11_alert_relay_indexes"))
    for number, migration in enumerate(MIGRATIONS[:before], start=1):
        migration(db)
        db["schema_migrations"].insert({"version": number, "applied_at": "2026-05-01T00:00:00.000+00:00"})
    for number, key in enumerate(["alert-group-abc-error_rate-3", "alert-deploy-7-by-severity-1", None]):
        db["alerts"].insert({"source": "alertmanager", "fingerprint": f"f{number}", "status": "firing",
                             "received_at": "2026-05-01T00:00:00.000+00:00", "message_key": key})
    db.conn.commit()
    db.close()
    store = Store.open(path)
    try:
        bases = [row[0] for row in store.db.execute("SELECT message_base FROM alerts ORDER BY id")]
        assert bases == ["alert-group-abc-error_rate", "alert-deploy-7-by-severity", None]
        assert store.alerts.latest_episode("alert-group-abc-error_rate") == ("alert-group-abc-error_rate-3", True)
    finally:
        store.close()


# -- the writer thread --------------------------------------------------------------------------


async def test_the_writer_runs_work_in_its_thread_on_its_own_connection(store: Store) -> None:
    writer = StoreWriter(store)
    try:
        path = store.path
        seen = await writer.run(lambda own: (threading.current_thread().name, own is store, own.path == path))
        assert seen == ("slipway-store-writer", False, True)

        def record(own: Store) -> int:
            stored, _ = own.alerts.upsert(alert_fields("a", "k-1"), {}, levels=LEVELS)
            return stored.id

        alert_id = await writer.run(record)
        assert store.alerts.get(alert_id).fingerprint == "a"  # committed when the future resolved
    finally:
        await writer.close()


async def test_the_writer_hands_back_errors_and_keeps_the_order_it_was_given(store: Store) -> None:
    writer = StoreWriter(store)
    done: list[int] = []

    def fails(own: Store) -> None:
        raise LookupError("no such thing")

    try:
        with pytest.raises(LookupError, match="no such thing"):
            await writer.run(fails)
        await asyncio.gather(*(writer.run(lambda own, n=n: done.append(n)) for n in range(20)))
        assert done == list(range(20))
    finally:
        await writer.close()
    with pytest.raises(WriterClosed):
        writer.submit(lambda own: None)


async def test_a_failed_transaction_in_the_writer_leaves_nothing_behind(store: Store) -> None:
    writer = StoreWriter(store)

    def half(own: Store) -> None:
        with own.transaction():
            own.alerts.upsert(alert_fields("a", "k-1"), {}, levels=LEVELS)
            raise RuntimeError("in the middle")

    try:
        with pytest.raises(RuntimeError):
            await writer.run(half)
        assert store.db.execute("SELECT count(*) FROM alerts").fetchone()[0] == 0
    finally:
        await writer.close()


def test_the_loops_write_waits_for_the_writers_transaction_then_goes_first(store: Store) -> None:
    """Two connections, one write lock: the loop's write neither fails with
    'database is locked' nor starves behind the writer's queue."""
    writer = StoreWriter(store)
    order: list[str] = []
    inside, release = threading.Event(), threading.Event()

    def writers_transaction(own: Store, name: str, hold: bool) -> None:
        with own.transaction():
            own.outbox.enqueue_post(name, "C1", name)
            order.append(name)
            if hold:
                inside.set()
                release.wait(10)

    async def scenario() -> None:
        try:
            first = writer.submit(lambda own: writers_transaction(own, "writer-1", True))
            second = writer.submit(lambda own: writers_transaction(own, "writer-2", False))
            await asyncio.to_thread(inside.wait, 10)
            # the loop's connection wants to write while the writer holds its turn, with more queued
            threading.Timer(0.2, release.set).start()
            with store.transaction():
                store.outbox.enqueue_post("loop", "C1", "loop")
                order.append("loop")
            await asyncio.gather(first, second)
        finally:
            await writer.close()

    asyncio.run(scenario())
    assert order == ["writer-1", "loop", "writer-2"]
    assert writer.turn.loop_waits.longest > 0


# -- the relay through the writer ---------------------------------------------------------------


async def test_a_delivery_is_recorded_in_the_writer_thread_and_told_after_its_commit(harness: Harness,
                                                                                      clock) -> None:
    relay, store = harness.slipway.alert_relay, harness.store
    assert relay.writer is not None
    told: list[tuple[str, int]] = []
    # once told, the loop's own connection already sees what the writer committed
    harness.slipway.events.subscribe(SlackWorkQueued, lambda event: told.append(
        ("queued", store.outbox.pending_count(ALERTS))))
    harness.slipway.events.subscribe(AlertsRelayed, lambda event: told.append(
        ("relayed", store.db.execute("SELECT count(*) FROM alerts").fetchone()[0])))
    status, answer = await send(harness, "/webhooks/alertmanager", am_payload(am_alert(starts=clock.now)))
    assert status == 200 and answer["received"] == 1
    assert told[:2] == [("queued", 1), ("relayed", 1)]
    assert relay.writer.turn.writer_holds.count >= 1
    assert len(posts(harness, ALERTS)) == 1


async def test_the_door_parses_the_body_off_the_event_loop(harness: Harness) -> None:
    threads: list[str] = []

    def parse(body: bytes, labels) -> tuple[str | None, list]:
        threads.append(threading.current_thread().name)
        return None, []

    assert await harness.slipway.alert_relay.parse(parse, b"{}") == (None, [])
    assert threads == ["slipway-store-writer"]


async def test_the_same_alert_twice_in_one_delivery_is_one_row(harness: Harness, clock) -> None:
    alert = am_alert(starts=clock.now)
    status, answer = await send(harness, "/webhooks/alertmanager", am_payload(alert, dict(alert)))
    assert status == 200 and answer == {"ok": True, "received": 2, "duplicates": 1}
    assert harness.store.db.execute("SELECT count(*) FROM alerts").fetchone()[0] == 1
    assert len(posts(harness, ALERTS)) == 1


async def test_one_delivery_opens_one_new_episode_for_all_its_alerts(harness: Harness, clock) -> None:
    """The episode asked once per delivery is kept true as its own alerts are written."""
    first = am_alert("Disk", starts=clock.now, fingerprint="one")
    await send(harness, "/webhooks/alertmanager", am_payload(first, group_key="g"))
    await send(harness, "/webhooks/alertmanager", am_payload({**first, "status": "resolved"}, group_key="g"))
    later = clock.now + timedelta(hours=1)
    fresh = [am_alert("Disk", starts=later, fingerprint=f"new-{n}") for n in range(3)]
    await send(harness, "/webhooks/alertmanager", am_payload(*fresh, group_key="g"))
    keys = dict(harness.store.db.execute("SELECT fingerprint, message_key FROM alerts").fetchall())
    assert keys["one"].endswith("-1")
    assert {keys[f"new-{n}"] for n in range(3)} == {keys["one"][:-1] + "2"}
    assert len(posts(harness, ALERTS)) == 2  # the first episode's message, and one for the new one


async def test_resolving_and_a_new_alert_in_one_delivery_stay_on_the_open_episode(harness: Harness, clock) -> None:
    first = am_alert("Disk", starts=clock.now, fingerprint="one")
    await send(harness, "/webhooks/alertmanager", am_payload(first, group_key="g"))
    # resolved first in the delivery: the new alert then finds the episode closed, as it would have alone
    second = am_alert("Disk", starts=clock.now, fingerprint="two")
    await send(harness, "/webhooks/alertmanager", am_payload({**first, "status": "resolved"}, second, group_key="g"))
    keys = dict(harness.store.db.execute("SELECT fingerprint, message_key FROM alerts").fetchall())
    assert keys["one"].endswith("-1") and keys["two"].endswith("-2")


# -- the event loop's longest stall --------------------------------------------------------------


async def test_a_stall_shows_as_the_loops_longest() -> None:
    lags: list[float] = []
    monitor = LoopMonitor(lags.append, interval=0.005)
    monitor.start()
    try:
        await asyncio.sleep(0.05)
        time.sleep(0.12)  # noqa: ASYNC251 — on purpose: something holds the loop
        await asyncio.sleep(0.05)
    finally:
        await monitor.close()
    assert monitor.longest >= 0.1 and max(lags) == monitor.longest
    assert monitor.longest_recent() == monitor.longest


def test_stalls_older_than_the_window_are_forgotten() -> None:
    now = [1000.0]
    monitor = LoopMonitor(clock=lambda: now[0], window=60)
    monitor.note(0.3)
    now[0] += 30
    monitor.note(0.02)
    assert monitor.longest_recent() == 0.3
    now[0] += 45
    monitor.note(0.01)
    assert monitor.longest_recent() == 0.02 and monitor.longest == 0.3


async def test_metrics_report_the_loops_longest_stall(harness: Harness) -> None:
    await asyncio.sleep(0.05)
    time.sleep(0.1)  # noqa: ASYNC251 — on purpose: something holds the loop
    await asyncio.sleep(0.05)
    async with aiohttp.ClientSession() as session:
        async with session.get(harness.url + "/metrics") as response:
            text = await response.text()
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
              if line.startswith("slipway_event_loop_")}
    assert values["slipway_event_loop_stall_max_seconds"] >= 0.09
    assert values["slipway_event_loop_lag_seconds_count"] > 0
    assert values['slipway_event_loop_lag_seconds_bucket{le="0.05"}'] < values["slipway_event_loop_lag_seconds_count"]


async def test_the_writer_thread_checkpoints_the_wal_for_both_connections(store: Store,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint (fsyncs: tens of milliseconds) never runs inside the loop's
    commits while the writer runs: the thread does them, and gives the loop's
    connection its automatic checkpoints back when it stops."""
    monkeypatch.setattr("store.writer.CHECKPOINT_EVERY", 0.01)
    checkpoints: list[str] = []
    checkpoint = StoreWriter._checkpoint

    def counted(self: StoreWriter, own: Store) -> None:
        checkpoints.append(threading.current_thread().name)
        checkpoint(self, own)

    monkeypatch.setattr(StoreWriter, "_checkpoint", counted)
    conn = store.db.conn
    assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000
    writer = StoreWriter(store)
    try:
        await writer.run(lambda own: None)
        assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        with store.transaction():
            for number in range(300):
                store.alerts.upsert(alert_fields(f"f{number}", "k-1"), {"padding": "x" * 2000}, levels=LEVELS)
        await asyncio.sleep(0.1)  # quiet: the thread checkpoints what the loop wrote
        assert checkpoints and set(checkpoints) == {"slipway-store-writer"}
    finally:
        await writer.close()
    assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000
