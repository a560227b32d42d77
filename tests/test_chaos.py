"""Chaos: a scripted flow of deploys against a real ``slipway serve``,
killed (SIGKILL) at random points and restarted on the same database and
the same fake Slack, then checked against what the issue promises.

The flow, as people would play it: staging deploys of two services (one
engine that fails), a production request left waiting, two production
deploys through checklist ticks and two approvals each, and a rollback.
After KILLS of its 16 actions, chosen by a seeded ``random.Random``,
Slipway is killed after a short random pause (that pause is the point: it
chooses where the kill lands, in a request, an engine run, an outbox
delivery...). A new process
takes over at once (the dead holder of the lease runs on this machine).
The script goes on as Slack and the people would: a command whose ack
never came is sent again with the same ``trigger_id`` (as Slack retries),
a click acked just before the kill (its decision lost with the process) is
clicked again, and a deploy the kill interrupted is requested again.

Then, once Slipway has settled, the invariants, read from the database:

- every deploy settled: finished, or waiting for approval with none given;
- every deploy knows its message and its permalink, and the message in
  Slack is exactly what its stored state draws, its rollback offer included;
- a rollback's start was said in the thread of the deploy it undoes;
- every direct message the requester is owed (one per news state the
  audit log records) arrived, to them, and none that is not owed;
- nothing was posted twice except within the at-least-once window: a
  post Slack took just before a kill, repeated after the restart; at most
  one per kill, each straddling a kill;
- the outbox has nothing left to send and gave nothing up.

The seed is printed (``-s`` shows it, a failure names it), with every kill
point; ``SLIPWAY_CHAOS_SEED=N`` replays it (the kills land after the same
actions and the same pauses; the rest is timing). Deselect with
``-m "not chaos"``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.config import parse_config
from bot.deploys.rollbacks import RollbackPlans
from bot.deploys.workflow import DeployWorkflow
from bot.events import EventBus
from bot.sandbox.fake_slack import FakeSlack, SlackSender, dm_channel
from bot.slack.blocks import ACTION_APPROVE, ACTION_CHECKLIST, ACTION_ROLLBACK
from bot.slack.deploy_messages import DeployMessageView
from store import Deploy, Store, deploy_message_key, utc_now
from store.outbox import FAILED
from tests.conftest import CHANNEL, SIGNING_SECRET, config_yaml, engine, said
from tests.processes import ROOT, SlipwayProcess
from tests.test_standby import until_role

pytestmark = pytest.mark.chaos

KILLS = 8  # kill -9 and restart this many times in one run
MAX_PAUSE = 0.8  # seconds: a kill lands up to this long after the action it follows
LEASE = ("--lease", "2")
FINAL = {"succeeded", "failed", "rejected", "cancelled", "expired", "rolled_back"}
NEWS = {"succeeded", "failed", "rejected", "expired", "rolled_back", "cancelled"}  # bot/deploys/nudges.py
DM_MARKS = {":large_green_circle:": "succeeded", ":red_circle:": "failed", ":no_entry:": "rejected",
            ":hourglass:": "expired", ":rewind:": "rolled_back", ":heavy_multiplication_x:": "cancelled"}
INTERRUPTED = "interrupted by restart"  # the one failure a kill may cause a command deploy


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "slipway.yml"
    path.write_text(config_yaml(
        production={"requires": "staging",
                    "approvals": {"required": 2, "approvers": ["U0ALICE", "U0BOB", "U0CAROL"]},
                    "checklist": ["Migrations tested on staging", "Rollback plan documented"]},
        services={"api": {"deploy": engine()}, "web": {"deploy": engine()},
                  "db": {"deploy": engine("--exit", "1")}}))
    return path


# The outbox of `slipway serve` paces each channel at one call a second, as
# Slack asks. The flow's ~80 posts and edits would then take over a minute,
# so, as the in-process harness (0.01 s) and the sandbox (0.25 s) do, the
# served Slipway paces at PACE: a sitecustomize module on its PYTHONPATH
# lowers the Outbox's interval and changes nothing else.
PACE = 0.05
FAST_OUTBOX = f"""\
from bot.slack import outbox

_init = outbox.Outbox.__init__


def _paced(self, *args, **kwargs):
    kwargs["interval"] = min(kwargs.get("interval", 1.0), {PACE})
    _init(self, *args, **kwargs)


outbox.Outbox.__init__ = _paced
"""


@pytest.fixture
def fast_outbox(tmp_path: Path) -> dict[str, str]:
    """The environment of a ``slipway serve`` whose outbox paces at :data:`PACE`."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(FAST_OUTBOX)
    return {"PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}


@dataclass
class Kill:
    action: int
    pause: float
    after: str = ""  # the action it followed
    calls: int = 0  # how many Web API calls the fake Slack had seen when the process died

    def __str__(self) -> str:
        return f"action {self.action} ({self.after}) +{self.pause:.2f}s, after Slack call {self.calls}"


class Chaos:
    """One Slipway at a time on ``db``, killed where the plan says; the
    script's actions, sent again or redone where a kill swallowed them."""

    def __init__(self, serve: Callable[..., SlipwayProcess], config: Path, db: Path, fake: FakeSlack,
                 seed: int, actions: int, env: dict[str, str]) -> None:
        self.serve, self.config_path, self.db, self.fake, self.env = serve, config, db, fake, env
        self.config = parse_config(config.read_text())
        self.seed = seed
        rng = random.Random(seed)
        self.plan = {action: Kill(action, round(rng.uniform(0, MAX_PAUSE), 3))
                     for action in sorted(rng.sample(range(1, actions + 1), KILLS))}
        self.kills: list[Kill] = []
        self.steps = 0  # every action sent
        self.actions = 0  # the flow's own actions (not those sent again)
        self.generation = 0  # bumped by every kill
        self.up = asyncio.Event()
        self.process: SlipwayProcess | None = None
        self.processes: list[SlipwayProcess] = []  # every one started, for what their logs tell
        self.sender: SlackSender | None = None
        self.store: Store | None = None  # the test's own reading connection; it never writes
        self._killing = asyncio.Lock()
        self._killers: list[asyncio.Task[None]] = []
        self._triggers = 0
        self.t0 = asyncio.get_running_loop().time()

    def __str__(self) -> str:
        return f"seed {self.seed}; kills: " + "; ".join(map(str, self.kills))

    # -- the process --------------------------------------------------------------

    async def start(self) -> None:
        self.process = self.serve(self.config_path, self.db, args=LEASE, env=self.env)
        self.processes.append(self.process)
        url = await self.process.start()
        await until_role(self.process, "owner")
        if self.sender is None:
            self.sender = await SlackSender(url, SIGNING_SECRET, self.fake).__aenter__()
        self.sender.bot_url = url
        if self.store is None:
            self.store = Store.open(self.db, migrate=False)
        self.up.set()

    async def close(self) -> None:
        await asyncio.gather(*self._killers, return_exceptions=True)  # a failed one was raised already
        if self.sender is not None:
            await self.sender.__aexit__()
        if self.store is not None:
            self.store.close()

    def step(self, what: str, again: bool) -> None:
        """A person's action was just sent: kill Slipway a little later, if
        the plan says so here. The plan counts the flow's own actions, not
        those done ``again`` because a kill swallowed them, so a seed puts
        its kills at the same places in the flow."""
        self.steps += 1
        self.actions += 0 if again else 1
        print(f"chaos: {asyncio.get_running_loop().time() - self.t0:6.2f}s step {self.steps}"
              f"{' (again)' if again else f' = action {self.actions}'}: {what}", flush=True)
        kill = None if again else self.plan.get(self.actions)
        if kill is not None:
            kill.after = what
            self._killers.append(asyncio.ensure_future(self._kill_later(kill)))

    async def _kill_later(self, kill: Kill) -> None:
        await asyncio.sleep(kill.pause)  # where the kill lands: the point of the test
        async with self._killing:
            assert self.process is not None
            self.up.clear()
            await self.process.kill()
            kill.calls = len(self.fake.calls)
            self.kills.append(kill)
            self.generation += 1
            print(f"chaos: seed {self.seed}: kill -9 at {kill}", flush=True)
            await self.start()

    async def settle_kills(self) -> None:
        """Wait for the kills already scheduled (the last action's included)."""
        for killer in self._killers:
            await killer

    # -- what people do -----------------------------------------------------------

    async def post(self, body: str) -> tuple[int, str, int]:
        """POST a request to whichever Slipway runs, as Slack would: sent
        again when the connection failed (the process died under it).
        Returns the status, the body and the generation that answered."""
        assert self.sender is not None
        while True:
            await self.until(self.up.is_set, "Slipway to be back")
            generation = self.generation
            try:
                status, text = await self.sender.post(body)
            except (aiohttp.ClientError, TimeoutError):
                await self.until(lambda g=generation: self.generation != g and self.up.is_set(), "a restart")
                continue
            if status == 200:
                return status, text, generation
            assert status == 503, (status, text, str(self))  # a standby's answer; Slack retries
            await asyncio.sleep(0.1)

    async def request(self, text: str, user: str, again: bool = False) -> Deploy:
        """``/deploy {text}`` as ``user``; the deploy it recorded."""
        assert self.sender is not None and self.store is not None
        self._triggers += 1
        trigger = f"chaos.{self.seed}.{self._triggers}"
        body = self.sender.command_body(text, user, trigger_id=trigger)
        self.step(f"/deploy {text} by {user}", again)
        _, reply, _ = await self.post(body)
        # recorded before the ack; a request sent again is answered as the first time
        deploy = self.store.deploys.find_by_trigger(trigger)
        assert deploy is not None and said(reply).startswith(f"Deploy #{deploy.id} "), (reply, str(self))
        return deploy

    async def click(self, deploy_id: int, user: str, action_id: str, done: Callable[[Deploy], bool],
                    again: bool = False, **kwargs: Any) -> None:
        """Click ``action_id`` on the deploy's message until ``done(deploy)``:
        a click is acked before it is decided, so a kill right after the ack
        loses it; the person sees nothing change and clicks again."""
        assert self.sender is not None and self.store is not None
        key = deploy_message_key(deploy_id)
        await self.until(lambda: self.store.outbox.message_ts(key) is not None, f"deploy #{deploy_id}'s message")
        while not done(self.store.deploys.get(deploy_id)):
            message = self.fake.messages[(CHANNEL, self.store.outbox.message_ts(key))]
            body = self.sender.click_body(message, user, action_id, **kwargs)
            self.step(f"{action_id} on #{deploy_id} by {user}", again)
            again = True
            _, _, generation = await self.post(body)
            await self.until(lambda g=generation: done(self.store.deploys.get(deploy_id))
                             or (self.generation != g and self.up.is_set()),
                             f"{action_id} by {user} on #{deploy_id} to be decided")

    async def finished(self, deploy_id: int) -> Deploy:
        assert self.store is not None
        return await self.until(lambda: (d := self.store.deploys.get(deploy_id)).status in FINAL and d,
                                 f"deploy #{deploy_id} to finish", timeout=60)

    def redone_if_interrupted(self, deploy: Deploy) -> bool:
        """Whether the deploy must be asked for again: a kill interrupted its engine."""
        if deploy.status == "succeeded":
            return False
        assert deploy.status == "failed" and INTERRUPTED in (deploy.status_reason or ""), (
            f"#{deploy.id} {deploy.status}: {deploy.status_reason} ({self})")
        return True

    async def deploy(self, service: str, version: str, user: str) -> Deploy:
        """A staging deploy (no approval) that succeeds, asked again if a kill interrupted it."""
        for attempt in range(KILLS + 1):
            deploy = await self.request(f"{service} {version} staging", user, again=attempt > 0)
            deploy = await self.finished(deploy.id)
            if not self.redone_if_interrupted(deploy):
                return deploy
        raise AssertionError(f"{service} {version} never succeeded on staging ({self})")

    async def ship(self, service: str, version: str, requester: str) -> Deploy:
        """A production request, both checklist items ticked by Alice, approved by Alice and Bob."""
        for attempt in range(KILLS + 1):
            again = attempt > 0
            deploy = await self.request(f"{service} {version} production", requester, again)
            for position in (0, 1):
                await self.click(deploy.id, "U0ALICE", ACTION_CHECKLIST,
                                 lambda d, p=position: d.status != "awaiting_approval" or d.checklist[p].ticked,
                                 again, block_id=f"checklist:{deploy.id}:{position}", selected=True)
            for approver in ("U0ALICE", "U0BOB"):
                await self.click(deploy.id, approver, ACTION_APPROVE,
                                 lambda d, a=approver: any(x.user_id == a for x in d.approvals), again)
            deploy = await self.finished(deploy.id)
            if not self.redone_if_interrupted(deploy):
                return deploy
        raise AssertionError(f"{service} {version} never succeeded on production ({self})")

    async def roll_back(self, current: Deploy, user: str) -> Deploy:
        """Click Rollback on ``current``'s message; again if a kill interrupted the rollback."""
        assert self.store is not None
        key = deploy_message_key(current.id)

        def offered() -> bool:
            ts = self.store.outbox.message_ts(key)
            message = self.fake.messages.get((CHANNEL, ts)) if ts else None
            return message is not None and ACTION_ROLLBACK in json.dumps(message.blocks)

        def rollbacks() -> list[Deploy]:
            return [d for d in self.store.deploys.history(current.service, current.environment)
                    if d.rollback_of == current.id]

        for attempt in range(KILLS + 1):
            await self.until(offered, f"#{current.id}'s message to offer a rollback")
            known = len(rollbacks())
            await self.click(current.id, user, ACTION_ROLLBACK, lambda _, n=known: len(rollbacks()) > n,
                             attempt > 0)
            rollback = await self.finished(max(rollbacks(), key=lambda d: d.id).id)
            if not self.redone_if_interrupted(rollback):
                return rollback
        raise AssertionError(f"the rollback of #{current.id} never succeeded ({self})")

    async def until(self, condition: Callable[[], Any], what: str, timeout: float = 30.0,
                    explain: Callable[[], Any] = lambda: "") -> Any:
        deadline = asyncio.get_running_loop().time() + timeout
        while not (value := condition()):
            for killer in self._killers:  # a restart that failed fails the test now, not at a deadline
                if killer.done() and killer.exception() is not None:
                    raise killer.exception()
            assert asyncio.get_running_loop().time() < deadline, (
                f"waited {timeout:g}s for {what}: {explain()} ({self})")
            await asyncio.sleep(0.05)  # polling rows another process writes; there is no event to wait on
        return value

    def what_the_kills_hit(self) -> str:
        """What the restarted processes found to pick up (from their logs)."""
        lines = [line for process in self.processes for line in process.log]
        in_flight = sum(int(m.group(1)) for line in lines
                        if (m := re.search(r"outbox: (\d+) item\(s\) were in flight", line)))
        recovered = sum(1 for line in lines if "recovering deploys" in line)
        interrupted = sum(1 for d in self.deploys() if INTERRUPTED in (d.status_reason or ""))
        return (f"outbox items in flight at a kill: {in_flight}; restarts that recovered deploys: {recovered}; "
                f"deploys interrupted: {interrupted}")

    # -- the invariants -----------------------------------------------------------

    def deploys(self) -> list[Deploy]:
        assert self.store is not None
        ids = [row[0] for row in self.store.db.execute("SELECT id FROM deploys ORDER BY id")]
        return [self.store.deploys.get(deploy_id) for deploy_id in ids]

    def drawn(self, deploy: Deploy) -> dict[str, Any]:
        """What the deploy's message should show, drawn from the database as the outbox draws it."""
        assert self.store is not None
        workflow = DeployWorkflow(self.config, self.store, None, EventBus(), clock=utc_now)  # type: ignore[arg-type]
        return DeployMessageView(workflow, RollbackPlans(self.config, self.store).offer).render(deploy)

    def unsettled(self) -> list[str]:
        """Deploys still on their way, and messages that do not show the database (yet)."""
        assert self.store is not None
        problems = []
        for deploy in self.deploys():
            if deploy.status not in FINAL and not (deploy.status == "awaiting_approval" and not deploy.approvals):
                problems.append(f"#{deploy.id} is {deploy.status}")
            ts = self.store.outbox.message_ts(deploy_message_key(deploy.id))
            if deploy.message_ts is None or ts != deploy.message_ts:
                problems.append(f"#{deploy.id} ({deploy.status}) does not know its message: "
                                f"deploy.message_ts={deploy.message_ts}, posted at {ts}")
                continue
            kept = self.store.outbox.permalink(deploy_message_key(deploy.id))
            if deploy.permalink is None or kept != deploy.permalink:
                problems.append(f"#{deploy.id}'s permalink is not known: {deploy.permalink} (kept for its message: "
                                f"{kept})")
            shown = self.fake.messages[(deploy.channel, deploy.message_ts)]
            drawn = self.drawn(deploy)
            shown_blocks, drawn_blocks = shown.blocks, drawn["blocks"]  # the rollback offer included
            if shown.text != drawn["text"]:
                problems.append(f"#{deploy.id}'s message shows {shown.text!r}, the database {drawn['text']!r}")
            elif shown_blocks != drawn_blocks:
                problems.append(f"#{deploy.id}'s message ({shown.text!r}) "
                                + _blocks_differ(shown_blocks, drawn_blocks))
        for rollback in (d for d in self.deploys() if d.rollback_of is not None):
            undone = self.store.deploys.get(rollback.rollback_of)
            if not any(f"started rollback #{rollback.id}:" in c.args.get("text", "")
                       and c.args.get("thread_ts") == undone.message_ts
                       for c in self.fake.calls_to("chat.postMessage")):
                problems.append(f"#{undone.id}'s thread never said that rollback #{rollback.id} started")
        if pending := self.store.outbox.pending_count():
            problems.append(f"{pending} outbox item(s) not sent")
        return problems

    def duplicates(self) -> list[str]:
        """Posts Slack received more than once, each matched to a kill between
        its copies (at most one per kill); the ones no kill explains."""
        copies: dict[tuple, list[int]] = {}
        for index, call in enumerate(self.fake.calls):
            if call.method != "chat.postMessage" or call.status != 200:
                continue
            copies.setdefault(_post_key(call.args), []).append(index)
        pairs = sorted(((first, second, key) for key, indexes in copies.items()
                        for first, second in itertools.pairwise(indexes)), key=lambda pair: pair[1])
        free = sorted(kill.calls for kill in self.kills)
        unexplained = []
        for first, second, key in pairs:
            # the first copy was answered before a kill, the second sent after it
            kill = next((k for k in free if first < k <= second), None)
            if kill is None:
                unexplained.append(f"{key} posted at calls {first} and {second}, no kill between left to explain it")
            else:
                free.remove(kill)
        print(f"chaos: seed {self.seed}: {len(pairs)} repeated post(s) within the at-least-once window",
              flush=True)
        return unexplained

    def dm_problems(self) -> list[str]:
        """Every DM a requester is owed (a news state in the audit log) arrived
        to them; none arrived that is not owed; repeats are left to :meth:`duplicates`."""
        assert self.store is not None
        owed: set[tuple[int, str]] = set()
        requesters = {}
        for deploy in self.deploys():
            requesters[deploy.id] = deploy.requested_by
            for event in self.store.audit.events(deploy.id):
                to = (event.detail or {}).get("to")
                if to in NEWS and not (to == "cancelled" and event.actor == deploy.requested_by):
                    owed.add((deploy.id, to))
        got: Counter[tuple[int, str]] = Counter()
        problems = []
        for call in self.fake.calls_to("chat.postMessage"):
            channel, text = call.args.get("channel", ""), call.args.get("text", "")
            if not channel.startswith("D"):
                continue
            match = re.match(r"(:[a-z_]+:) Your deploy #(\d+) ", text)
            assert match, f"an unexpected DM: {text!r}"
            deploy_id, state = int(match.group(2)), DM_MARKS[match.group(1)]
            if channel != dm_channel(requesters[deploy_id]):
                problems.append(f"the DM about #{deploy_id} {state} went to {channel}")
            got[(deploy_id, state)] += 1
        problems += [f"lost DM: #{d} {s}" for d, s in sorted(owed - set(got))]
        problems += [f"DM never owed: #{d} {s}" for d, s in sorted(set(got) - owed)]
        return problems


OFFER_NOTE = re.compile(r" · (superseded by #\d+ \([^)]*\)|no rollback: .*|to try the rollback again, .*)$")


def _blocks_differ(shown: list[dict[str, Any]], drawn: list[dict[str, Any]]) -> str:
    """Where a message's blocks differ from the database's drawing of them."""
    pairs = [(a, b) for a, b in zip(shown, drawn) if a != b]
    if len(shown) != len(drawn) or not pairs:
        return f"has {len(shown)} blocks, the database draws {len(drawn)}"
    return f"shows {json.dumps(pairs[0][0])}, the database draws {json.dumps(pairs[0][1])}"


def _post_key(args: dict[str, Any]) -> tuple:
    """What makes two posts the same: a deploy's own message is the same
    message whatever state it was drawn in; anything else, by its words."""
    if "thread_ts" not in args:
        blocks = args.get("blocks") or []
        blocks = json.loads(blocks) if isinstance(blocks, str) else blocks
        match = re.search(r"Deploy #(\d+) · requested", json.dumps(blocks, ensure_ascii=False))
        if match and args.get("channel") == CHANNEL:
            return ("deploy message", int(match.group(1)))
    return (args.get("channel"), args.get("thread_ts"), args.get("text"))


ACTIONS = 16  # the flow's own actions (those a kill makes it send again or redo are not counted)


async def test_killed_at_random_points_slipway_settles_to_the_truth(
        fake_slack: FakeSlack, serve: Callable[..., SlipwayProcess], config_file: Path, tmp_path: Path,
        fast_outbox: dict[str, str]) -> None:
    seed = int(os.environ.get("SLIPWAY_CHAOS_SEED") or random.SystemRandom().randrange(10**6))
    chaos = Chaos(serve, config_file, tmp_path / "slipway.db", fake_slack, seed, ACTIONS, fast_outbox)
    print(f"chaos: seed {seed} (replay with SLIPWAY_CHAOS_SEED={seed}); kills planned after actions "
          + ", ".join(f"{k.action} (+{k.pause:.2f}s)" for k in chaos.plan.values()), flush=True)
    await chaos.start()
    try:
        await chaos.deploy("api", "1.0.0", "U0DAVE")  # 1
        await chaos.deploy("web", "1.0.0", "U0ERIN")  # 2
        failing = await chaos.finished((await chaos.request("db 1.0.0 staging", "U0FRAN")).id)  # 3
        assert failing.status == "failed", (failing.status, failing.status_reason, str(chaos))
        waiting = await chaos.request("web 1.0.0 production", "U0ERIN")  # 4: nobody approves it
        await chaos.ship("api", "1.0.0", "U0DAVE")  # 5-9
        await chaos.deploy("api", "1.1.0", "U0DAVE")  # 10
        current = await chaos.ship("api", "1.1.0", "U0ERIN")  # 11-15
        rollback = await chaos.roll_back(current, "U0ALICE")  # 16
        assert (rollback.version, chaos.store.deploys.get(current.id).status) == ("1.0.0", "rolled_back")
        await chaos.settle_kills()
        # settled: nothing on its way, every message drawn from the database
        await chaos.until(lambda: not chaos.unsettled(), "Slipway to settle", explain=chaos.unsettled)
        assert chaos.store.deploys.get(waiting.id).status == "awaiting_approval"
        failed = chaos.store.outbox.items(state=FAILED)
        assert failed == [], [(i.op, i.message_key, i.last_error) for i in failed]
        assert chaos.dm_problems() == [], str(chaos)
        assert chaos.duplicates() == [], str(chaos)
        assert len(chaos.kills) == KILLS, str(chaos)
        print(f"chaos: seed {seed}: settled after {len(chaos.kills)} kills and {chaos.steps} actions sent; "
              f"{chaos.what_the_kills_hit()}", flush=True)
    except BaseException:
        print(f"chaos: FAILED with seed {seed} (replay with SLIPWAY_CHAOS_SEED={seed}); {chaos}", flush=True)
        if chaos.process is not None:  # what the last Slipway logged, but for the access log
            print("".join([line for line in chaos.process.log if "aiohttp.access" not in line][-40:]))
        raise
    finally:
        await chaos.close()
