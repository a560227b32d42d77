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
WORKERS = 2  # processes asking sources and registries
WORKER_GRACE = 2.0  # seconds beyond the lookup's own timeout before a worker's answer is given up on
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
        self._injected = source_for is not None
        self._source_for = source_for or self._source
        self._sources: dict[str, ChangeSource | None] = {}
        self._pool: Any = None  # the worker processes that ask sources and registries
        self._running: dict[int, asyncio.Task[str | None]] = {}
        self._cache: dict[tuple[str, str, str], ChangeSet] = {}

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

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
        try:
            problems = [escape(problem) for problem in await self._check_artifacts(deploy, service)]
            change_set, unavailable = await self._changes(deploy, service)
        except Exception as failure:  # noqa: BLE001 — a lookup that breaks must not hold the request forever
            log.exception("deploy %s: the lookups failed", deploy_id)
            self._pool_broken()
            reason = escape(f"the lookups failed ({type(failure).__name__}: {failure})")
            problems = [reason] if service.artifacts is not None else []  # artifact checks fail closed
            change_set, unavailable = None, reason
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
                                                                DeployStatus.QUEUED, DeployStatus.APPROVED):
                refusal = f"{deploy.service} {deploy.display_version} cannot be deployed: " + "; ".join(problems)
                try:
                    deploy = self.store.deploys.transition(
                        deploy_id, allowed_from=(DeployStatus.AWAITING_APPROVAL, DeployStatus.QUEUED,
                                                 DeployStatus.APPROVED),
                        to=DeployStatus.CANCELLED, actor=None, action="artifact_check_failed",
                        reason="; ".join(problems))
                    self.views.thread(deploy, f":no_entry: Cancelled before anything ran: {deploy.status_reason}.")
                except StateConflict:
                    refusal = None
            if problems and rollback:  # a rollback goes on: speed matters, and what runs now is worse
                self.views.thread(deploy, ":warning: Rolling back anyway, but look: " + "; ".join(problems) + ".")
            self.events.publish(DeployChanged(deploy_id))
        return refusal

    async def _ask(self, what: str, service: str, *args: Any) -> Any:
        """Ask the service's source (``tag``, ``compare``) or its registry
        (``image``). In a worker process: a lookup is dozens of HTTP answers
        (compare, commit pulls), whose handling on Slipway's event loop (or on
        a thread, under the GIL) doubled /deploy's ack p99 next to it
        (bench/changes_ack.py); a process of its own runs on the other core.
        A source handed in (tests) is asked here, on the loop.

        Raises:
            SourceUnavailable, TagMissing, InvalidImageReference.
        """
        if self._injected:
            return await self._ask_here(what, service, *args)
        if self._pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            # spawn: a fork of this process (its threads, its loop) is not safe to run
            self._pool = ProcessPoolExecutor(max_workers=WORKERS, mp_context=multiprocessing.get_context("spawn"))
        changes = self.config.services[service].changes
        spec = changes.model_dump_json() if changes is not None else None
        token = None
        if what != "image" and changes is not None and changes.github is not None:
            token = self.environ.get(changes.github.token_env)
        call = asyncio.get_running_loop().run_in_executor(self._pool, ask_in_worker, what, spec, token, args,
                                                          self.timeout)
        try:
            kind, value = await asyncio.wait_for(call, self.timeout + WORKER_GRACE)
        except TimeoutError:
            raise SourceUnavailable(f"the {what} lookup took longer than {self.timeout:g} s") from None
        return _answer(kind, value)

    def _pool_broken(self) -> None:
        """A worker that died breaks the pool for good (BrokenProcessPool on every
        later call): the next lookup gets a new one."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    async def _ask_here(self, what: str, service: str, *args: Any) -> Any:
        if what == "image":
            from bot.changes.artifacts import image_exists

            image, token = args
            return await self._bounded("the registry", image_exists(image, token=token, timeout=self.timeout))
        source = self._source_for(service)
        if source is None:
            raise SourceUnavailable("no source configured")
        if what == "tag":
            return await self._bounded("the tag lookup", source.tag_exists(*args))
        return await self._bounded("the changes lookup", source.compare(*args))

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
            try:
                if not await self._ask("tag", deploy.service, tag):
                    problems.append(f"its tag {tag} does not exist: tag and push it first")
            except SourceUnavailable as trouble:
                problems.append(f"could not check that its tag {tag} exists: {trouble}")
        if artifacts.image is not None:
            from bot.changes.artifacts import InvalidImageReference

            image = tag_of(artifacts.image, deploy.version)
            token = self.environ.get(artifacts.registry_token_env) if artifacts.registry_token_env else None
            try:
                if not await self._ask("image", deploy.service, image, token):
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
        key = (deploy.service, older, newer)
        try:
            found = self._cache.get(key)
            if found is None:
                found = await self._ask("compare", deploy.service, older, newer)
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



def _answer(kind: str, value: Any) -> Any:
    """A worker's answer, as the caller would have had it asking itself."""
    if kind == "ok":
        return value
    if kind == "tag_missing":
        raise TagMissing(value)
    if kind == "invalid_image":
        from bot.changes.artifacts import InvalidImageReference

        raise InvalidImageReference(value)
    raise SourceUnavailable(value)


def ask_in_worker(what: str, spec: str | None, token: str | None, args: tuple[Any, ...],
                  timeout: float) -> tuple[str, Any]:
    """In a worker process: one question to a source or a registry, answered
    as ``(kind, value)`` (exceptions do not cross processes faithfully)."""
    from bot.changes.artifacts import InvalidImageReference, image_exists
    from bot.config import Changes

    async def ask() -> Any:
        if what == "image":
            image, registry_token = args
            return await image_exists(image, token=registry_token, timeout=timeout)
        assert spec is not None
        changes = Changes.model_validate_json(spec)
        if changes.github is not None:
            from bot.changes.github import GitHubSource

            source: ChangeSource = GitHubSource(changes.github, token, timeout=timeout)
        else:
            from bot.changes.git import GitSource

            assert changes.git is not None
            source = GitSource(changes.git, timeout=timeout)
        if what == "tag":
            return await source.tag_exists(*args)
        return await source.compare(*args)

    try:
        return "ok", asyncio.run(asyncio.wait_for(ask(), timeout))
    except TagMissing as missing:
        return "tag_missing", missing.tag
    except InvalidImageReference as bad:
        return "invalid_image", str(bad)
    except SourceUnavailable as trouble:
        return "unavailable", str(trouble)
    except TimeoutError:
        return "unavailable", f"took longer than {timeout:g} s"
