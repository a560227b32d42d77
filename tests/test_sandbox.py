"""``slipway sandbox``: the page's JSON doors drive Slipway through the
whole flow (command, checklist, approvals, canary, verification, alert,
rollback), in-process on port 0; the sandbox's stand-in for Prometheus
answers in Prometheus' shape and "Make the canary fail" aborts a canary;
and the real command prints its URL and answers /healthz. What the page
draws is tested in a real browser (tests/test_sandbox_browser.py)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import aiohttp
import pytest

from bot.deploys.analysis import Prometheus, fill_query
from bot.runtime.cli import check_config
from bot.sandbox import Sandbox, demo
from tests.conftest import quick_sandbox

ROOT = Path(__file__).resolve().parent.parent
DANA, ALICE, BOB = "U0DANA", "U0ALICE", "U0BOB"
HOSTILE = '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2"> & <@U0ALICE>'
# the canary on production, at a test's pace: each stage measured once or twice, the whole rollout in about a second
# a canary that stays at its first step until the test acts on it (each measurement passes)
WATCHED_ROLLOUT = demo.Rollout(pause=120, bake=120, interval=0.1)


class Page:
    """What the browser does, over HTTP: the page's JSON doors."""

    def __init__(self, sandbox: Sandbox, session: aiohttp.ClientSession) -> None:
        self.sandbox = sandbox
        self.session = session

    async def state(self, user: str, since: int = -1) -> dict[str, Any]:
        async with self.session.get(f"{self.sandbox.url}/api/state", params={"user": user, "since": since}) as got:
            assert got.status == 200, await got.text()
            return await got.json()

    async def wait(self, user: str, predicate: Callable[[dict[str, Any]], Any]) -> Any:
        """Long-poll the state, as the page does, until ``predicate`` holds; its value."""
        async with asyncio.timeout(60):
            state = await self.state(user)
            while not (found := predicate(state)):
                state = await self.state(user, since=state["revision"])
            return found

    async def post(self, path: str, body: dict[str, Any], status: int = 200) -> dict[str, Any]:
        async with self.session.post(f"{self.sandbox.url}{path}", json=body) as answer:
            result = await answer.json()
            assert answer.status == status, result
            return result

    async def type(self, user: str, text: str) -> dict[str, Any]:
        return await self.post("/api/command", {"user": user, "text": text})

    async def click(self, user: str, message: dict[str, Any], action_id: str, **extra: Any) -> dict[str, Any]:
        block_id = next(b.get("block_id") for b in message["blocks"] if action_id in _action_ids(b))
        return await self.post("/api/click", {"user": user, "channel": "C0DEPLOYS", "ts": message["ts"],
                                              "action_id": action_id, "block_id": block_id, **extra})


def _action_ids(block: dict[str, Any]) -> list[str]:
    elements = [block.get("accessory")] + list(block.get("elements", []) if block["type"] == "actions" else [])
    return [e["action_id"] for e in elements if e and "action_id" in e]


def text_of(item: dict[str, Any]) -> str:
    """Every piece of text in a message or reply, as Slack sent it."""
    parts = [item.get("text", "")]
    for block in item.get("blocks", []):
        if isinstance(block.get("text"), dict):
            parts.append(block["text"]["text"])
        parts += [f["text"] for f in block.get("fields", [])]
        parts += [e["text"] for e in block.get("elements", []) if isinstance(e.get("text"), str)]
    return "\n".join(parts)


def deploy_message(header: str, status: str | None = None) -> Callable[[dict[str, Any]], Any]:
    """A predicate: the channel message headed ``header`` (showing ``status``)."""
    def find(state: dict[str, Any]) -> dict[str, Any] | None:
        for message in state["messages"]:
            if message["blocks"] and message["blocks"][0]["text"]["text"] == header:
                if status is None or status in text_of(message):
                    return message
        return None
    return find


def reply_about(needle: str) -> Callable[[dict[str, Any]], Any]:
    return lambda state: next((r for r in state["replies"] if needle in text_of(r)), None)


@pytest.fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[Sandbox]:
    running = await quick_sandbox(tmp_path / "sandbox.db", tmp_path / "demo-state").start()
    yield running
    await running.stop()


@pytest.fixture
async def page(sandbox: Sandbox) -> AsyncIterator[Page]:
    async with aiohttp.ClientSession() as session:
        yield Page(sandbox, session)


async def demo_version(page: Page, environment: str) -> str:
    async with page.session.get(f"{page.sandbox.url}/demo/health/{environment}") as answer:
        return (await answer.json())["version"]


async def test_the_whole_flow_from_the_page(page: Page) -> None:
    assert await demo_version(page, "production") == demo.STARTING_VERSION

    # staging needs no approval: the request deploys, and is verified, at once
    await page.type(DANA, "/deploy demo 1.0.0 staging")
    told = await page.wait(DANA, reply_about("needs no approval"))
    assert told["command"] == "/deploy demo 1.0.0 staging" and not told["public"]
    assert reply_about("needs no approval")(await page.state(ALICE)) is None, "an ephemeral reaches only Dana"
    await page.wait(DANA, deploy_message("Deploy demo 1.0.0 to staging", "Succeeded"))
    assert await demo_version(page, "staging") == "1.0.0"

    # production: the text after /deploy is enough; a checklist and two approvals
    await page.type(DANA, "demo 1.0.0 production")
    request = await page.wait(DANA, deploy_message("Deploy demo 1.0.0 to production", "Awaiting approval"))
    for block in [b for b in request["blocks"] if "checklist_tick" in _action_ids(b)]:
        option = block["accessory"]["options"][0]["value"]
        await page.post("/api/click", {"user": DANA, "channel": "C0DEPLOYS", "ts": request["ts"],
                                       "action_id": "checklist_tick", "block_id": block["block_id"],
                                       "selected": [option]})
    request = await page.wait(DANA, deploy_message("Deploy demo 1.0.0 to production", "3 of 3 ticked"))

    await page.click(DANA, request, "deploy_approve")  # the requester may not approve her own deploy
    refusal = await page.wait(DANA, reply_about("approve"))
    assert refusal["command"] is None and reply_about("approve")(await page.state(ALICE)) is None

    await page.click(ALICE, request, "deploy_approve")
    request = await page.wait(ALICE, deploy_message("Deploy demo 1.0.0 to production", "1 of 2"))
    await page.click(BOB, request, "deploy_approve")
    deployed = await page.wait(BOB, deploy_message("Deploy demo 1.0.0 to production", "Succeeded"))
    assert await demo_version(page, "production") == "1.0.0"
    assert "1 of 1 check(s) passed" in text_of(deployed)
    running = {row["environment"]: row["version"] for row in (await page.state(BOB))["service"]["running"]}
    assert running == {"staging": "1.0.0", "production": "1.0.0"}

    # a monitor's alert lands in the deploy's thread, with a Rollback button
    received = await page.post("/api/alert", {})
    assert received["received"] == 1

    def alert_in_thread(state: dict[str, Any]) -> dict[str, Any] | None:
        message = deploy_message("Deploy demo 1.0.0 to production")(state)
        return next((r for r in message["replies"] if "PAGE" in text_of(r) and "demo" in text_of(r)
                     and any("deploy_rollback" in _action_ids(b) for b in r["blocks"])), None)

    alert = await page.wait(BOB, alert_in_thread)
    assert "<!subteam^SSRE>" in text_of(alert), "a page mentions the on-call group"

    await page.click(BOB, alert, "deploy_rollback")
    await page.wait(BOB, deploy_message(f"Deploy demo {demo.STARTING_VERSION} to production", "Succeeded"))
    assert await demo_version(page, "production") == demo.STARTING_VERSION
    await page.wait(BOB, deploy_message("Deploy demo 1.0.0 to production", "Rolled back"))


async def ship_to_production(page: Page, version: str) -> dict[str, Any]:
    """Dana ships ``version`` to staging, then asks for production and ticks
    its checklist; Alice and Bob approve. The production message, approved."""
    await page.type(DANA, f"/deploy demo {version} staging")
    await page.wait(DANA, deploy_message(f"Deploy demo {version} to staging", "Succeeded"))
    header = f"Deploy demo {version} to production"
    await page.type(DANA, f"/deploy demo {version} production")
    request = await page.wait(DANA, deploy_message(header, "Awaiting approval"))
    for block in [b for b in request["blocks"] if "checklist_tick" in _action_ids(b)]:
        await page.post("/api/click", {"user": DANA, "channel": "C0DEPLOYS", "ts": request["ts"],
                                       "action_id": "checklist_tick", "block_id": block["block_id"],
                                       "selected": [option["value"] for option in block["accessory"]["options"]]})
    request = await page.wait(DANA, deploy_message(header, "3 of 3 ticked"))
    await page.click(ALICE, request, "deploy_approve")
    request = await page.wait(ALICE, deploy_message(header, "1 of 2"))
    await page.click(BOB, request, "deploy_approve")
    return await page.wait(BOB, deploy_message(header, "Approved by"))


def thread_line(header: str, needle: str) -> Callable[[dict[str, Any]], Any]:
    """A predicate: the reply in the thread of the message headed ``header`` that says ``needle``."""
    def find(state: dict[str, Any]) -> dict[str, Any] | None:
        message = deploy_message(header)(state)
        return next((r for r in message["replies"] if needle in text_of(r)), None) if message else None
    return find


def running(state: dict[str, Any], environment: str) -> dict[str, Any]:
    return next(row for row in state["service"]["running"] if row["environment"] == environment)


async def prometheus_answer(page: Page, query: str, status: int = 200) -> dict[str, Any]:
    async with page.session.get(f"{page.sandbox.url}/api/v1/query", params={"query": query}) as answer:
        assert answer.status == status and answer.content_type == "application/json"
        return await answer.json()


async def test_the_sandbox_answers_the_canarys_queries_as_prometheus_would(page: Page) -> None:
    """The demo's analysis asks the sandbox, as it would ask Prometheus: the
    stable rate for the stable track, the canary's for the canary track
    (both low), in Prometheus' exact shape, which Slipway's own client reads."""
    config = page.sandbox.config
    assert config.prometheus_url == page.sandbox.url
    check = config.analysis.checks["error_rate"]
    values = {"service": "demo", "environment": "production", "version": "1.0.0", "previous_version": "0.9.0"}
    canary, stable = fill_query(check.query, **values), fill_query(check.baseline_query, **values)
    assert 'track="canary"' in canary and 'track="stable"' in stable

    before = time.time()
    answer = await prometheus_answer(page, canary)
    assert answer == {"status": "success", "data": {"resultType": "vector",
                                                    "result": [{"metric": {}, "value": [ANY, "0.005"]}]}}
    stamp = answer["data"]["result"][0]["value"][0]
    assert isinstance(stamp, float) and before - 1 <= stamp <= time.time() + 1, "a sample's time: unix seconds"
    assert (await prometheus_answer(page, stable))["data"]["result"][0]["value"][1] == "0.004"
    assert (await prometheus_answer(page, 'up{job="demo"}'))["data"] == {"resultType": "vector", "result": []}, \
        "a query about anything else has no data"
    refused = await prometheus_answer(page, " ", status=400)
    assert refused["status"] == "error" and refused["errorType"] == "bad_data"

    prometheus = Prometheus(page.sandbox.url, timeout=5)
    try:
        assert await prometheus.instant(canary) == demo.CANARY_ERROR_RATE
        assert await prometheus.instant(stable) == demo.STABLE_ERROR_RATE
        assert await prometheus.instant('up{job="demo"}') is None
    finally:
        await prometheus.close()


async def test_a_canary_on_production_goes_through_its_stages(page: Page) -> None:
    """Production takes the demo as a canary: each step is one call of the
    demo's engine, every stage passes its error-rate check, then the bake."""
    production = "Deploy demo 1.0.0 to production"
    await ship_to_production(page, "1.0.0")
    done = await page.wait(BOB, deploy_message(production, "Succeeded"))
    assert "*Rollout* (canary): 10% ✓ → 50% ✓ → 100% ✓ → bake ✓" in text_of(done)
    for stage in ("10%", "50%", "bake"):
        await page.wait(BOB, thread_line(production, f":white_check_mark: {stage}: passed (error_rate 0.005)"))
    await page.wait(BOB, thread_line(production, ":white_check_mark: 100%: passed"))
    verified = await page.wait(BOB, thread_line(production, "*Verification*"))
    assert "version=1.0.0" in text_of(verified), "after the first step, the health check reaches the canary"
    state = await page.state(BOB)
    assert running(state, "production") == {"environment": "production", "version": "1.0.0", "canary": None}
    assert await demo_version(page, "production") == "1.0.0"


async def test_make_the_canary_fail_aborts_it(tmp_path: Path) -> None:
    """"Make the canary fail" raises the canary's error rate: its next
    measurement fails (failure_limit 1), the evidence lands in the thread,
    Slipway aborts at the stage it was in (all traffic back to 0.9.0), locks
    production and blocks the version. The next deploy starts healthy."""
    sandbox = await quick_sandbox(tmp_path / "sandbox.db", tmp_path / "demo-state", WATCHED_ROLLOUT).start()
    try:
        async with aiohttp.ClientSession() as session:
            page = Page(sandbox, session)
            refused = await page.post("/api/canary/fail", {}, status=409)
            assert "No canary to fail" in refused["error"]

            production = "Deploy demo 1.0.0 to production"
            await ship_to_production(page, "1.0.0")
            watched = await page.wait(BOB, deploy_message(production, "10% ⏳ (analysing"))
            assert "50% → 100% → bake" in text_of(watched)
            await page.wait(BOB, deploy_message(production, "error_rate 0.005 (stable 0.004"))
            state = await page.state(BOB)
            assert running(state, "production")["version"] == demo.STARTING_VERSION
            assert running(state, "production")["canary"] == {"version": "1.0.0", "weight": 10}

            failing = await page.post("/api/canary/fail", {})
            assert failing["version"] == "1.0.0" and failing["error_rate"] == demo.FAILING_CANARY_ERROR_RATE

            evidence = await page.wait(BOB, thread_line(production, ":x: 10%: error_rate 0.2"))
            assert "2× stable 0.004" in text_of(evidence)
            await page.wait(BOB, thread_line(production, "Aborting at 10%"))
            aborted = await page.wait(BOB, deploy_message(production, "Failed — aborted at 10%"))
            assert "10% ⏹ → 50% → 100% → bake" in text_of(aborted)
            assert "nothing to roll back" in text_of(aborted)
            assert [a for block in aborted["blocks"] for a in _action_ids(block)] == [], \
                "no Rollback, Promote or Abort any more: the stable version kept serving"
            state = await page.state(BOB)
            assert running(state, "production") == {"environment": "production",
                                                    "version": demo.STARTING_VERSION, "canary": None}

            await page.type(BOB, "/deploy locks demo")
            locks = await page.wait(BOB, reply_about("aborted at 10%"))
            assert "demo on production: locked by" in text_of(locks), text_of(locks)
            assert "*Blocked versions*" in text_of(locks) and "demo 1.0.0 on production" in text_of(locks)

            # the demo can be replayed: a new deploy's canary is healthy again
            await page.type(BOB, "/deploy unlock demo production")
            await page.wait(BOB, reply_about("released"))
            await page.type(DANA, "/deploy demo 1.0.1 staging")
            await page.wait(DANA, deploy_message("Deploy demo 1.0.1 to staging", "Succeeded"))
            await page.type(DANA, "/deploy demo 1.0.1 production")
            await page.wait(DANA, deploy_message("Deploy demo 1.0.1 to production", "Awaiting approval"))
            query = sandbox.config.analysis.checks["error_rate"].query
            assert (await prometheus_answer(page, query))["data"]["result"][0]["value"][1] == "0.005"
    finally:
        await sandbox.stop()


async def test_slipways_direct_messages_reach_their_person_and_only_news(page: Page) -> None:
    """Slipway tells a requester of her deploy's end by DM (a D… channel the
    page does not otherwise draw); the page shows it to her alone. The
    history the sandbox starts from is old news: it is never DMed."""
    await page.type(DANA, "/deploy demo 1.0.0 staging")
    await page.wait(DANA, deploy_message("Deploy demo 1.0.0 to staging", "Succeeded"))
    told = await page.wait(DANA, lambda state: next(
        (m for m in state["direct"] if "1.0.0 to staging) succeeded" in m["text"]), None))
    assert told["seq"] > 0 and not told["replies"]
    await page.sandbox.slipway.tasks.wait_idle()
    state = await page.state(DANA)
    assert state["direct_channel"] == "D0DANA"
    assert [m["text"] for m in state["direct"] if demo.STARTING_VERSION in m["text"].split(" to ")[0]] == [], \
        "the seeded deploys of 0.9.0 were not DMed about"
    assert (await page.state(ALICE))["direct"] == [], "Dana's DMs are hers alone"


async def test_a_bad_command_gets_slipways_own_refusal(page: Page) -> None:
    await page.type(DANA, "/deploy nosuch 1.0.0")
    unknown = await page.wait(DANA, reply_about("nosuch"))
    assert "demo" in unknown["text"], "the refusal names the services there are"

    await page.type(DANA, "/deploy demo 2.0.0 production")
    ladder = await page.wait(DANA, reply_about("2.0.0"))
    assert "staging" in ladder["text"]

    await page.type(DANA, "/deplo demo 1.0.0")
    await page.wait(DANA, reply_about("`/deplo` is not a valid command"))

    refused = await page.post("/api/command", {"user": "U0MALLORY", "text": "help"}, status=400)
    assert "U0MALLORY" in refused["error"] and "Dana" in refused["error"]
    refused = await page.post("/api/command", {"user": DANA}, status=400)
    assert refused["error"] == "text must be a string"


async def test_clicks_on_what_is_gone_are_refused_with_a_reason(page: Page) -> None:
    refused = await page.post("/api/click", {"user": DANA, "channel": "C0DEPLOYS", "ts": "1.2",
                                             "action_id": "deploy_approve", "block_id": "deploy:1"}, status=404)
    assert "no message" in refused["error"]
    refused = await page.post("/api/click", {"user": DANA, "reply": 99, "action_id": "deploy_rollback"}, status=400)
    assert "no reply 99" in refused["error"]


async def test_an_ephemeral_rollback_offer_can_be_confirmed(page: Page) -> None:
    """``/deploy rollback`` answers with a button only the asker sees; its
    click reaches Slipway as a click on an ephemeral message."""
    await page.type(DANA, "/deploy demo 1.0.0 staging")
    await page.wait(DANA, deploy_message("Deploy demo 1.0.0 to staging", "Succeeded"))
    await page.type(DANA, "/deploy rollback demo staging")
    offer = await page.wait(DANA, reply_about("demo staging: 1.0.0 → 0.9.0"))
    block = next(b for b in offer["blocks"] if b["type"] == "actions")
    await page.post("/api/click", {"user": DANA, "reply": offer["seq"], "action_id": "deploy_rollback",
                                   "block_id": block["block_id"]})
    await page.wait(DANA, deploy_message("Deploy demo 0.9.0 to staging", "Succeeded"))
    assert await demo_version(page, "staging") == "0.9.0"


async def test_hostile_alert_text_reaches_the_page_as_data_under_a_strict_policy(page: Page) -> None:
    """Monitor text must never become HTML. Slipway escapes it for Slack; the
    page receives it as data and escapes it again when drawing (checked in a
    real browser in test_sandbox_browser.py); and the page's policy runs no
    script but its own file, so even a slip could not run one."""
    await page.sandbox.post_alert({"id": "hostile", "service": "demo", "environment": "production",
                                   "metric": "error_rate", "value": 0.5, "baseline": 0.01, "summary": HOSTILE})
    alert = await page.wait(DANA, lambda state: next((m for m in state["messages"] if "pwned" in text_of(m)), None))
    assert "&lt;script&gt;window.pwned = 1&lt;/script&gt;" in text_of(alert)
    assert "&lt;@U0ALICE&gt;" in text_of(alert), "a monitor cannot forge a mention either"
    async with page.session.get(page.sandbox.url + "/") as index:
        policy = index.headers["Content-Security-Policy"]
        html = await index.text()
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert re.findall(r"<script[^>]*>", html) == ['<script src="/static/sandbox.js" defer>']


async def test_only_this_machines_browser_may_act(page: Page) -> None:
    url = page.sandbox.url
    async with page.session.post(f"{url}/api/command", data='{"user": "U0DANA", "text": "help"}',
                                 headers={"Content-Type": "text/plain"}) as answer:
        assert answer.status == 415  # a form or a no-cors fetch from another site cannot send JSON
    async with page.session.post(f"{url}/api/command", json={"user": DANA, "text": "help"},
                                 headers={"Origin": "https://evil.example"}) as answer:
        assert answer.status == 403 and "evil.example" in (await answer.json())["error"]
    async with page.session.get(f"{url}/api/state", params={"user": DANA},
                                headers={"Host": "evil.example"}) as answer:
        assert answer.status == 403  # DNS rebinding: a foreign name pointed at 127.0.0.1
    assert not page.sandbox.replies, "nothing refused reached Slipway"


async def test_a_state_request_waits_for_something_new(page: Page) -> None:
    first = await page.state(DANA)
    waiting = asyncio.ensure_future(page.state(DANA, since=first["revision"]))
    await page.type(DANA, "help")
    later = await waiting
    assert later["revision"] > first["revision"]


async def test_a_kept_database_carries_the_history_into_the_next_run(tmp_path: Path) -> None:
    first = await quick_sandbox(tmp_path / "kept.db", tmp_path / "state").start()
    try:
        async with aiohttp.ClientSession() as session:
            page = Page(first, session)
            await page.type(DANA, "demo 1.0.0 staging")
            earlier = await page.wait(DANA, deploy_message("Deploy demo 1.0.0 to staging", "Succeeded"))
    finally:
        await first.stop()
    second = await quick_sandbox(tmp_path / "kept.db", tmp_path / "state").start()
    try:
        async with aiohttp.ClientSession() as session:
            page = Page(second, session)
            state = await page.state(DANA)
            assert state["messages"] == [] and state["replies"] == [], "the channel starts empty"
            assert {r["environment"]: r["version"] for r in state["service"]["running"]} == {
                "staging": "1.0.0", "production": demo.STARTING_VERSION}
            await page.type(DANA, "history demo staging")
            history = await page.wait(DANA, reply_about("Recent deploys of demo"))
            assert len(re.findall(r"#\d+", history["text"])) == 2, "the seeded deploy and ours; no second seed"
            await page.type(DANA, "demo 1.0.0 production")  # the ladder remembers staging
            request = await page.wait(DANA, deploy_message("Deploy demo 1.0.0 to production", "Awaiting approval"))
            # the kept deploys name messages of the first run: new ones must never be taken for them
            assert float(request["ts"]) > float(earlier["ts"])
    finally:
        await second.stop()


async def test_the_sandbox_binds_loopback_only(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="loopback only"):
        await Sandbox(tmp_path / "db", tmp_path / "state").start(host="0.0.0.0")


def test_the_demo_config_passes_check_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "demo.yml"
    path.write_text(demo.config_text("http://127.0.0.1:8000", tmp_path / "state dir"))
    assert check_config(str(path)) == 0
    assert "1 service(s), ladder staging → production" in capsys.readouterr().out


class SandboxProcess:
    """``slipway sandbox`` as a real process; ``url`` once it printed it."""

    def __init__(self, *args: str) -> None:
        self.args = args
        self.process: asyncio.subprocess.Process | None = None
        self.url = ""

    async def start(self) -> str:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot.runtime.cli", "sandbox", *self.args, cwd=ROOT,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        assert self.process.stdout is not None
        async with asyncio.timeout(30):
            while line := (await self.process.stdout.readline()).decode():
                if match := re.match(r"Slipway sandbox: (http://127\.0\.0\.1:\d+)/$", line.strip()):
                    self.url = match.group(1)
                    return self.url
        stderr = await self.process.stderr.read() if self.process.stderr else b""
        raise AssertionError(f"slipway sandbox exited ({await self.process.wait()}) before printing its URL:\n"
                             f"{stderr.decode()}")

    async def stop(self) -> int:
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            return await self.process.wait()


async def test_slipway_sandbox_prints_its_url_and_answers_healthz(tmp_path: Path) -> None:
    sandbox = SandboxProcess("--port", "0", "--db", str(tmp_path / "kept.db"))
    url = await sandbox.start()
    try:
        async with aiohttp.ClientSession() as session, session.get(f"{url}/healthz") as answer:
            health = await answer.json()
        assert answer.status == 200 and health["status"] == "ok" and health["slipway"]["database"] == "ok"
    finally:
        assert await sandbox.stop() == 0  # SIGTERM stops it cleanly
    assert (tmp_path / "kept.db").exists(), "--db keeps the history"


async def test_slipway_sandbox_refuses_a_public_address() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.runtime.cli", "sandbox", "--host", "0.0.0.0", "--port", "0", cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={**os.environ})
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 2 and out == b""
    assert "loopback only" in err.decode() and "0.0.0.0" in err.decode()


async def test_slipway_sandbox_says_so_when_its_port_is_taken() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot.runtime.cli", "sandbox", "--port", str(port), cwd=ROOT,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 2, (out, err)
    assert f"cannot listen on 127.0.0.1:{port}" in err.decode() and "--port 0" in err.decode()
