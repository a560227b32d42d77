"""An approved deploy's life: deploying → verifying → succeeded | failed.

The runner hands the deploy to the team's engine (never deploying by
itself), verifies the result, keeps every step in the store and shows it in
the deploy's message (updated in place) and thread. On start it picks up
what a previous Slipway left behind: engines that can be followed up are
followed up, and a local command whose process died with the old Slipway is
marked failed as interrupted.
"""

from __future__ import annotations

import asyncio
import logging
import shlex
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timezone

from bot.config import Backup, Config, DeployExecutor
from bot.deploys.ports import DeployViews
from bot.deploys.progressive import ANALYSIS_ACTOR, StageWatch, Verdict, plan_rollout
from bot.durations import format_duration
from bot.errors import SlipwayError
from bot.events import DeployChanged, DeployPosted, EventBus, ExecutorStarted, RollbackIntended
from bot.executors import EngineReports, Job, NotResumable, Outcome, build_executor
from bot.slack.mrkdwn import mention
from bot.executors.process import run_process
from bot.runtime.tasks import BackgroundTasks
from bot.slack.mrkdwn import (
    abort_text,
    code_block,
    engine_log_text,
    escape,
    failure_text,
    success_text,
    verification_text,
)
from bot.slack.ship_report import as_slack_mrkdwn, ship_report
from store import Deploy, DeployStatus, Rollout, Stage, StateConflict, Store
from store.intents import AUTO_ROLLBACK
from store.rollouts import ABORTED, APPLYING, FAILED, PASSED, PENDING

log = logging.getLogger(__name__)

REDRAWN_ON_SUCCESS = 20  # earlier deploys of a service+environment whose messages a success redraws


def wall_clock() -> datetime:
    return datetime.now(timezone.utc)


class DeployRunner:
    """Runs approved deploys, one task each, and recovers after a restart."""

    def __init__(self, config: Config, store: Store, views: DeployViews, events: EventBus, tasks: BackgroundTasks,
                 reports: EngineReports, *, blocked_reason: Callable[[Deploy], str | None],
                 reopen_if_stale: Callable[[Deploy], Awaitable[Deploy | None]],
                 observe_executor: Callable[[str, str, float], None] | None = None,
                 environ: Mapping[str, str] | None = None, now: Callable[[], datetime] = wall_clock,
                 verify_sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 verify_clock: Callable[[], float] = time.monotonic, watch: StageWatch | None = None) -> None:
        self.config = config
        # staged rollouts' metric gates and pauses (None: every deploy is direct and unbaked)
        self.watch = watch
        self.store = store
        self.views = views
        self.events = events  # publishes DeployChanged at each step, ExecutorStarted when the engine is handed one
        self.tasks = tasks
        self.reports = reports
        self.environ = environ
        self.now = now  # the engines' clock: deadlines are real time, whatever the store's clock says
        # what paces verification's retries and measures its deadlines; tests pass a fake that moves instantly
        self.verify_sleep = verify_sleep
        self.verify_clock = verify_clock
        self._deploy_tasks: dict[int, asyncio.Task] = {}  # the deploys running now
        self._engine_busy: set[int] = set()  # the deploys whose engine call is under way
        self._draining = False  # Slipway is stopping: no rollout starts its next step
        self._claimed_runs: set[int] = set()  # GitHub runs followed by some deploy
        self.observe_executor = observe_executor  # GET /metrics
        self.blocked_reason = blocked_reason  # the policy, checked at the start
        # approvals too old to count when it is time to start: the deploy goes back for approval
        self.reopen_if_stale = reopen_if_stale

    def start(self, deploy_id: int) -> None:
        """Run an approved deploy in the background (once, however often asked)."""
        self._spawn(deploy_id, resume=False)

    async def announce_and_start(self, deploy: Deploy) -> None:
        """Show a new request (waiting a little for its message) and start it
        if it needs no approval, whether or not Slack took the message yet.

        Raises:
            SlipwayError: the channel refused the message; the request is cancelled.
        """
        await self.views.announce(deploy)
        self.start_if_approved(DeployPosted(deploy.id))

    def start_if_approved(self, event: DeployPosted | DeployChanged) -> None:
        """Start a deploy once it is approved and shown: a request that needs
        no approval when its message is posted, any other at its final approval."""
        if self.store.deploys.status_of(event.deploy_id) == DeployStatus.APPROVED and \
                not self.store.deploys.get(event.deploy_id).held:  # its changes and artifacts are being looked up
            self.start(event.deploy_id)

    def _spawn(self, deploy_id: int, *, resume: bool) -> None:
        if deploy_id in self._deploy_tasks:
            return
        self._deploy_tasks[deploy_id] = self.tasks.spawn(self._guarded(deploy_id, resume), name=f"deploy-{deploy_id}")

    async def drain(self, timeout: float) -> list[int]:
        """On shutdown: wait up to ``timeout`` seconds for deploys whose engine
        is a local command (stopping Slipway would stop the command with it;
        webhook and GitHub deploys are followed up after a restart). Returns
        the ids still running when the wait ended."""
        def waited_for() -> list[asyncio.Task]:
            return [task for deploy_id, task in self._deploy_tasks.items()
                    if not task.done() and self._runs_locally(deploy_id) and self._engine_may_run(deploy_id)]

        self._draining = True
        local = waited_for()
        if local and timeout > 0:
            log.info("waiting up to %.0f s for %d command deploy(s) to finish", timeout, len(local))
            deadline = time.monotonic() + timeout
            # a staged rollout is waited for until its engine call ends, not through its pauses:
            # those are stored and resume after the restart
            while local and (left := deadline - time.monotonic()) > 0:
                await asyncio.wait(local, timeout=min(left, 0.2))
                local = waited_for()
        return [deploy_id for deploy_id, task in self._deploy_tasks.items() if not task.done()]

    def _engine_may_run(self, deploy_id: int) -> bool:
        """Whether the deploy's engine is (or may soon be) running: a staged
        deploy's only while an engine call (a step, an abort) is under way,
        not while a stage or the bake is watched."""
        if self.store.rollouts.get(deploy_id) is None:
            return True
        return deploy_id in self._engine_busy

    def _runs_locally(self, deploy_id: int) -> bool:
        spec = self.engine_of(self.store.deploys.get(deploy_id))
        return spec is not None and spec.command is not None

    async def _guarded(self, deploy_id: int, resume: bool) -> None:
        from bot.runtime.logs import deploy_context

        # every line logged by this deploy's work (and the tasks it starts) names it
        with deploy_context(deploy_id):
            try:
                await self._run(deploy_id, resume)
            except Exception:
                log.exception("deploy %s: unexpected failure in the runner", deploy_id)
                await self._finish(self.store.deploys.get(deploy_id), DeployStatus.FAILED,
                                   "Slipway failed while running it (see its log); the engine's state is unknown",
                                   allowed_from=(DeployStatus.APPROVED, DeployStatus.DEPLOYING,
                                                 DeployStatus.VERIFYING, DeployStatus.BAKING))
                raise
            finally:
                self._deploy_tasks.pop(deploy_id, None)
                if self.watch is not None:
                    self.watch.forget(deploy_id)

    def recover(self) -> list[int]:
        """Pick up deploys a previous Slipway left approved, deploying or
        verifying, and post the message of any request it recorded but died
        before announcing."""
        picked = []
        for deploy in self.store.deploys.in_states((DeployStatus.AWAITING_APPROVAL,)):
            if deploy.message_ts is None:
                self.tasks.spawn(self._announce(deploy), name=f"announce-deploy-{deploy.id}")
                picked.append(deploy.id)
        running = (DeployStatus.APPROVED, DeployStatus.DEPLOYING, DeployStatus.VERIFYING, DeployStatus.BAKING)
        for deploy in self.store.deploys.in_states(running):
            self._spawn(deploy.id, resume=deploy.status != DeployStatus.APPROVED)
            picked.append(deploy.id)
        if picked:
            log.info("recovering deploys %s after a restart", picked)
        return picked

    async def _announce(self, deploy: Deploy) -> Deploy | None:
        try:
            return await self.views.announce(deploy)
        except SlipwayError as failure:  # the request is cancelled; nobody is waiting on a reply
            log.error("deploy %s could not be announced after a restart: %s", deploy.id, failure.message)
            return None

    # -- one deploy -----------------------------------------------------------------

    def engine_of(self, deploy: Deploy) -> DeployExecutor | None:
        """The engine that runs ``deploy``: the service's rollback engine for a
        rollback when it has one, else its deploy engine."""
        service = self.config.services[deploy.service]
        if deploy.rollback_of is not None and service.rollback is not None:
            return service.rollback
        return service.deploy

    async def _run(self, deploy_id: int, resume: bool) -> None:
        deploy = self.store.deploys.get(deploy_id)
        if deploy.message_ts is None and await self._announce(deploy) is None:
            return
        deploy = self.store.deploys.get(deploy_id)
        if deploy.status == DeployStatus.APPROVED and deploy.held:
            return  # its lookups (after a restart, too) decide first; their end starts it (DeployChanged)
        rollout = self.store.rollouts.get(deploy_id)
        if resume and deploy.status == DeployStatus.BAKING:
            await self._roll_out(deploy, self.engine_of(deploy), resume=True)
            return
        if resume and deploy.status == DeployStatus.VERIFYING:
            await self._verify(deploy, self._job(deploy, fresh=False))
            return
        spec = self.engine_of(deploy)
        if spec is None:
            await self._finish(deploy, DeployStatus.FAILED,
                               f"no deploy engine is configured: add services.{deploy.service}.deploy",
                               allowed_from=(DeployStatus.APPROVED, DeployStatus.DEPLOYING))
            return
        if not resume:
            blocked = self.blocked_reason(deploy)
            if blocked is not None:
                await self._finish(deploy, DeployStatus.CANCELLED, f"stopped before it started: {blocked}",
                                   allowed_from=(DeployStatus.APPROVED,))
                return
            if await self.reopen_if_stale(deploy) is not None:
                return
            try:
                with self.store.transaction():  # the state and the redraw it calls for, together
                    deploy = self.store.deploys.transition(deploy_id, allowed_from=(DeployStatus.APPROVED,),
                                                           to=DeployStatus.DEPLOYING, actor=None,
                                                           action="deploy_started", detail={"engine": spec.kind})
                    plan = plan_rollout(self.config, deploy) if self.watch is not None else None
                    if plan is not None:  # its stages, fixed now: a config reload does not change a running deploy
                        rollout = self.store.rollouts.create(deploy_id, *plan)
                    self.events.publish(DeployChanged(deploy_id))
            except StateConflict:
                return  # another runner got there first
        job = self._job(deploy, fresh=not resume)
        if not resume and not await self._back_up(deploy, spec, job):
            return
        if resume and self._backup_for(deploy) is not None and not deploy.reference.get("backup", {}).get("succeeded"):
            # the restart came mid-backup: an engine that would start afresh on resume must not run without one
            await self._finish(deploy, DeployStatus.FAILED, "interrupted by a restart before its backup finished; "
                                                 "the engine was not run")
            return
        if rollout is not None and rollout.strategy != "direct":
            await self._roll_out(deploy, spec, resume)
            return
        if rollout is not None and not resume and self.watch is not None:
            await self.watch.measure_before(deploy, rollout)  # the bake's baselines, while the old version serves
        # The note is queued, never waited on: the engine starts at once, and
        # the note is still posted before the engine's log, so the thread reads in order.
        if not resume:
            self.views.thread(deploy, f":rocket: Handing {deploy.service} {deploy.display_version} to the "
                                      f"{spec.kind.replace('_', ' ')} engine…")
        outcome = await self._execute(deploy, spec, job, resume)
        deploy = self.store.deploys.record_engine_result(
            deploy_id, kind=spec.kind, summary=outcome.summary, exit_code=outcome.exit_code,
            run_url=outcome.run_url, log_tail=outcome.log_tail, reference=outcome.reference)
        self.views.thread(deploy, engine_log_text(deploy, outcome.succeeded))
        if not outcome.succeeded:
            # a status reason is mrkdwn: what the engine said is escaped as it is written in
            await self._finish(deploy, DeployStatus.FAILED, f"deploy engine: {escape(outcome.summary)}")
            return
        with self.store.transaction():
            deploy = self.store.deploys.transition(deploy_id, allowed_from=(DeployStatus.DEPLOYING,),
                                                   to=DeployStatus.VERIFYING, actor=None, action="verifying")
            self.events.publish(DeployChanged(deploy_id))
        await self._verify(deploy, job)

    def _backup_for(self, deploy: Deploy) -> Backup | None:
        """The backup ``deploy`` needs before its engine, if any."""
        backup = self.config.services[deploy.service].migrations.backup
        if not deploy.migration or backup is None or (
                backup.environments is not None and deploy.environment not in backup.environments):
            return None
        return backup

    async def _back_up(self, deploy: Deploy, spec: DeployExecutor, job: Job) -> bool:
        """Run the service's backup command before the engine, for a deploy
        that carries a migration; False (the deploy has failed) if it did not
        succeed, so the engine is never reached without a backup."""
        backup = self._backup_for(deploy)
        if backup is None:
            return True
        self.views.thread(deploy, f":card_file_box: Taking a backup before the migration: "
                                           f"`{escape(shlex.join(backup.command))}`")
        result = await run_process(backup.command, env=job.environ, timeout=backup.timeout, cwd=backup.working_dir,
                                   withhold=job.withhold)
        self.store.deploys.remember_reference(deploy.id, spec.kind, {"backup": {"succeeded": result.succeeded,
                                                                       "summary": result.summary}})
        self.store.audit.record(deploy.id, None, "backup", {"command": backup.command, "summary": result.summary,
                                                            "exit_code": result.exit_code,
                                                            "succeeded": result.succeeded})
        if result.succeeded:
            self.events.publish(DeployChanged(deploy.id))
            return True
        tail = code_block(result.output_tail)
        self.views.thread(deploy, f":x: Backup failed ({escape(result.summary)}); the deploy engine was not run."
                                           + (f"\n{tail}" if tail else ""))
        await self._finish(self.store.deploys.get(deploy.id), DeployStatus.FAILED,
                           f"backup failed ({escape(result.summary)}); the engine was not run")
        return False

    def _job(self, deploy: Deploy, *, fresh: bool) -> Job:
        """The engine's view of ``deploy``; a resumed job keeps its first start,
        so its timeout still counts from then."""
        started = self.now()
        if not fresh and "engine_started_at" in deploy.reference:
            started = datetime.fromisoformat(deploy.reference["engine_started_at"])
        return Job(deploy.id, deploy.service, deploy.environment, deploy.version, deploy.previous_version,
                   deploy.rollback_of, started, withhold=self.config.secret_variables)

    async def _execute(self, deploy: Deploy, spec: DeployExecutor, job: Job, resume: bool,
                       *, rerun_if_lost: bool = False) -> Outcome:
        """Hand ``job`` to the engine (or follow up the call a previous Slipway
        made) and wait for its outcome. ``rerun_if_lost``: a staged rollout's
        step whose call cannot be followed up is applied again (the engine
        contract: applying the same step twice is harmless)."""
        executor = build_executor(spec, reports=self.reports, public_url=self.config.public_url, environ=self.environ,
                                  claimed_runs=self._claimed_runs)

        async def remember(reference: dict) -> None:
            self.store.deploys.remember_reference(deploy.id, spec.kind, reference)

        # real elapsed time (monotonic), not the store's clock, which tests freeze
        started, outcome = time.monotonic(), "error"
        self._engine_busy.add(deploy.id)
        try:
            if resume and job.stage_key is not None and deploy.reference.get("stage") != job.stage_key:
                resume = False  # Slipway stopped before this step's call was recorded: it was never made
            result = None
            if resume:
                try:
                    result = await executor.resume(job, deploy.reference, remember)
                except NotResumable as reason:
                    if not rerun_if_lost:
                        result = Outcome(False, f"interrupted by restart ({reason})")
                    else:
                        log.info("deploy %s: applying %s again after a restart (%s)", deploy.id, job.stage_key, reason)
            if result is None:
                await remember({"engine_started_at": job.started_at.isoformat(),
                                **({"stage": job.stage_key} if job.stage_key else {})})
                self.events.publish(ExecutorStarted(deploy.id))
                result = await executor.run(job, remember)
            outcome = "succeeded" if result.succeeded else "failed"
            return result
        except asyncio.CancelledError:
            outcome = "cancelled"  # Slipway is stopping; a restart follows the engine up
            raise
        finally:
            self._engine_busy.discard(deploy.id)
            seconds = time.monotonic() - started
            observe = self.observe_executor
            if observe is not None:
                observe(spec.kind, outcome, seconds)
            log.info("deploy %s: %s engine %s after %.1f s", deploy.id, spec.kind, outcome, seconds,
                     extra={"engine": spec.kind, "outcome": outcome, "seconds": round(seconds, 3), "resumed": resume})

    async def _verify(self, deploy: Deploy, job: Job) -> None:
        from bot.deploys.verification import verify

        checks = self.config.services[deploy.service].verify.get(deploy.environment)
        result = await verify(checks, job, sleep=self.verify_sleep, clock=self.verify_clock)
        deploy = self.store.deploys.record_verification(deploy.id, result.as_records())
        if result.checks:
            self.views.thread(deploy, verification_text(deploy))
        if result.passed and self.store.rollouts.get(deploy.id) is not None:
            await self._roll_out(deploy, self.engine_of(deploy), resume=False)  # a direct deploy's bake
        elif result.passed:
            await self._finish(deploy, DeployStatus.SUCCEEDED, None)
        else:
            failed = next(c for c in result.checks if not c.passed)
            await self._finish(deploy, DeployStatus.FAILED, f"verification: {escape(failed.name)} — {escape(failed.detail)}")

    # -- staged rollouts (canary, blue-green) and the bake -------------------------------------

    def _stage_job(self, deploy: Deploy, rollout: Rollout, stage: Stage, *, abort: bool = False) -> Job:
        """The engine's view of one stage (or of the abort that returns traffic to the stable version)."""
        steps = [s for s in rollout.stages if s.kind == "step"]
        if rollout.strategy == "canary":
            fields = {"step": 0 if abort else stage.position, "steps": len(steps), "weight": 0 if abort else stage.weight}
        else:
            fields = {"phase": "switch_back" if abort else stage.phase}
        job = self._job(deploy, fresh=True)
        resumed = Job(job.deploy_id, job.service, job.environment, job.version, job.previous_version, job.rollback_of,
                      job.started_at, withhold=job.withhold, strategy=rollout.strategy, **fields)
        if deploy.reference.get("stage") == resumed.stage_key and "engine_started_at" in deploy.reference:
            # the same call after a restart: its timeout still counts from its first start
            started = datetime.fromisoformat(deploy.reference["engine_started_at"])
            resumed = Job(**{**resumed.__dict__, "started_at": started})
        return resumed

    async def _roll_out(self, deploy: Deploy, spec: DeployExecutor | None, resume: bool) -> None:
        """Take a staged deploy through its stages: each applied by the engine
        (verified after the first) and watched, then the bake; abort at any
        stage when the analysis or a person says so."""
        assert self.watch is not None and spec is not None
        rollout = self.store.rollouts.get(deploy.id)
        assert rollout is not None
        first_applied = next((stage.position for stage in rollout.stages if stage.applies), None)
        for position in range(1, len(rollout.stages) + 1):
            rollout = self.store.rollouts.get(deploy.id)
            assert rollout is not None
            stage = rollout.stage(position)
            if stage.ended:
                continue
            deploy = self.store.deploys.get(deploy.id)
            if rollout.abort_requested_at is not None:
                await self._abort(deploy, spec, rollout.abort_reason or "aborted")
                return
            if stage.kind == "bake":
                if deploy.status != DeployStatus.BAKING:
                    with self.store.transaction():
                        deploy = self.store.deploys.transition(
                            deploy.id, allowed_from=(DeployStatus.DEPLOYING, DeployStatus.VERIFYING),
                            to=DeployStatus.BAKING, actor=None, action="baking")
                        self.events.publish(DeployChanged(deploy.id))
                        self.views.thread(deploy, f":bread: At full traffic: baking for "
                                                  f"{format_duration(stage.pause_seconds)} before it counts as done.")
            elif stage.state in (PENDING, APPLYING):
                if self._draining and stage.state == PENDING:
                    return  # Slipway is stopping: the next step starts after the restart
                again = stage.state == APPLYING
                self.store.rollouts.apply_stage(deploy.id, position)
                self.events.publish(DeployChanged(deploy.id))
                outcome = await self._execute(deploy, spec, self._stage_job(deploy, rollout, stage), resume and again,
                                              rerun_if_lost=True)
                deploy = self.store.deploys.record_engine_result(
                    deploy.id, kind=spec.kind, summary=outcome.summary, exit_code=outcome.exit_code,
                    run_url=outcome.run_url, log_tail=outcome.log_tail, reference=outcome.reference)
                if not outcome.succeeded:
                    self.views.thread(deploy, engine_log_text(deploy, False))
                    await self._stage_failed(deploy, spec, f"the engine failed at {stage.label}: "
                                                           f"{escape(outcome.summary)}")
                    return
                if (requested := self.store.rollouts.get(deploy.id)).abort_requested_at is not None:
                    await self._abort(deploy, spec, requested.abort_reason or "aborted")  # not after verifying
                    return
                if position == first_applied:
                    passed, why = await self._verify_stage(deploy)
                    if not passed:
                        await self._stage_failed(deploy, spec, why)
                        return
            verdict = await self.watch.watch(deploy, position)
            if not await self._after_watch(deploy, spec, stage, verdict):
                return
        await self._finish(self.store.deploys.get(deploy.id), DeployStatus.SUCCEEDED, None,
                           allowed_from=(DeployStatus.DEPLOYING, DeployStatus.VERIFYING, DeployStatus.BAKING))

    async def _after_watch(self, deploy: Deploy, spec: DeployExecutor, stage: Stage, verdict: Verdict) -> bool:
        """Act on the watch's verdict; False when the rollout ended there."""
        if verdict.outcome in ("passed", "promoted"):
            with self.store.transaction():  # the decision and its thread line, together
                if self.store.rollouts.end_stage(deploy.id, stage.position, PASSED, verdict.decision):
                    icon = ":fast_forward:" if verdict.outcome == "promoted" else ":white_check_mark:"
                    self.views.thread(deploy, f"{icon} {stage.label}: {verdict.decision}.")
                    self.events.publish(DeployChanged(deploy.id))
            return True
        await (self._abort if verdict.outcome == "abort" else self._stage_failed)(deploy, spec, verdict.decision)
        return False

    async def _verify_stage(self, deploy: Deploy) -> tuple[bool, str]:
        """A staged deploy's verification, once, after its first engine call."""
        from bot.deploys.verification import verify

        checks = self.config.services[deploy.service].verify.get(deploy.environment)
        result = await verify(checks, self._job(deploy, fresh=False), sleep=self.verify_sleep, clock=self.verify_clock)
        deploy = self.store.deploys.record_verification(deploy.id, result.as_records())
        if result.checks:
            self.views.thread(deploy, verification_text(deploy))
        if result.passed:
            return True, ""
        failed = next(c for c in result.checks if not c.passed)
        return False, f"verification: {escape(failed.name)} — {escape(failed.detail)}"

    async def _stage_failed(self, deploy: Deploy, spec: DeployExecutor, reason: str) -> None:
        """A stage failed (engine, verification or analysis): before full
        traffic the rollout is aborted; after it (the bake), the deploy fails
        and its rollback is offered, or run where ``auto_rollback`` is on."""
        rollout = self.store.rollouts.get(deploy.id)
        assert rollout is not None
        if not rollout.full_traffic:
            # the decision is stored before the engine is called: a restart carries it out, never the next step
            self.store.rollouts.request_abort(deploy.id, ANALYSIS_ACTOR, reason)
            rollout = self.store.rollouts.get(deploy.id)
            assert rollout is not None
            await self._abort(deploy, spec, rollout.abort_reason or reason, by=rollout.abort_requested_by)
            return
        automatic = self.config.environment(deploy.environment).auto_rollback
        await self._end_at_full_traffic(deploy, rollout, f"failed at {self._where(rollout)}: {reason}",
                                        roll_back=automatic, outcome="failed")

    @staticmethod
    def _where(rollout: Rollout) -> str:
        current = rollout.current
        if current is None:
            return "the end"
        return "the bake" if current.kind == "bake" else current.label

    async def _abort(self, deploy: Deploy, spec: DeployExecutor, reason: str, by: str | None = None) -> None:
        """Abort the rollout. Before full traffic the stable version still
        serves: the engine returns all traffic to it (weight 0, or
        switch_back), the deploy fails, the environment is locked and the
        version blocked, and nothing is left to roll back. After it, an abort
        is a rollback."""
        rollout = self.store.rollouts.get(deploy.id)
        assert rollout is not None
        by = by or rollout.abort_requested_by or ANALYSIS_ACTOR
        if rollout.full_traffic:
            await self._end_at_full_traffic(deploy, rollout, f"aborted at {self._where(rollout)}: {reason}",
                                            roll_back=True, outcome="failed")
            return
        stage = rollout.current
        assert stage is not None
        where = stage.label
        job = self._stage_job(deploy, rollout, stage, abort=True)
        self.views.thread(deploy, f":octagonal_sign: Aborting at {where}: {reason}. Returning all traffic to "
                                  f"{escape(deploy.previous_version or 'the stable version')}…")
        outcome = await self._execute(deploy, spec, job, resume=deploy.reference.get("stage") == job.stage_key,
                                      rerun_if_lost=True)
        status_reason = f"aborted at {where}: {reason}"
        if not outcome.succeeded:  # the new version may still serve its share: a rollback stays on offer
            status_reason += (f"; the engine could not return traffic to the stable version "
                              f"({escape(outcome.summary)}): check it now")
        who = "Slipway" if by == ANALYSIS_ACTOR else mention(by)
        lock_reason = f"{deploy.display_version} aborted at {where} by {who}"
        try:
            with self.store.transaction():
                self.store.rollouts.end_stage(deploy.id, stage.position, ABORTED, reason)
                self.store.rollouts.end(deploy.id, "aborted" if outcome.succeeded else "abort_failed")
                deploy = self.store.deploys.transition(
                    deploy.id, allowed_from=(DeployStatus.DEPLOYING, DeployStatus.VERIFYING), to=DeployStatus.FAILED,
                    actor=None if by == ANALYSIS_ACTOR else by, action="aborted", reason=status_reason)
                self.store.locks.acquire(deploy.service, deploy.environment, by, lock_reason, keep_existing=True,
                                         deploy_id=deploy.id)
                self.store.locks.block_version(deploy.service, deploy.environment, deploy.version, by,
                                               f"{lock_reason} (#{deploy.id})")
                self.events.publish(DeployChanged(deploy.id))
                self.views.thread(deploy, abort_text(deploy) if outcome.succeeded else failure_text(deploy))
                self._ship_report(deploy)
        except StateConflict:
            return

    async def _end_at_full_traffic(self, deploy: Deploy, rollout: Rollout, reason: str, *, roll_back: bool,
                                   outcome: str) -> None:
        """The deploy fails with the new version at full traffic: its rollback
        is offered on the message, or (``roll_back``) recorded as an intent
        with the failure and carried out at once."""
        current = rollout.current
        try:
            with self.store.transaction():
                if current is not None:
                    self.store.rollouts.end_stage(deploy.id, current.position, FAILED, reason)
                self.store.rollouts.end(deploy.id, outcome)
                deploy = self.store.deploys.transition(
                    deploy.id, allowed_from=(DeployStatus.DEPLOYING, DeployStatus.VERIFYING, DeployStatus.BAKING),
                    to=DeployStatus.FAILED, actor=None, action="failed", reason=reason)
                if roll_back:
                    self.store.intents.add(AUTO_ROLLBACK, deploy.id)
                self.events.publish(DeployChanged(deploy.id))
                self._tell_finished(deploy)
        except StateConflict:
            return
        if roll_back:
            self.events.publish(RollbackIntended(deploy.id))

    async def _finish(self, deploy: Deploy, status: DeployStatus, reason: str | None,
                      allowed_from: tuple[DeployStatus, ...] = (DeployStatus.DEPLOYING,
                                                                DeployStatus.VERIFYING)) -> None:
        """End the deploy: its new state, what it undoes (a rollback's), and
        every note and redraw it calls for, as one transaction."""
        try:
            with self.store.transaction():
                deploy = self.store.deploys.transition(deploy.id, allowed_from=allowed_from, to=status, actor=None,
                                                       action=status, reason=reason)
                # a rollout ends with its deploy, whichever path ended it
                self.store.rollouts.end(deploy.id, "passed" if status == DeployStatus.SUCCEEDED else "failed")
                self.events.publish(DeployChanged(deploy.id))
                self._tell_finished(deploy)
        except StateConflict:
            return

    def _tell_finished(self, deploy: Deploy) -> None:
        if deploy.status == DeployStatus.CANCELLED:
            self.views.thread(deploy, f":heavy_multiplication_x: {deploy.status_reason}.")
            return
        if deploy.status == DeployStatus.FAILED:
            self.views.thread(deploy, failure_text(deploy))
            self._ship_report(deploy)
            return
        self.views.thread(deploy, success_text(deploy, format_duration(deploy.duration_seconds)))
        # the messages of earlier finished deploys here offer a rollback (or say why not) in terms of
        # the newest success: this one changes that for every one of them, not only the last
        for earlier in self.store.deploys.history(deploy.service, deploy.environment, limit=REDRAWN_ON_SUCCESS):
            if earlier.id < deploy.id and earlier.status in (DeployStatus.SUCCEEDED, DeployStatus.FAILED):
                self.events.publish(DeployChanged(earlier.id))
        if deploy.rollback_of is not None:
            self._mark_rolled_back(deploy)
        self._ship_report(deploy)

    def _ship_report(self, deploy: Deploy) -> None:
        """The ship report, in the thread of a deploy to the last rung (production)."""
        if deploy.environment == self.config.environment_names[-1]:
            self.views.thread(deploy, as_slack_mrkdwn(ship_report(self.store, self.config, deploy)))

    def _mark_rolled_back(self, rollback: Deploy) -> None:
        """The deploy a successful rollback undid is now rolled back (in the rollback's transaction)."""
        undone = self.store.deploys.get(rollback.rollback_of)
        if undone.status != DeployStatus.SUCCEEDED:
            return  # a failed deploy stays failed; the rollback record points at it
        undone = self.store.deploys.transition(undone.id, allowed_from=(DeployStatus.SUCCEEDED,),
                                               to=DeployStatus.ROLLED_BACK, actor=rollback.requested_by,
                                               action="rolled_back",
                                               reason=f"rolled back to {rollback.display_version} by #{rollback.id}")
        self.events.publish(DeployChanged(undone.id))
        # the rollback's own message may have been drawn while the undone deploy
        # still counted as a success, offering to "roll back" to the version just left
        self.events.publish(DeployChanged(rollback.id))
