"""The real Prometheus Alertmanager, run as a subprocess on 127.0.0.1, for
end-to-end tests of Slipway's alert webhook.

    async with RealAlertmanager(webhook_url, token) as am:
        fired = await am.fire("HighErrorRate", service="api", env="production")
        ...                                  # Slipway gets a "firing" webhook
        await am.resolve(fired["labels"])    # ... then a "resolved" one

Alertmanager gets one route and one receiver whose webhook posts to
``webhook_url`` with ``Authorization: Bearer <token>`` and ``send_resolved``.
Gossip (HA clustering) is off unless asked for, everything listens on
127.0.0.1 only, and Alertmanager's log (stderr, debug level) goes to a file:
it is printed when the ``async with`` block fails and attached to every
error this module raises. A fixture can call ``print_log()`` at teardown:
pytest shows teardown output only for failing tests.

Timings default to test speed: group_wait 100ms (enough to batch the alerts of
one POST into one notification; 0s does not), group_interval 100ms (the delay
before a resolution, or a change to a group, is notified), repeat_interval 1h
(no repeats unless a test asks for them).

The binary is Debian's ``prometheus-alertmanager`` (v0.25), which .ci/run
installs. If it is missing, ``ensure_installed()`` tries ``apt-get install``
once and otherwise FAILS the test, never skips: an alert path that silently
stops being tested is worse than a red build.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import aiohttp
import yaml

from tests.debian import DebianProgram, ServerFiles, free_port, proxy_free_env

PACKAGE = "prometheus-alertmanager"
DEFAULT_BINARY = "/usr/bin/prometheus-alertmanager"
DEFAULT_GROUP_BY = ("alertname", "service", "env")
RECEIVER = "slipway"

MISSING_MESSAGE = (
    "The real Prometheus Alertmanager is needed by the alert end-to-end tests "
    f"but was not found (looked for $ALERTMANAGER_BIN, {DEFAULT_BINARY}, and "
    "prometheus-alertmanager / alertmanager on PATH). .ci/run installs it; "
    f"locally run `apt-get install -y {PACKAGE}` (Debian/Ubuntu, v0.25) or point "
    "ALERTMANAGER_BIN at an alertmanager binary (v0.25 or later)."
)



class AlertmanagerError(RuntimeError):
    """Alertmanager failed to start or refused a request; carries its log."""


# -- the binary ----------------------------------------------------------------

PROGRAM = DebianProgram(PACKAGE, DEFAULT_BINARY, "ALERTMANAGER_BIN", (PACKAGE, "alertmanager"), MISSING_MESSAGE)
binary = PROGRAM.binary
ensure_installed = PROGRAM.ensure_installed


def installed() -> bool:
    return binary() is not None


# -- building alerts -----------------------------------------------------------

def rfc3339(moment: datetime | None = None) -> str:
    """A timestamp as Alertmanager's API writes it (UTC, milliseconds)."""
    moment = (moment or datetime.now(UTC)).astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_time(value: str) -> datetime:
    """A timestamp from Alertmanager. Compare these, not strings: Go writes
    RFC 3339 with trailing zeros trimmed (".810" comes back as ".81", a whole
    second has no fraction), and a firing alert's endsAt is
    "0001-01-01T00:00:00Z"."""
    return datetime.fromisoformat(value)


def alert(alertname: str, *, service: str | None = None, env: str | None = None,
          labels: Mapping[str, str] | None = None,
          annotations: Mapping[str, str] | None = None,
          starts_at: datetime | str | None = None, ends_at: datetime | str | None = None,
          generator_url: str | None = None) -> dict[str, Any]:
    """One alert in API v2 form ({labels, annotations, startsAt, endsAt?,
    generatorURL?}). ``starts_at`` defaults to now. Without ``ends_at`` the
    alert fires until resolved, or until ``resolve_timeout`` passes without it
    being pushed again. Extra ``labels`` override the named ones."""
    all_labels = {"alertname": alertname}
    if service is not None:
        all_labels["service"] = service
    if env is not None:
        all_labels["env"] = env
    all_labels.update(labels or {})
    body: dict[str, Any] = {
        "labels": all_labels,
        "annotations": dict(annotations or {}),
        "startsAt": _timestamp(starts_at) if starts_at is not None else rfc3339(),
    }
    if ends_at is not None:
        body["endsAt"] = _timestamp(ends_at)
    if generator_url is not None:
        body["generatorURL"] = generator_url
    return body


def _timestamp(value: datetime | str) -> str:
    return value if isinstance(value, str) else rfc3339(value)


def _key(labels: Mapping[str, str]) -> frozenset[tuple[str, str]]:
    return frozenset(labels.items())


# -- the process ---------------------------------------------------------------

class RealAlertmanager(ServerFiles):
    """A real Alertmanager on 127.0.0.1 whose only receiver is a webhook to
    ``webhook_url`` (Bearer ``token``, ``send_resolved``). Durations are
    Alertmanager's syntax ("100ms", "1s", "1h").

    HA: ``cluster_peers=None`` (the default) turns gossip off. A list, even an
    empty one, makes this instance a cluster member gossiping on 127.0.0.1
    (``cluster_address``) with those peers; start() then also waits until the
    cluster has settled. ``peer_timeout`` is how long the n-th member waits
    (times n) before notifying: "0s" lets every member notify (duplicates).
    Two instances that are *not* clustered and get the same alerts each
    notify, which is how a real HA pair with broken gossip behaves.
    """

    NAME = "Alertmanager"
    CONFIG_FILE = "alertmanager.yml"
    LOG_FILE = "alertmanager.log"
    NO_LOG = "(no Alertmanager log)\n"

    def __init__(self, webhook_url: str, token: str, *,
                 group_by: Iterable[str] = DEFAULT_GROUP_BY,
                 group_wait: str = "100ms", group_interval: str = "100ms",
                 repeat_interval: str = "1h", resolve_timeout: str = "5m",
                 send_resolved: bool = True, max_alerts: int = 0,
                 cluster_peers: Iterable[str] | None = None,
                 peer_timeout: str | None = None, gossip_interval: str = "5ms",
                 workdir: str | os.PathLike[str] | None = None,
                 log_level: str = "debug", startup_timeout: float = 20.0,
                 binary_path: str | None = None, extra_args: Iterable[str] = ()) -> None:
        self.webhook_url = webhook_url
        self.token = token
        self.group_by = list(group_by)
        self.group_wait = group_wait
        self.group_interval = group_interval
        self.repeat_interval = repeat_interval
        self.resolve_timeout = resolve_timeout
        self.send_resolved = send_resolved
        self.max_alerts = max_alerts
        self.cluster_peers = None if cluster_peers is None else list(cluster_peers)
        self.peer_timeout = peer_timeout
        self.gossip_interval = gossip_interval
        self.log_level = log_level
        self.startup_timeout = startup_timeout
        self.extra_args = list(extra_args)
        self._binary_path = binary_path
        self._workdir_given = workdir is not None
        self.workdir: Path | None = Path(workdir) if workdir is not None else None
        self.port: int | None = None
        self.url: str | None = None  # http://127.0.0.1:<port>, also its externalURL
        self.cluster_port: int | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._session: aiohttp.ClientSession | None = None
        self._pushed: dict[frozenset[tuple[str, str]], dict[str, Any]] = {}

    # -- configuration --

    def config(self) -> dict[str, Any]:
        """The Alertmanager configuration (written out as YAML)."""
        return {
            "global": {"resolve_timeout": self.resolve_timeout},
            "route": {
                "receiver": RECEIVER,
                "group_by": self.group_by,
                "group_wait": self.group_wait,
                "group_interval": self.group_interval,
                "repeat_interval": self.repeat_interval,
            },
            "receivers": [{
                "name": RECEIVER,
                "webhook_configs": [{
                    "url": self.webhook_url,
                    "send_resolved": self.send_resolved,
                    "max_alerts": self.max_alerts,
                    "http_config": {
                        "authorization": {"type": "Bearer", "credentials": self.token},
                    },
                }],
            }],
        }

    def config_text(self) -> str:
        return yaml.safe_dump(self.config(), sort_keys=False)

    @property
    def cluster_address(self) -> str:
        """Where this member gossips, for another member's ``cluster_peers``."""
        assert self.cluster_port is not None, "not a started cluster member"
        return f"127.0.0.1:{self.cluster_port}"

    @property
    def returncode(self) -> int | None:
        return None if self._process is None else self._process.returncode

    def print_log(self) -> None:
        sys.stderr.write(self._framed(self.log()) + "\n")

    def _error(self, message: str) -> AlertmanagerError:
        return AlertmanagerError(f"{message}\n{self._framed(self.log())}")

    # -- lifecycle --

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and not isinstance(exc, AlertmanagerError):
            self.print_log()
        await self.stop()

    async def start(self) -> Self:
        path = self._binary_path or await asyncio.to_thread(ensure_installed)
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="alertmanager-"))
        (self.workdir / "data").mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config_text())
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        # Ports are picked, released, then bound by Alertmanager: another
        # process can take one in between, so a bind failure gets new ports.
        for attempt in range(3):
            try:
                await self._launch(path)
                return self
            except BaseException as exc:
                retry = (isinstance(exc, AlertmanagerError) and attempt < 2
                         and "address already in use" in self.log())
                await self._terminate()
                if not retry:
                    await self.stop()
                    raise
        raise AssertionError("unreachable")

    async def _launch(self, path: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [
            path,
            f"--config.file={self.config_path}",
            f"--storage.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            f"--web.external-url={self.url}",  # else derived from the hostname
            f"--log.level={self.log_level}",
        ]
        if self.cluster_peers is None:
            args.append("--cluster.listen-address=")  # gossip off: no peers, no port 9094
        else:
            self.cluster_port = free_port()
            args += [f"--cluster.listen-address={self.cluster_address}",
                     f"--cluster.advertise-address={self.cluster_address}",
                     # Settling takes a few polls of 10 gossip intervals (20s
                     # at the default 200ms), and notifications wait for it.
                     f"--cluster.gossip-interval={self.gossip_interval}"]
            args += [f"--cluster.peer={peer}" for peer in self.cluster_peers]
            if self.peer_timeout is not None:
                args.append(f"--cluster.peer-timeout={self.peer_timeout}")
        args += self.extra_args
        # No proxy: the webhook must go straight to 127.0.0.1.
        with self._command_log(args) as log:
            self._process = await asyncio.create_subprocess_exec(
                *args, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
                env=proxy_free_env(), cwd=self.workdir, start_new_session=True)
        await self._wait_ready()

    async def _wait_ready(self) -> None:
        """Poll (it is an external process) until /-/ready answers 200 and,
        for a cluster member, /api/v2/status says the cluster has settled."""
        assert self._process is not None and self._session is not None
        deadline = time.monotonic() + self.startup_timeout
        clustered = self.cluster_peers is not None
        last = "no answer yet"
        ready = False
        while True:
            if self._process.returncode is not None:
                raise self._error(f"Alertmanager exited with {self._process.returncode} "
                                  "before it was ready")
            try:
                if not ready:
                    async with self._session.get(f"{self.url}/-/ready") as response:
                        ready = response.status == 200
                        last = f"/-/ready: HTTP {response.status}"
                if ready and not clustered:
                    return
                if ready:
                    async with self._session.get(f"{self.url}/api/v2/status") as response:
                        cluster = (await response.json())["cluster"]
                        if cluster["status"] == "ready":
                            return
                        last = f"cluster {cluster['status']}"
            except aiohttp.ClientError as exc:
                last = repr(exc)
            if time.monotonic() > deadline:
                raise self._error(f"Alertmanager not ready after {self.startup_timeout}s "
                                  f"({last})")
            await asyncio.sleep(0.05)

    async def _terminate(self) -> None:
        """SIGTERM, SIGKILL after 5s; always reaped."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.returncode is None:
            try:
                process.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                await asyncio.wait_for(process.wait(), timeout=5)
            except TimeoutError:
                process.kill()
        await process.wait()

    async def stop(self) -> None:
        await self._terminate()
        if self._session is not None:
            await self._session.close()
            self._session = None
        if not self._workdir_given and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- API v2 --

    async def push(self, alerts: list[dict[str, Any]]) -> None:
        """POST alerts to /api/v2/alerts, as Prometheus does."""
        assert self._session is not None, "not started"
        async with self._session.post(f"{self.url}/api/v2/alerts", json=alerts) as response:
            if response.status != 200:
                raise self._error(f"POST /api/v2/alerts answered {response.status}: "
                                  f"{await response.text()}")
        for sent in alerts:
            self._pushed[_key(sent["labels"])] = sent

    async def fire(self, alertname: str, **kwargs: Any) -> dict[str, Any]:
        """Build one alert (see ``alert()``), push it, and return it."""
        firing = alert(alertname, **kwargs)
        await self.push([firing])
        return firing

    async def resolve(self, labels: Mapping[str, str], *,
                      ends_at: datetime | str | None = None) -> dict[str, Any]:
        """Push the alert with exactly these labels again with endsAt = now, as
        Prometheus does when an alert stops firing. Annotations, startsAt and
        generatorURL are those last pushed for these labels, if any."""
        previous = self._pushed.get(_key(labels))
        end = _timestamp(ends_at) if ends_at is not None else rfc3339()
        resolved: dict[str, Any] = {
            "labels": dict(labels),
            "annotations": dict(previous["annotations"]) if previous else {},
            "startsAt": previous["startsAt"] if previous else end,
            "endsAt": end,
        }
        if previous and "generatorURL" in previous:
            resolved["generatorURL"] = previous["generatorURL"]
        await self.push([resolved])
        return resolved

    async def alerts(self) -> list[dict[str, Any]]:
        """GET /api/v2/alerts: the alerts Alertmanager holds (with fingerprints)."""
        return await self._get("/api/v2/alerts")

    async def status(self) -> dict[str, Any]:
        """GET /api/v2/status (cluster status and peers, the loaded config)."""
        return await self._get("/api/v2/status")

    async def _get(self, path: str) -> Any:
        assert self._session is not None, "not started"
        async with self._session.get(f"{self.url}{path}") as response:
            if response.status != 200:
                raise self._error(f"GET {path} answered {response.status}: "
                                  f"{await response.text()}")
            return await response.json()
