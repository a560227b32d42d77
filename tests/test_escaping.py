"""What a person or an engine writes reaches Slack as text, never as a
mention or a link: ``<!channel>``, ``<!here>``, ``<@U…>``, ``<url|label>``
and ``&`` go through every field they can set, and every surface that shows
that field is checked in what Slack received (the fake Slack's recorded
calls, and the acks, which Slack shows as they are).

Monitors' alert text is checked the same way in tests/test_alerts.py
(``test_monitor_text_cannot_ping_or_forge_links``)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from fake_github import FakeGitHub, Run

from bot.sandbox.fake_server import FakeServer
from bot.sandbox.fake_slack import dm_channel
from bot.slack.blocks import ACTION_APPROVE
from store import Deploy
from tests.conftest import CHANNEL, PYTHON, Harness, config_yaml, engine, said
from tests.test_executor_webhook import SECRET, CiEngine, report

HOSTILE = "<!channel> <!here> <@U0ALICE> <https://evil.example|runbook> & co"
SHOWN = "&lt;!channel&gt; &lt;!here&gt; &lt;@U0ALICE&gt; &lt;https://evil.example|runbook&gt; &amp; co"
# what would ping, mention or link if it reached Slack as written (nobody in
# these scenarios is U0ALICE, so Slipway itself never mentions her)
LIVE = ("<!channel", "<!here", "<@U0ALICE", "<https://evil.example", "<@u0alice")
GITHUB_TOKEN = "ghp_test"
PRINT_AND_FAIL = [PYTHON, "-c", "import sys; print(sys.argv[1]); sys.exit(1)", HOSTILE]


class HealthService(FakeServer):
    """A deployed service whose health endpoint reports a version nobody expects."""

    def web_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/health", self._health)
        return app

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"version": HOSTILE})


@pytest.fixture
async def ci() -> AsyncIterator[CiEngine]:
    running = await CiEngine().start()
    yield running
    await running.stop()


@pytest.fixture
async def health() -> AsyncIterator[HealthService]:
    running = await HealthService().start()
    yield running
    await running.stop()


@pytest.fixture
async def github(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeGitHub]:
    fake = await FakeGitHub(token=GITHUB_TOKEN).start()
    fake.add_workflow("acme/gh", "deploy.yml", conclusion=HOSTILE, statuses=("completed",))
    monkeypatch.setattr(Run, "html_url", property(lambda run: "https://evil.example|runbook"))
    yield fake
    await fake.stop()


@pytest.fixture
def environ() -> dict[str, str]:
    return {"DEPLOY_HOOK_SECRET": SECRET, "DEPLOY_GITHUB_TOKEN": GITHUB_TOKEN}


@pytest.fixture
def config_text(ci: CiEngine, health: HealthService, github: FakeGitHub, slipway_url: str) -> str:
    return config_yaml(
        environments=[
            {"name": "staging"},
            {"name": "canary", "approvals": {"required": 1, "approvers": ["U0BOB", "U0CAROL"]}},
            {"name": "production"},  # the last rung: its deploys get a ship report
        ],
        public_url=slipway_url,
        freeze=[{"environments": ["canary"], "from": "2026-11-01T00:00:00Z", "until": "2026-12-01T00:00:00Z",
                 "reason": "Canary freeze"}],
        services={
            "web": {"deploy": engine()},
            "api": {"deploy": engine()},
            "hook": {"deploy": {"webhook": {"url": ci.url, "secret_env": "DEPLOY_HOOK_SECRET"}, "timeout": "20s"}},
            "shout": {"deploy": {"command": PRINT_AND_FAIL}},
            "checked": {"deploy": engine(), "verify": {"production": {"health_checks": [
                {"url": f"{health.url}/health", "expect_json": {"version": "{version}"}, "deadline": "1s"}]}}},
            "smoked": {"deploy": engine(), "verify": {"production": {"smoke": {"command": PRINT_AND_FAIL}}}},
            "migrator": {"deploy": engine(), "migrations": {"backup": {"command": PRINT_AND_FAIL}}},
            "gh": {"deploy": {"github_actions": {"repository": "acme/gh", "workflow": "deploy.yml",
                                                 "token_env": "DEPLOY_GITHUB_TOKEN", "api_url": github.url,
                                                 "poll_interval": "0.05s"}, "timeout": "30s"}},
        })


@dataclass
class Seen:
    """What Slack was sent in one scenario: the surfaces that show the field, by name."""

    harness: Harness
    ci: CiEngine
    acks: list[str] = field(default_factory=list)
    surfaces: dict[str, str] = field(default_factory=dict)

    async def command(self, text: str, user: str = "U0DAVE", settle: bool = True) -> str:
        status, body = await self.harness.slack.command(text, user)
        assert status == 200, (status, body)
        if settle:  # not while a deploy waits for its engine's report
            await self.harness.settle()
        self.acks.append(body)
        return body

    def everything(self) -> str:
        """Every text and block Slack got, acks and response URLs included."""
        fake = self.harness.fake
        return json.dumps([call.args for call in fake.calls]) + "\n".join(self.acks) + json.dumps(fake.responses)


async def finished(h: Harness, deploy_id: int) -> Deploy:
    await h.settle()
    deploy = h.deploy(deploy_id)
    assert deploy.status in ("failed", "succeeded"), deploy.status
    return deploy


async def thread_of(h: Harness, deploy: Deploy, containing: str) -> str:
    """Every reply in the deploy's thread, once one contains ``containing``."""
    def replies(fake) -> str:
        return "\n".join(m.text + json.dumps(m.blocks) for m in fake.messages.values() if m.thread_ts == deploy.message_ts)
    return await h.fake.wait_for(lambda fake: containing in (text := replies(fake)) and text)


async def message_of(h: Harness, deploy: Deploy, containing: str) -> str:
    """The deploy's own message, once its blocks contain ``containing``."""
    def drawn(fake) -> str:
        message = fake.messages.get((deploy.channel, deploy.message_ts))
        return json.dumps(message.blocks) if message else ""
    return await h.fake.wait_for(lambda fake: containing in (text := drawn(fake)) and text)


async def direct_messages(h: Harness, containing: str) -> str:
    def texts(fake) -> str:
        return "\n".join(m.text for m in fake.channel_messages(dm_channel("U0DAVE")))
    return await h.fake.wait_for(lambda fake: containing in (text := texts(fake)) and text)


# -- the scenarios: each sets one field and names where it shows -----------------------


async def lock_reason(seen: Seen) -> None:
    h = seen.harness
    seen.surfaces["in-channel lock reply"] = said(await seen.command(f'lock web staging 1s "{HOSTILE}"'))
    seen.surfaces["/deploy locks"] = said(await seen.command("locks web"))
    seen.surfaces["/deploy status"] = await seen.command("status web")
    seen.surfaces["a deploy refused by the lock"] = said(await seen.command("web 1.0.0 staging"))
    code, _ = await h.slack.event({"type": "app_home_opened", "user": "U0DAVE", "channel": "D0HOME", "tab": "home"})
    assert code == 200
    view = await h.fake.wait_for(lambda fake: (v := fake.home_views.get("U0DAVE")) and "locked by" in json.dumps(v)
                                 and v)
    seen.surfaces["App Home"] = json.dumps(view)
    h.clock.advance(seconds=2)
    await seen.command("locks")  # reading the locks releases the expired one, and the channel is told
    expired = await h.fake.wait_for(lambda fake: next(
        (m for m in fake.channel_messages(CHANNEL) if ":unlock:" in m.text), None))
    seen.surfaces["the expiry notice in the channel"] = expired.text + json.dumps(expired.blocks)


async def override_reason(seen: Seen) -> None:
    h = seen.harness
    await seen.command(f'api 2.0.0 canary --override "{HOSTILE}"')
    deploy = h.latest_deploy()
    assert deploy.override_reason == HOSTILE  # stored as written; escaped where it is drawn
    seen.surfaces["the request's message, by its Approve button"] = await message_of(h, deploy, "Freeze override")
    seen.surfaces["/deploy show"] = said(await seen.command(f"show {deploy.id}"))


async def webhook_report(seen: Seen) -> None:
    h, ci = seen.harness, seen.ci
    await seen.command("hook 1.0.0 production", settle=False)
    await asyncio.wait_for(ci.arrived.wait(), 10)
    callback = ci.requests[-1]["callback_url"]
    answer = await report(callback, {"status": "failed", "message": HOSTILE,
                                     "log_url": "https://ci.example/run/7?tab=logs&x=1"})
    assert answer == (200, {"ok": True}), (answer, h.deploy(ci.requests[-1]["deploy_id"]).status_reason)
    deploy = await finished(h, ci.requests[-1]["deploy_id"])
    thread = await thread_of(h, deploy, "Ship report")
    seen.surfaces["the engine's note in the thread"] = thread
    assert "<https://ci.example/run/7?tab=logs&amp;x=1|run log>" in thread  # a real http(s) link stays one
    seen.surfaces["the ship report"] = thread[thread.index("Ship report"):]
    seen.surfaces["the deploy's message"] = await message_of(h, deploy, "Failed")
    seen.surfaces["the requester's direct message"] = await direct_messages(h, "hook")
    seen.surfaces["/deploy show"] = said(await seen.command(f"show {deploy.id}"))


async def command_output(seen: Seen) -> None:
    h = seen.harness
    await seen.command("shout 1.0.0 production")
    deploy = await finished(h, h.latest_deploy().id)
    seen.surfaces["the output's code block in the thread"] = await thread_of(h, deploy, "```")


async def health_check_body(seen: Seen) -> None:
    h = seen.harness
    await seen.command("checked 1.0.0 production")
    deploy = await finished(h, h.latest_deploy().id)
    seen.surfaces["the verification note in the thread"] = await thread_of(h, deploy, "*Verification*")
    seen.surfaces["the deploy's message (its failure reason)"] = await message_of(h, deploy, "Failed")
    seen.surfaces["/deploy show"] = said(await seen.command(f"show {deploy.id}"))


async def smoke_output(seen: Seen) -> None:
    h = seen.harness
    await seen.command("smoked 1.0.0 production")
    deploy = await finished(h, h.latest_deploy().id)
    seen.surfaces["the verification note in the thread"] = await thread_of(h, deploy, "*Verification*")
    seen.surfaces["the requester's direct message"] = await direct_messages(h, "smoked")


async def backup_output(seen: Seen) -> None:
    h = seen.harness
    await seen.command("migrator 1.0.0 production --migration")
    deploy = await finished(h, h.latest_deploy().id)
    seen.surfaces["the backup's output in the thread"] = await thread_of(h, deploy, "Backup failed")


async def github_run(seen: Seen) -> None:
    h = seen.harness
    await seen.command("gh 1.0.0 production")
    deploy = await finished(h, h.latest_deploy().id)
    assert deploy.run_url == "https://evil.example|runbook"  # kept as GitHub said; never made a link
    seen.surfaces["the run's conclusion in the thread"] = await thread_of(h, deploy, "Deploy engine")
    seen.surfaces["the deploy's message"] = await message_of(h, deploy, "Failed")
    seen.surfaces["/deploy show"] = said(await seen.command(f"show {deploy.id}"))


def echoed(text: str) -> Callable[[Seen], Awaitable[None]]:
    async def scenario(seen: Seen) -> None:
        seen.surfaces[f"the refusal of /deploy {text}"] = said(await seen.command(text))
    return scenario


FIELDS = [
    # (field, scenario, how Slack must show it)
    ("lock reason", lock_reason, SHOWN),
    ("--override reason", override_reason, SHOWN),
    ("webhook engine message", webhook_report, SHOWN),
    ("command engine output", command_output, SHOWN),
    ("health check body", health_check_body, SHOWN),
    ("smoke test output", smoke_output, SHOWN),
    ("backup output", backup_output, SHOWN),
    ("GitHub run conclusion and URL", github_run, SHOWN),
    ("service name", echoed(f'"{HOSTILE}" 1.0.0'), SHOWN.lower()),  # names are read in lower case
    ("environment name", echoed(f'web 1.0.0 "{HOSTILE}"'), SHOWN.lower()),
    ("version", echoed('web "<!channel>&"'), "&lt;!channel&gt;&amp;"),
    ("option", echoed(f'web 1.0.0 "--{HOSTILE}"'), SHOWN),
    ("stats days", echoed(f'stats web "{HOSTILE}"'), SHOWN),
]


@pytest.mark.parametrize(("name", "scenario", "shown"), FIELDS, ids=[row[0] for row in FIELDS])
async def test_what_people_and_engines_write_reaches_slack_as_text(
        harness: Harness, ci: CiEngine, name: str, scenario, shown: str) -> None:
    seen = Seen(harness, ci)
    await scenario(seen)
    assert seen.surfaces
    for surface, text in seen.surfaces.items():
        assert shown in text, f"{name}: {surface} does not show it literally:\n{text}"
    everything = seen.everything()
    assert not [token for token in LIVE if token in everything], f"{name}: a live mention or link reached Slack"


@pytest.mark.parametrize("log_url", [
    "javascript:alert(1)", "ftp://ci.example/log", "//ci.example/run/7", "https://", "https://evil.example|runbook",
    "https://ci.example/<!channel>", "https://ci.example/run 7", "data:text/html,hi",
])
async def test_a_log_url_that_is_not_a_plain_web_address_is_refused(harness: Harness, ci: CiEngine,
                                                                     log_url: str) -> None:
    status, _ = await harness.slack.command("hook 1.0.0 production", "U0DAVE")
    assert status == 200
    await asyncio.wait_for(ci.arrived.wait(), 10)
    callback, deploy_id = ci.requests[-1]["callback_url"], ci.requests[-1]["deploy_id"]
    status, answer = await report(callback, {"status": "running", "log_url": log_url})
    assert status == 400 and "log_url must be an http(s) URL" in answer["error"]
    assert harness.store.deploys.engine_reports(deploy_id) == []
    assert await report(callback, {"status": "succeeded"}) == (200, {"ok": True})
    await harness.settle()


async def test_slack_escaped_command_text_is_not_escaped_twice(harness: Harness) -> None:
    """Slack sends a slash command's ``&``, ``<``, ``>`` escaped; they are
    escaped once on the way back, not twice (``&amp;amp;``)."""
    reply = said(await harness.command('lock web staging "db &amp; cache &lt;migration&gt;"'))
    assert "“db &amp; cache &lt;migration&gt;”" in reply


async def test_an_approver_clicking_approve_next_to_an_override_reason_is_unaffected(harness: Harness) -> None:
    """The escaped reason sits next to the real Approve button, which still works."""
    await harness.command(f'api 2.0.0 canary --override "{HOSTILE}"')
    deploy = harness.latest_deploy()
    await harness.click(harness.message_of(deploy), "U0BOB", ACTION_APPROVE)
    await harness.click(harness.message_of(deploy), "U0CAROL", ACTION_APPROVE)
    assert harness.deploy(deploy.id).status in ("deploying", "verifying", "succeeded")
