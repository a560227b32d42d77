"""One ``slipway serve`` owns a database; a second one on the same file
waits as a standby and takes over when the first releases the lease
(SIGTERM, after its drain), dies (kill -9) or falls silent (SIGSTOP past
the lease's expiry). Real processes, a fake Slack, a real engine."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from bot.executors.command import process_start
from bot.sandbox.fake_slack import FakeSlack, SlackSender
from store import Store, schema
from tests.conftest import SIGNING_SECRET, config_yaml, engine
from tests.processes import SlipwayProcess
from tests.test_recovery import files  # noqa: F401 — the same files, as a fixture

LEASE = ("--lease", "2")  # a silent owner keeps the standby waiting 2 s; it looks every 0.5 s




@pytest.fixture
def config(files: dict[str, Path]) -> Path:
    files["slipway.yml"].write_text(config_yaml(
        services={"api": {"deploy": engine("--started", files["started"], "--wait-for", files["release"],
                                           "--record", files["record"])},
                  "web": {"deploy": engine()}}))
    return files["slipway.yml"]


async def until(condition: Callable[[], object], timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.05)  # polling a file or a row another process writes; there is no event to wait on


async def until_role(slipway: SlipwayProcess, role: str, timeout: float = 30.0) -> dict:
    """Poll ``/healthz`` until it names ``role``; its body then."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        status, body = await slipway.healthz()
        if body.get("role") == role:
            assert (status == 200) == (role == "owner"), (status, body)
            return body
        assert asyncio.get_running_loop().time() < deadline, f"still {body}"
        await asyncio.sleep(0.05)  # polling another process's state


def deploy_of(db: Path, service: str):
    store = Store.open(db, migrate=False)
    try:
        return store.deploys.history(service)[0]
    finally:
        store.close()


def schema_version(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT max(version) FROM schema_migrations").fetchone()[0]


async def test_a_second_instance_waits_without_disturbing_a_deploy_and_takes_over_after_sigterm(
        fake_slack: FakeSlack, config: Path, files: dict[str, Path],
        serve: Callable[..., SlipwayProcess]) -> None:
    first = serve(config, files["slipway.db"], args=LEASE)
    url = await first.start()
    async with SlackSender(url, SIGNING_SECRET, fake_slack) as slack:
        assert (await slack.command("api 2.7.0 staging", "U0DAVE"))[0] == 200
    await until(lambda: files["started"].exists())
    engine_pid = int(files["started"].read_text().split()[0])

    second = serve(config, files["slipway.db"], args=LEASE)  # a rolling update's new pod, a careless operator
    second_url = await second.start()
    standby = await until_role(second, "standby")
    assert standby["status"] == "standby" and f"/{first.process.pid}/" in standby["owner"]
    assert (await first.healthz())[1]["role"] == "owner"
    async with SlackSender(second_url, SIGNING_SECRET, fake_slack) as slack:
        status, body = await slack.command("web 1.0.0 staging", "U0DAVE")
    assert status == 503 and "standby" in body  # not served as if it owned the data (Slack retries)
    # the deploy in flight is left alone: still deploying, its engine still running
    assert deploy_of(files["slipway.db"], "api").status == "deploying"
    assert process_start(engine_pid) is not None
    store = Store.open(files["slipway.db"], migrate=False)
    assert store.deploys.history("web") == []  # the standby's door recorded nothing
    store.close()
    assert not any("recovering" in line for line in second.log)

    # SIGTERM to the first: it drains (the standby keeps waiting), then releases the lease
    terminated = asyncio.ensure_future(first.terminate())
    await first.wait_for_log("waiting up to 60 s for 1 command deploy(s) to finish")
    assert (await second.healthz())[1]["role"] == "standby"
    files["release"].touch()
    assert await terminated == 0
    assert any("released the lease" in line for line in first.log)
    api = deploy_of(files["slipway.db"], "api")
    assert api.status == "succeeded" and api.exit_code == 0  # finished by its own Slipway, undisturbed

    await until_role(second, "owner")
    async with SlackSender(second_url, SIGNING_SECRET, fake_slack) as slack:
        status, reply = await slack.command("web 1.0.0 staging", "U0DAVE")
        assert status == 200 and "needs no approval" in reply
    await fake_slack.wait_for(lambda f: any("Deploy web 1.0.0 to staging" in c.args.get("text", "")
                                            for c in f.calls_to("chat.postMessage")), timeout=30)
    await until(lambda: deploy_of(files["slipway.db"], "web").status == "succeeded")
    assert deploy_of(files["slipway.db"], "api").status == "succeeded"  # the takeover recovered nothing wrongly
    assert await second.terminate() == 0


async def test_a_killed_owner_is_replaced_by_the_standby_which_recovers_its_deploys(
        fake_slack: FakeSlack, config: Path, files: dict[str, Path],
        serve: Callable[..., SlipwayProcess]) -> None:
    first = serve(config, files["slipway.db"], args=("--lease", "3600"))  # only its death can end it early
    url = await first.start()
    async with SlackSender(url, SIGNING_SECRET, fake_slack) as slack:
        assert (await slack.command("api 2.7.0 staging", "U0DAVE"))[0] == 200
    await until(lambda: files["started"].exists())
    second = serve(config, files["slipway.db"], args=("--lease", "3600"))
    second_url = await second.start()
    await until_role(second, "standby")

    await first.kill()  # kill -9: no drain, no release; the lease would hold for an hour
    await until_role(second, "owner")  # a holder on this machine that no longer runs is not waited for
    assert any("which no longer runs" in line for line in second.log)
    # the new owner recovers the deploy the dead one left deploying, and stops its orphaned engine
    await until(lambda: deploy_of(files["slipway.db"], "api").status == "failed")
    api = deploy_of(files["slipway.db"], "api")
    assert api.status_reason.startswith("deploy engine: interrupted by restart") and "was stopped" in api.status_reason
    async with SlackSender(second_url, SIGNING_SECRET, fake_slack) as slack:
        status, reply = await slack.command("api 2.7.1 staging", "U0DAVE")
        assert status == 200 and "needs no approval" in reply
    files["release"].touch()
    await until(lambda: deploy_of(files["slipway.db"], "api").version == "2.7.1"
                and deploy_of(files["slipway.db"], "api").status == "succeeded")
    assert await second.terminate() == 0


async def test_an_owner_that_stops_heartbeating_is_replaced_after_the_expiry_and_then_stands_down(
        fake_slack: FakeSlack, config: Path, files: dict[str, Path],
        serve: Callable[..., SlipwayProcess]) -> None:
    first = serve(config, files["slipway.db"], args=LEASE)
    await first.start()
    second = serve(config, files["slipway.db"], args=LEASE)
    second_url = await second.start()
    await until_role(second, "standby")

    first.freeze()  # alive but silent: its lease runs out
    try:
        await until_role(second, "owner")
        async with SlackSender(second_url, SIGNING_SECRET, fake_slack) as slack:
            status, reply = await slack.command("web 1.0.0 staging", "U0DAVE")
            assert status == 200 and "needs no approval" in reply
    finally:
        first.thaw()
    # woken, the old owner finds its lease taken: it stops its workers and exits 1, loudly
    assert await asyncio.wait_for(first.process.wait(), 30) == 1
    await first.wait_for_log("LOST THE LEASE")
    assert (await second.healthz())[1]["role"] == "owner"
    await until(lambda: deploy_of(files["slipway.db"], "web").status == "succeeded")
    assert await second.terminate() == 0


async def test_only_the_owner_migrates_the_schema(fake_slack: FakeSlack, config: Path, files: dict[str, Path],
                                                   serve: Callable[..., SlipwayProcess]) -> None:
    db = files["slipway.db"]
    old = Store.open(db, migrate=False)  # a database an older Slipway owns: schema 10, the lease held elsewhere
    old.db["schema_migrations"].create({"version": int, "applied_at": str}, pk="version")
    for number, migration in enumerate(schema.MIGRATIONS[:10], start=1):
        migration(old.db)
        old.db["schema_migrations"].insert({"version": number, "applied_at": "2026-11-01T00:00:00.000+00:00"})
    elsewhere = "another-host/4242/1/0123456789ab"  # another machine: it can only be waited out
    old.db.execute("INSERT INTO lease VALUES ('slipway', ?, ?, ?, ?)",
                   [elsewhere, old.database.now(), old.database.now(), "9999-12-31T00:00:00.000+00:00"])
    old.db.conn.commit()
    old.close()

    slipway = serve(config, db, args=LEASE)
    await slipway.start()
    standby = await until_role(slipway, "standby")
    assert standby["owner"] == elsewhere
    assert schema_version(db) == 10  # a standby migrates nothing

    old = Store.open(db, migrate=False)
    assert old.lease.release(elsewhere)  # the older Slipway stops
    old.close()
    await until_role(slipway, "owner")
    assert schema_version(db) == len(schema.MIGRATIONS)
    assert await slipway.terminate() == 0
