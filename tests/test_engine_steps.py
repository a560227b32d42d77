"""A staged deploy (canary, blue-green) calls the same engine once per step
and tells it which (issue 12): a command sees SLIPWAY_STRATEGY/STEP/STEPS/
WEIGHT/PHASE; a webhook engine gets the fields in its request, under a key
and a callback of that step's own, and a report on one step never answers
another; a GitHub workflow gets them as inputs (a direct deploy's dispatch
is unchanged), and one step's run is never taken for another's.
scripts/deploy.sh, the template engine, applies each step against a fake
kubectl, and a step applied twice changes nothing."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import textwrap
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from fake_github import FakeGitHub

from bot.config import DeployExecutor
from bot.executors.base import Job
from bot.executors.command import CommandExecutor
from bot.executors.github_actions import GitHubActionsExecutor, workflow_inputs
from bot.executors.webhook import EngineReports, WebhookExecutor
from store import Store
from tests.conftest import ENGINE, PYTHON, Harness
from tests.test_executor_webhook import SECRET, CiEngine, report, request_deploy

ROOT = Path(__file__).resolve().parent.parent
DEPLOY_SH = ROOT / "scripts" / "deploy.sh"
TOKEN = "ghp_test"
STAGE_INPUTS = {"strategy", "step", "steps", "weight", "phase"}
STAGED_RUN_NAME = "Deploy ${{ inputs.version }} (slipway #${{ inputs.deploy_id }} ${{ inputs.stage }})"


def job(deploy_id: int = 12, **changes: Any) -> Job:
    values = {"deploy_id": deploy_id, "service": "api", "environment": "staging", "version": "2.7.0",
              "previous_version": "2.6.3", "rollback_of": None, "started_at": datetime.now(timezone.utc)}
    return Job(**{**values, **changes})


def canary(step: int, weight: int, deploy_id: int = 12, steps: int = 3) -> Job:
    return job(deploy_id, strategy="canary", step=step, steps=steps, weight=weight)


class Remembered(list):
    async def __call__(self, reference: dict[str, Any]) -> None:
        self.append(dict(reference))


# -- command ---------------------------------------------------------------------------


async def test_a_command_engine_is_told_each_canary_step_and_the_abort(tmp_path: Path) -> None:
    record = tmp_path / "calls.jsonl"
    engine = CommandExecutor(DeployExecutor(command=[PYTHON, ENGINE, "--record", str(record)], timeout=10))

    for step in (canary(1, 10), canary(2, 50), canary(0, 0),
                 job(strategy="blue_green", phase="switch"), job()):
        assert (await engine.run(step, Remembered())).succeeded

    calls = [json.loads(line)["env"] for line in record.read_text().splitlines()]
    fields = [{name.removeprefix("SLIPWAY_").lower(): value for name, value in env.items()
               if name in ("SLIPWAY_STRATEGY", "SLIPWAY_STEP", "SLIPWAY_STEPS", "SLIPWAY_WEIGHT", "SLIPWAY_PHASE")}
              for env in calls]
    assert fields == [
        {"strategy": "canary", "step": "1", "steps": "3", "weight": "10"},
        {"strategy": "canary", "step": "2", "steps": "3", "weight": "50"},
        {"strategy": "canary", "step": "0", "steps": "3", "weight": "0"},  # the abort
        {"strategy": "blue_green", "phase": "switch"},
        {"strategy": "direct"},
    ]
    # the new version and the stable one, at every step
    assert {(env["SLIPWAY_VERSION"], env["SLIPWAY_PREVIOUS_VERSION"]) for env in calls} == {("2.7.0", "2.6.3")}


# -- webhook ---------------------------------------------------------------------------


@pytest.fixture
async def ci() -> CiEngine:
    running = await CiEngine().start()
    yield running
    await running.stop()


@pytest.fixture
def store(tmp_path: Path) -> Store:
    opened = Store.open(tmp_path / "steps.db")
    yield opened
    opened.close()


def new_deploy(store: Store) -> int:
    return store.deploys.create(service="api", environment="staging", version="2.7.0", version_prefixed=False,
                                requested_by="U0DAVE", previous_version="2.6.3", checklist=[],
                                needs_approval=False).id


def webhook(ci: CiEngine, reports: EngineReports, timeout: float = 10) -> WebhookExecutor:
    spec = DeployExecutor.model_validate({"webhook": {"url": ci.url, "secret_env": "HOOK_SECRET"}, "timeout": timeout})
    return WebhookExecutor(spec, reports, "https://slipway.example/", environ={"HOOK_SECRET": SECRET})


async def test_each_webhook_step_has_its_fields_key_and_callback_and_waits_for_its_own_report(
        ci: CiEngine, store: Store) -> None:
    deploy_id = new_deploy(store)
    reports = EngineReports(store)
    engine = webhook(ci, reports)

    first = asyncio.create_task(engine.run(canary(1, 10, deploy_id), Remembered()))
    await ci.wait_for(lambda e: len(e.requests) == 1)
    base = {"deploy_id": deploy_id, "service": "api", "environment": "staging", "version": "2.7.0",
            "previous_version": "2.6.3", "rollback_of": None}
    assert ci.requests[0] == {
        **base, "strategy": "canary", "stage": "step-1", "step": 1, "steps": 3, "weight": 10,
        "callback_url": f"https://slipway.example/webhooks/deploys/{deploy_id}?stage=step-1",
        "idempotency_key": f"slipway-deploy-{deploy_id}-step-1"}
    assert ci.headers[0]["Idempotency-Key"] == f"slipway-deploy-{deploy_id}-step-1"
    reports.record(deploy_id, "succeeded", "https://ci.example/1", "10% on 2.7.0", stage="step-1")
    assert (await first).succeeded

    # step 1's "succeeded" is stored already: step 2 does not take it for its own
    second = asyncio.create_task(engine.run(canary(2, 50, deploy_id), Remembered()))
    await ci.wait_for(lambda e: len(e.requests) == 2)
    assert ci.requests[1]["idempotency_key"] == f"slipway-deploy-{deploy_id}-step-2"
    assert ci.requests[1]["callback_url"].endswith(f"/webhooks/deploys/{deploy_id}?stage=step-2")
    assert (ci.requests[1]["step"], ci.requests[1]["weight"]) == (2, 50)
    reports.record(deploy_id, "running", "https://ci.example/2", None, stage="step-2")
    reports.record(deploy_id, "succeeded", None, "late duplicate of step 1", stage="step-1")
    await asyncio.sleep(0.2)
    assert not second.done()
    reports.record(deploy_id, "failed", None, "pods crash-looping", stage="step-2")
    outcome = await second
    assert not outcome.succeeded and outcome.summary == "engine reported failed: pods crash-looping"
    assert outcome.run_url == "https://ci.example/2"  # step 2's log, not step 1's

    # the abort: weight 0, its own key and callback
    abort = asyncio.create_task(engine.run(canary(0, 0, deploy_id), Remembered()))
    await ci.wait_for(lambda e: len(e.requests) == 3)
    assert ci.requests[2] == {
        **base, "strategy": "canary", "stage": "abort", "step": 0, "steps": 3, "weight": 0,
        "callback_url": f"https://slipway.example/webhooks/deploys/{deploy_id}?stage=abort",
        "idempotency_key": f"slipway-deploy-{deploy_id}-abort"}
    reports.record(deploy_id, "succeeded", None, None, stage="abort")
    assert (await abort).succeeded
    assert [(r.stage, r.status) for r in store.deploys.engine_reports(deploy_id)] == [
        ("step-1", "succeeded"), ("step-2", "running"), ("step-1", "succeeded"), ("step-2", "failed"),
        ("abort", "succeeded")]


async def test_a_blue_green_phase_is_sent_as_a_string_and_a_direct_deploy_as_before(
        ci: CiEngine, store: Store) -> None:
    deploy_id = new_deploy(store)
    reports = EngineReports(store)
    engine = webhook(ci, reports)

    switch = asyncio.create_task(engine.run(job(deploy_id, strategy="blue_green", phase="switch"), Remembered()))
    await ci.wait_for(lambda e: len(e.requests) == 1)
    reports.record(deploy_id, "succeeded", None, None, stage="phase-switch")
    assert (await switch).succeeded
    direct = asyncio.create_task(engine.run(job(deploy_id), Remembered()))
    await ci.wait_for(lambda e: len(e.requests) == 2)
    reports.record(deploy_id, "succeeded", None, None)
    assert (await direct).succeeded

    staged, plain = ci.requests
    assert {k: staged[k] for k in ("strategy", "stage", "phase", "idempotency_key", "callback_url")} == {
        "strategy": "blue_green", "stage": "phase-switch", "phase": "switch",
        "idempotency_key": f"slipway-deploy-{deploy_id}-phase-switch",
        "callback_url": f"https://slipway.example/webhooks/deploys/{deploy_id}?stage=phase-switch"}
    assert not {"step", "steps", "weight"} & set(staged)
    assert plain["strategy"] == "direct" and not {"stage", "step", "steps", "weight", "phase"} & set(plain)
    assert plain["idempotency_key"] == f"slipway-deploy-{deploy_id}"
    assert plain["callback_url"] == f"https://slipway.example/webhooks/deploys/{deploy_id}"


async def test_a_resumed_step_is_sent_again_unless_that_step_was_taken(ci: CiEngine, store: Store) -> None:
    deploy_id = new_deploy(store)
    reports = EngineReports(store)
    engine = webhook(ci, reports)
    # what the deploy remembers after step 1 went through, as step 2 is being sent
    reference = {"dispatched": f"slipway-deploy-{deploy_id}-step-2", "requested": f"slipway-deploy-{deploy_id}-step-1"}

    resumed = asyncio.create_task(engine.resume(canary(2, 50, deploy_id), reference, Remembered()))
    await ci.wait_for(lambda e: len(e.requests) == 1)  # step 1's answer is not step 2's: sent again
    assert ci.headers[0]["Idempotency-Key"] == f"slipway-deploy-{deploy_id}-step-2"
    reports.record(deploy_id, "succeeded", None, None, stage="step-2")
    assert (await resumed).succeeded

    taken = {**reference, "requested": f"slipway-deploy-{deploy_id}-step-2"}
    reports.record(deploy_id, "succeeded", None, None, stage="step-3")
    assert (await engine.resume(canary(3, 100, deploy_id), {**taken, "dispatched": f"slipway-deploy-{deploy_id}-step-3",
                                                            "requested": f"slipway-deploy-{deploy_id}-step-3"},
                                Remembered())).succeeded
    assert len(ci.requests) == 1  # step 3 was taken (its key answered): followed, not sent


# -- the callback endpoint -------------------------------------------------------------


@pytest.fixture
def environ() -> dict[str, str]:
    return {"DEPLOY_HOOK_SECRET": SECRET}


@pytest.fixture
def config_text(ci: CiEngine, slipway_url: str) -> str:
    return textwrap.dedent(f"""\
        channel: C0DEPLOYS
        public_url: {slipway_url}
        environments:
          - name: staging
        services:
          api:
            deploy:
              webhook: {{url: "{ci.url}", secret_env: DEPLOY_HOOK_SECRET}}
              timeout: 20s
        """)


async def test_a_report_on_a_stage_is_stored_with_it_and_answers_only_that_stage(
        harness: Harness, ci: CiEngine) -> None:
    deploy_id, callback = await request_deploy(harness, ci)  # a direct deploy, waiting on its one call
    # the report helper names the stage of the URL in the body, as an engine echoes it
    assert await report(f"{callback}?stage=step-1", {"status": "succeeded"}) == (200, {"ok": True})
    await asyncio.sleep(0.2)
    assert harness.deploy(deploy_id).status == "deploying"  # a step's report is not the direct call's
    # bound like the deploy id: a signed report for one stage cannot be replayed against another
    status, answer = await report(f"{callback}?stage=step-2", {"status": "succeeded", "stage": "step-1"})
    assert status == 400 and 'stage must be "step-2", the stage in the URL' in answer["error"]
    status, answer = await report(callback, {"status": "succeeded", "stage": "step-1"})
    assert status == 400 and "stage must be absent" in answer["error"]
    assert (await report(f"{callback}?stage=step-x", {"status": "succeeded"}))[0] == 404
    assert [(r.stage, r.status) for r in harness.store.deploys.engine_reports(deploy_id)] == [("step-1", "succeeded")]
    assert await report(callback, {"status": "succeeded"}) == (200, {"ok": True})
    await harness.settle()
    assert harness.deploy(deploy_id).status == "succeeded"
    assert [r.stage for r in harness.store.deploys.engine_reports(deploy_id)] == ["step-1", None]
    audited = [e for e in harness.store.audit.events() if e.action == "engine_report"]
    assert [e.detail.get("stage") for e in audited] == ["step-1", None]


# -- GitHub Actions --------------------------------------------------------------------


@pytest.fixture
async def github() -> FakeGitHub:
    fake = await FakeGitHub(token=TOKEN).start()
    fake.add_workflow("acme/api", "deploy.yml", inputs={"version", "environment", "deploy_id", "stage", *STAGE_INPUTS},
                      run_name=STAGED_RUN_NAME)
    yield fake
    await fake.stop()


def actions(api_url: str, claimed_runs: set[int] | None = None, **spec: Any) -> GitHubActionsExecutor:
    settings = {"repository": "acme/api", "workflow": "deploy.yml", "api_url": api_url, "poll_interval": 0.05,
                "inputs": {"stage": "{stage}"}, **spec}
    config = DeployExecutor.model_validate({"github_actions": settings, "timeout": 5})
    return GitHubActionsExecutor(config, environ={"GITHUB_TOKEN": TOKEN}, claimed_runs=claimed_runs)


def test_a_staged_dispatch_gets_the_step_as_inputs_and_a_direct_one_none() -> None:
    extra = {"note": "{strategy} {step}/{steps} at {weight}% {phase} ({stage})"}
    assert workflow_inputs(canary(2, 50), extra) == {
        "version": "2.7.0", "environment": "staging", "deploy_id": "12",
        "strategy": "canary", "step": "2", "steps": "3", "weight": "50",
        "note": "canary 2/3 at 50%  (step-2)"}
    assert workflow_inputs(job(strategy="blue_green", phase="switch_back"), extra) == {
        "version": "2.7.0", "environment": "staging", "deploy_id": "12", "strategy": "blue_green",
        "phase": "switch_back", "note": "blue_green / at % switch_back (abort)"}
    assert workflow_inputs(job(), {}) == {"version": "2.7.0", "environment": "staging", "deploy_id": "12"}
    assert workflow_inputs(job(), extra)["note"] == "direct / at %  ()"


async def test_each_step_dispatches_with_its_inputs_and_follows_its_own_run(github: FakeGitHub) -> None:
    github.run_details = "ignored"  # 204: the runs are found by their titles
    claimed: set[int] = set()

    first, second = Remembered(), Remembered()
    assert (await actions(github.url, claimed).run(canary(1, 10), first)).succeeded
    # step 1's run is in the listing step 2 reads, marked with the same deploy
    outcome = await actions(github.url, claimed).run(canary(2, 50), second)

    dispatches = [call.body["inputs"] for call in github.dispatches]
    assert dispatches == [
        {"version": "2.7.0", "environment": "staging", "deploy_id": "12", "strategy": "canary",
         "step": "1", "steps": "3", "weight": "10", "stage": "step-1"},
        {"version": "2.7.0", "environment": "staging", "deploy_id": "12", "strategy": "canary",
         "step": "2", "steps": "3", "weight": "50", "stage": "step-2"}]
    run_1, run_2 = sorted(github.runs.values(), key=lambda run: run.id)
    assert run_2.display_title == "Deploy 2.7.0 (slipway #12 step-2)"
    assert outcome.succeeded and outcome.reference["run_id"] == run_2.id
    assert first[-1] == {"run_id": run_1.id, "run_url": run_1.html_url, "run_stage": "step-1"}
    assert second == [{"dispatching": "step-2"}, {"run_id": run_2.id, "run_url": run_2.html_url, "run_stage": "step-2"}]


async def test_without_the_step_in_the_run_name_an_earlier_steps_run_is_still_never_taken(
        github: FakeGitHub) -> None:
    github.run_details = "ignored"
    github.workflows[("acme/api", "deploy.yml")].run_name = "Deploy (slipway #${{ inputs.deploy_id }})"
    claimed: set[int] = set()
    assert (await actions(github.url, claimed).run(canary(1, 10), Remembered())).succeeded
    outcome = await actions(github.url, claimed).run(canary(2, 50), Remembered())
    run_1, run_2 = sorted(github.runs.values(), key=lambda run: run.id)
    assert outcome.reference["run_id"] == run_2.id and run_1.id in claimed


async def test_a_resumed_step_never_follows_an_earlier_steps_run(github: FakeGitHub) -> None:
    github.run_details = "ignored"
    assert (await actions(github.url).run(canary(1, 10), first := Remembered())).succeeded
    (run_1,) = github.runs.values()
    step_1 = {k: v for reference in first for k, v in reference.items()}

    # Slipway stopped before step 2 was dispatched: the reference is all step 1's. A fresh
    # Slipway (nothing claimed) dispatches step 2, rather than follow step 1's finished run.
    outcome = await actions(github.url).resume(canary(2, 50), step_1, Remembered())
    (run_2,) = [run for run in github.runs.values() if run.id != run_1.id]
    assert outcome.succeeded and outcome.reference["run_id"] == run_2.id
    assert len(github.dispatches) == 2

    # Slipway stopped after dispatching step 3, before it knew the run: found, not dispatched again
    github.new_runs_hidden_for = 1
    listed = len(github.calls_to("runs"))
    started = asyncio.create_task(actions(github.url).run(canary(3, 100), third := Remembered()))
    await github.wait_for(lambda fake: len(fake.calls_to("runs")) > listed)
    started.cancel()
    with pytest.raises(asyncio.CancelledError):
        await started
    assert third == [{"dispatching": "step-3"}]
    outcome = await actions(github.url).resume(canary(3, 100), {**step_1, **third[0]}, Remembered())
    (run_3,) = [run for run in github.runs.values() if run.inputs.get("step") == "3"]
    assert outcome.succeeded and outcome.reference["run_id"] == run_3.id
    assert len(github.dispatches) == 3


# -- scripts/deploy.sh against a fake kubectl ------------------------------------------


FAKE_KUBECTL = '''\
import json, sys
state_file, log_file = sys.argv[1], sys.argv[2]
args = sys.argv[3:]
assert args[:2] == ["--namespace", "staging"], args
args = args[2:]
state = json.load(open(state_file))
with open(log_file, "a") as log:
    log.write(" ".join(args) + "\\n")
verb, target = args[0], args[1]
if verb == "set":  # set image deployment/X container=image
    state["deployments"][args[2].split("/", 1)[1]]["image"] = args[3].split("=", 1)[1]
elif verb == "scale":
    state["deployments"][target.split("/", 1)[1]]["replicas"] = int(args[2].split("=", 1)[1])
elif verb == "rollout":
    pass
elif verb == "get":
    kind, name = target.split("/", 1)
    path = args[3].removeprefix("jsonpath=")
    if kind == "service":
        print(state["selector"], end="")
    elif path == "{.spec.replicas}":
        print(state["deployments"][name]["replicas"], end="")
    else:
        print(state["deployments"][name]["image"], end="")
elif verb == "patch":
    patch = json.loads(args[args.index("-p") + 1])
    if target == "service":
        state["selector"] = patch["spec"]["selector"]["color"]
    else:
        for op in patch:
            state["weights"][int(op["path"].split("/")[5])] = op["value"]
else:
    sys.exit(f"unexpected kubectl {args}")
json.dump(state, open(state_file, "w"))
'''


class Cluster:
    """A kubectl on PATH that keeps a tiny cluster's state in a file."""

    def __init__(self, root: Path, state: dict[str, Any]) -> None:
        self.state_file, self.log_file = root / "cluster.json", root / "kubectl.log"
        self.state_file.write_text(json.dumps({"selector": "", "weights": [100, 0], **state}))
        (root / "fake_kubectl.py").write_text(FAKE_KUBECTL)
        bin_dir = root / "bin"
        bin_dir.mkdir()
        kubectl = bin_dir / "kubectl"
        kubectl.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{root / "fake_kubectl.py"}" '
                           f'"{self.state_file}" "{self.log_file}" "$@"\n')
        kubectl.chmod(0o755)
        self.path = f"{bin_dir}:{os.environ['PATH']}"

    @property
    def now(self) -> dict[str, Any]:
        return json.loads(self.state_file.read_text())

    async def deploy(self, **variables: str) -> tuple[int, str]:
        env = {"PATH": self.path, "SLIPWAY_DEPLOY_ID": "12", "SLIPWAY_SERVICE": "api",
               "SLIPWAY_ENVIRONMENT": "staging", "SLIPWAY_VERSION": "2.7.0", "SLIPWAY_PREVIOUS_VERSION": "2.6.3",
               **variables}
        process = await asyncio.create_subprocess_exec(str(DEPLOY_SH), env=env, stdout=asyncio.subprocess.PIPE,
                                                       stderr=asyncio.subprocess.STDOUT)
        out, _ = await process.communicate()
        return process.returncode, out.decode()


OLD, NEW = "ghcr.io/acme/api:v2.6.3", "ghcr.io/acme/api:v2.7.0"


async def test_the_template_still_refuses_until_configured(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, {"deployments": {}})
    for strategy in ("direct", "canary"):
        status, out = await cluster.deploy(SLIPWAY_STRATEGY=strategy, SLIPWAY_WEIGHT="10")
        assert status == 64 and "scripts/deploy.sh is a template: set DEPLOY_IMAGE_REPO" in out
    assert not cluster.log_file.exists()


async def test_the_template_deploys_directly_as_before(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, {"deployments": {"api": {"image": OLD, "replicas": 4}}})
    status, out = await cluster.deploy(DEPLOY_IMAGE_REPO="ghcr.io/acme", SLIPWAY_STRATEGY="direct")
    assert status == 0, out
    assert cluster.log_file.read_text().splitlines() == [
        f"set image deployment/api api={NEW}", "rollout status deployment/api --timeout=9m"]


async def test_the_template_runs_a_canary_by_replicas_and_a_step_twice_is_harmless(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, {"deployments": {"api": {"image": OLD, "replicas": 10},
                                                 "api-canary": {"image": OLD, "replicas": 0}}})
    configured = {"DEPLOY_IMAGE_REPO": "ghcr.io/acme", "DEPLOY_REPLICAS": "10", "SLIPWAY_STRATEGY": "canary",
                  "SLIPWAY_STEPS": "3"}

    async def step(number: int, weight: int) -> dict[str, Any]:
        status, out = await cluster.deploy(**configured, SLIPWAY_STEP=str(number), SLIPWAY_WEIGHT=str(weight))
        assert status == 0, out
        return cluster.now["deployments"]

    assert await step(1, 10) == {"api": {"image": OLD, "replicas": 9}, "api-canary": {"image": NEW, "replicas": 1}}
    assert await step(1, 10) == {"api": {"image": OLD, "replicas": 9}, "api-canary": {"image": NEW, "replicas": 1}}
    assert await step(2, 50) == {"api": {"image": OLD, "replicas": 5}, "api-canary": {"image": NEW, "replicas": 5}}
    assert await step(0, 0) == {"api": {"image": OLD, "replicas": 10}, "api-canary": {"image": NEW, "replicas": 0}}
    assert await step(3, 100) == {"api": {"image": NEW, "replicas": 10}, "api-canary": {"image": NEW, "replicas": 0}}
    assert await step(3, 100) == {"api": {"image": NEW, "replicas": 10}, "api-canary": {"image": NEW, "replicas": 0}}


async def test_the_template_runs_a_canary_by_mesh_weight(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, {"deployments": {"api": {"image": OLD, "replicas": 3},
                                                 "api-canary": {"image": OLD, "replicas": 0}}})
    configured = {"DEPLOY_IMAGE_REPO": "ghcr.io/acme", "DEPLOY_MESH_ROUTE": "api", "SLIPWAY_STRATEGY": "canary"}
    for weight, expected in ((25, [75, 25]), (25, [75, 25]), (0, [100, 0]), (100, [100, 0])):
        status, out = await cluster.deploy(**configured, SLIPWAY_STEP="1", SLIPWAY_WEIGHT=str(weight))
        assert status == 0, out
        assert cluster.now["weights"] == expected
    assert cluster.now["deployments"]["api"] == {"image": NEW, "replicas": 3}


async def test_the_template_runs_blue_green_by_the_services_selector(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, {"selector": "blue",
                                 "deployments": {"api-blue": {"image": OLD, "replicas": 4},
                                                 "api-green": {"image": "ghcr.io/acme/api:v2.5.0", "replicas": 0}}})
    configured = {"DEPLOY_IMAGE_REPO": "ghcr.io/acme", "SLIPWAY_STRATEGY": "blue_green"}

    async def phase(name: str) -> dict[str, Any]:
        status, out = await cluster.deploy(**configured, SLIPWAY_PHASE=name)
        assert status == 0, out
        return cluster.now

    for _ in range(2):  # each phase twice: the second changes nothing
        assert (await phase("deploy"))["deployments"]["api-green"] == {"image": NEW, "replicas": 4}
        assert (await phase("deploy"))["selector"] == "blue"
    for _ in range(2):
        assert (await phase("switch"))["selector"] == "green"
    for _ in range(2):  # the abort puts traffic back on the colour running the old version
        assert (await phase("switch_back"))["selector"] == "blue"
    assert (await phase("switch"))["selector"] == "green"
    for _ in range(2):
        assert (await phase("release"))["deployments"] == {"api-blue": {"image": OLD, "replicas": 0},
                                                           "api-green": {"image": NEW, "replicas": 4}}
