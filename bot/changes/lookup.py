"""After a request is acked: what it ships and whether its artifacts exist.

A request of a service with a ``changes`` source or an ``artifacts`` check is
recorded as ``checking`` (``deploys.lookup_state``): until its lookups have
finished it shows "checking…", cannot be approved and does not start, even
on a rung without approvals, so a migration hint always arrives before the
deploy can run. Each lookup gets at most ``LOOKUP_TIMEOUT`` seconds, then
counts as unavailable.

* **Artifacts** (``artifacts.tag_must_exist``, ``artifacts.image``): a
  missing tag or image cancels the request with its reason. Where the check
  cannot be made (source or registry unreachable) a new request is cancelled
  saying so (fail closed); a rollback never waits for nor is stopped by
  these checks: a problem is a warning in its thread.
* **Changes** (``changes``): the commits and pull requests between the
  version live on the environment and the requested one (what a downgrade or
  rollback takes out; a first deploy says so). A source that fails never
  blocks a deploy: the record says "changes unavailable: <reason>".
  Results are cached per (source, older, newer).
* **Migration hints**: when the range touches ``changes.migration_paths``
  and the request did not say ``--migration``, it is treated as carrying one
  (the migration checklist and backup apply), and the files are kept.

Everything found is recorded in one transaction with what it calls for (the
cancellation, the redraw); the views draw it from the record.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from bot.changes.model import (
    BACKWARD,
    FIRST,
    FORWARD,
    SAME,
    ChangeSet,
    ChangeSource,
    SourceUnavailable,
    TagMissing,
    migration_files,
)
from bot.config import Config, Service
from bot.deploys.ports import DeployViews
from bot.deploys.versions import parse_version
from bot.events import DeployChanged, EventBus
from bot.slack.mrkdwn import escape
from bot.runtime.tasks import BackgroundTasks
from store import Deploy, DeployStatus, StateConflict, Store

log = logging.getLogger(__name__)

LOOKUP_TIMEOUT = 10.0  # seconds each lookup may take before it counts as unavailable
CACHE_SIZE = 256


def tag_of(template: str, version: str) -> str:
    return template.replace("{version}", version)


class ChangeLookups:
    """Runs each request's lookups once, in the background, and records them."""

    def __init__(self, config: Config, store: Store, events: EventBus, tasks: BackgroundTasks,
                 environ: Mapping[str, str], views: DeployViews, *, source_for: Callable[[str], ChangeSource | None] | None = None,
                 timeout: float = LOOKUP_TIMEOUT) -> None:
        self.config = config
        self.store = store
        self.events = events  # publishes DeployChanged when a lookup is recorded
        self.tasks = tasks
        self.environ = environ
        self.views = views
        self.timeout = timeout
        self._source_for = source_for or self._source
        self._sources: dict[str, ChangeSource | None] = {}  # one per service: a git mirror's fetches are shared
        self._running: dict[int, asyncio.Task[str | None]] = {}
        self._cache: dict[tuple[str, str, str], ChangeSet] = {}
        self._away: _AwayLoop | None = None  # where the sources' HTTP and git run, off Slipway's event loop

    async def close(self) -> None:
        if self._away is not None:
            await self._away.close()
            self._away = None

    async def _off_loop(self, work: Callable[[], Any]) -> Any:
        """Run the coroutine ``work()`` makes on a thread with an event loop of
        its own: a lookup's dozens of HTTP answers (compare, commit pulls)
        then never resume on the loop that answers Slack (bench/changes_ack.py:
        on the loop they doubled /deploy's ack p99)."""
        if self._away is None:
            self._away = _AwayLoop()
        return await self._away.run(work)

    # -- starting -------------------------------------------------------------------------

    def start(self, deploy_id: int) -> asyncio.Task[str | None] | None:
        """Look deploy ``deploy_id`` up in the background (once, however often
        asked); the task's result is the refusal to tell the requester, if
        any. None when there is nothing to look up."""
        if deploy_id in self._running:
            return self._running[deploy_id]
        deploy = self.store.deploys.get(deploy_id)
        if deploy.lookup_state != "checking":
            return None
        task = self.tasks.spawn(self._look_up(deploy_id), name=f"lookup-{deploy_id}")
        self._running[deploy_id] = task
        task.add_done_callback(lambda _: self._running.pop(deploy_id, None))
        return task

    def posted(self, event: Any) -> None:
        """A deploy's message is shown (``DeployPosted``): look it up if it still
        needs it (a rollback, a request whose announcement started nothing)."""
        self.start(event.deploy_id)

    def recover(self) -> None:
        """At start: the lookups a previous Slipway left unfinished."""
        for deploy_id in self.store.deploys.checking():
            self.start(deploy_id)

    # -- one deploy -----------------------------------------------------------------------

    async def _look_up(self, deploy_id: int) -> str | None:
        deploy = self.store.deploys.get(deploy_id)
        service = self.config.services[deploy.service]
        rollback = deploy.rollback_of is not None
        # a status reason and a thread note are mrkdwn: what registries and sources said is escaped
        problems = [escape(problem) for problem in await self._off_loop(
            lambda: self._check_artifacts(deploy, service))]
        change_set, unavailable = await self._off_loop(lambda: self._changes(deploy, service))
        record: dict[str, Any] | None = None
        if change_set is not None:
            record = change_set.as_record()
        elif unavailable is not None:
            record = {"unavailable": unavailable}
        if problems:
            record = {**(record or {}), "artifact_problems": problems}
        migration_checklist = None
        if change_set is not None and change_set.migration_files and not deploy.migration and not rollback:
            environment = self.config.environment_for(deploy.service, deploy.environment)
            migration_checklist = list(environment.migration_checklist) if environment.approvals else []
        refusal = None
        with self.store.transaction():
            deploy = self.store.deploys.record_lookup(deploy_id, record, migration_checklist=migration_checklist)
            if problems and not rollback and deploy.status in (DeployStatus.AWAITING_APPROVAL,
                                                                DeployStatus.APPROVED):
                refusal = f"{deploy.service} {deploy.display_version} cannot be deployed: " + "; ".join(problems)
                try:
                    deploy = self.store.deploys.transition(
                        deploy_id, allowed_from=(DeployStatus.AWAITING_APPROVAL, DeployStatus.APPROVED),
                        to=DeployStatus.CANCELLED, actor=None, action="artifact_check_failed",
                        reason="; ".join(problems))
                    self.views.thread(deploy, f":no_entry: Cancelled before anything ran: {deploy.status_reason}.")
                except StateConflict:
                    refusal = None
            if problems and rollback:  # a rollback goes on: speed matters, and what runs now is worse
                self.views.thread(deploy, ":warning: Rolling back anyway, but look: " + "; ".join(problems) + ".")
            self.events.publish(DeployChanged(deploy_id))
        return refusal

    async def _bounded(self, what: str, call: Any) -> Any:
        try:
            return await asyncio.wait_for(call, self.timeout)
        except TimeoutError:
            raise SourceUnavailable(f"{what} took longer than {self.timeout:g} s") from None

    async def _check_artifacts(self, deploy: Deploy, service: Service) -> list[str]:
        """What is missing or could not be checked, one sentence each (empty: all there)."""
        artifacts = service.artifacts
        if artifacts is None:
            return []
        problems = []
        if artifacts.tag_must_exist and service.changes is not None:
            tag = tag_of(service.changes.tag_template, deploy.version)
            source = self._source_for(deploy.service)
            try:
                if source is not None and not await self._bounded("the tag lookup", source.tag_exists(tag)):
                    problems.append(f"its tag {tag} does not exist: tag and push it first")
            except SourceUnavailable as trouble:
                problems.append(f"could not check that its tag {tag} exists: {trouble}")
        if artifacts.image is not None:
            from bot.changes.artifacts import InvalidImageReference, image_exists

            image = tag_of(artifacts.image, deploy.version)
            token = self.environ.get(artifacts.registry_token_env) if artifacts.registry_token_env else None
            try:
                if not await self._bounded("the registry", image_exists(image, token=token, timeout=self.timeout)):
                    problems.append(f"its image {image} is not in the registry: build and push it first")
            except SourceUnavailable as trouble:
                problems.append(f"could not check that its image {image} exists: {trouble}")
            except InvalidImageReference as bad:  # e.g. a version with build metadata: `+` is no tag character
                problems.append(f"its image cannot be named: {bad}")
        return problems

    async def _changes(self, deploy: Deploy, service: Service) -> tuple[ChangeSet | None, str | None]:
        """The change set from the live version to the requested one, or why there is none."""
        changes = service.changes
        if changes is None:
            return None, None
        template = changes.tag_template
        head = tag_of(template, deploy.version)
        live = deploy.previous_version
        if live is None:
            return ChangeSet(None, head, FIRST), None
        base = tag_of(template, live)
        if parse_version(live).parsed == parse_version(deploy.version).parsed:
            return ChangeSet(base, head, SAME), None
        forward = parse_version(deploy.version).parsed > parse_version(live).parsed
        older, newer = (base, head) if forward else (head, base)
        source = self._source_for(deploy.service)
        if source is None:
            return None, "no source configured"
        key = (deploy.service, older, newer)
        try:
            found = self._cache.get(key)
            if found is None:
                found = await self._bounded("the changes lookup", source.compare(older, newer))
                if len(self._cache) >= CACHE_SIZE:
                    self._cache.pop(next(iter(self._cache)))
                self._cache[key] = found
        except (SourceUnavailable, TagMissing) as trouble:
            log.warning("deploy %s: changes unavailable: %s", deploy.id, trouble)
            return None, str(trouble)
        from dataclasses import replace

        direction = FORWARD if forward else BACKWARD
        return replace(found, base=base, head=head, direction=direction,
                       migration_files=migration_files(found.files, changes.migration_paths)), None

    # -- sources --------------------------------------------------------------------------

    def _source(self, service_name: str) -> ChangeSource | None:
        if service_name not in self._sources:
            self._sources[service_name] = self._build_source(service_name)
        return self._sources[service_name]

    def _build_source(self, service_name: str) -> ChangeSource | None:
        changes = self.config.services[service_name].changes
        if changes is None:
            return None
        if changes.github is not None:
            from bot.changes.github import GitHubSource

            return GitHubSource(changes.github, self.environ.get(changes.github.token_env), timeout=self.timeout)
        assert changes.git is not None
        from bot.changes.git import GitSource

        return GitSource(changes.git, timeout=self.timeout)


class _AwayLoop:
    """An event loop on a thread of its own, for work that is all waiting on
    the network but would still cost Slipway's loop a resumption per answer."""

    def __init__(self) -> None:
        import threading

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="change-lookups", daemon=True)
        self.thread.start()

    async def run(self, work: Callable[[], Any]) -> Any:
        async def call() -> Any:
            return await work()

        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(call(), self.loop))

    async def close(self) -> None:
        async def shut() -> None:
            for task in [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]:
                task.cancel()
            await asyncio.sleep(0)

        try:
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(shut(), self.loop))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            await asyncio.to_thread(self.thread.join, 5)
            if not self.loop.is_running():
                self.loop.close()
