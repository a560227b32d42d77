"""A real Prometheus server, run as a subprocess on 127.0.0.1, scraping a
small app whose request and error rates the test sets: for end-to-end tests
of the metric gates of progressive rollouts.

    app = MetricsApp().start()                # http://127.0.0.1:<port>/metrics
    app.set(service="api", track="stable", rps=100, error_rate=0.01)
    app.set(service="api", track="canary", rps=100, error_rate=0.2)
    async with RealPrometheus(targets=[app.target]) as prom:
        await prom.wait_for('sum(rate(http_requests_total{service="api"}[1m]))')
        ...                                   # ask prom.url what Slipway asks
        prom.stop()                           # now unreachable (connection refused)
        prom.start()                          # back, same URL, same data

Or the fixtures: ``metrics_app`` and ``real_prometheus`` (scraping it), one
of each per test module, the latter restarted for a test that finds it
stopped (``prometheus_server`` is the same server, for module-scoped
fixtures). They are shared by a module's tests, so each test uses services
of its own (``unique_service()``). Import them into a test module or
conftest::

    from tests.prometheus import metrics_app, prometheus_server, real_prometheus  # noqa: F401

**The app** (:class:`MetricsApp`) runs ``http.server.ThreadingHTTPServer``
in a thread, so in-process asyncio tests and Slipway run as a subprocess
both work with it. ``/metrics`` serves, per (service, track) that was set,
``http_requests_total{service, track, code="200"|"500"}``: counters that
grow with time at ``rps`` × (1 − ``error_rate``) and ``rps`` ×
``error_rate`` per second. They are computed from elapsed time, so they
never go down (a new ``set()`` changes the slope from then on), and a
``rate()`` over any window after two scrapes gives the ratio set: exactly
``error_rate`` once the window holds only samples since the last ``set()``.
``rps=0`` makes the ratio 0/0, which Prometheus answers as NaN.

**Prometheus** (:class:`RealPrometheus`) scrapes every target each second
(``scrape_interval`` and ``evaluation_interval`` 1s), keeps its TSDB in a
temporary directory and logs to a file there, printed when an ``async
with`` block fails and attached to every error this module raises. It is
ready in a fraction of a second, but scrapes first about 5 s after it
starts (its target discovery hands on targets at most every 5 s), and
``rate(x[1m])`` has an answer after two scrapes: about 7 s after a start or
restart. Hence one per module; wait with ``wait_for(query)`` or
``wait_scraped()``, not a sleep. After ``stop()``/``start()`` the samples
kept answer at once; new ones follow about 5 s later.

The binary is Debian's ``prometheus`` (v2.42), which .ci/run installs
(``$PROMETHEUS_BIN`` overrides it). If it is missing, ``ensure_installed()``
tries ``apt-get install`` once and otherwise FAILS the test, never skips:
a metric gate that silently stops being tested is worse than a red build.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import os
import threading
import time
import urllib.error
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

import pytest
import yaml

from tests.debian import LOCAL_OPENER as _opener
from tests.debian import DebianProgram, LocalServer, running, serving

PACKAGE = "prometheus"
DEFAULT_BINARY = "/usr/bin/prometheus"
JOB = "app"

MISSING_MESSAGE = (
    "The real Prometheus is needed by the metric-gate end-to-end tests but was "
    f"not found (looked for $PROMETHEUS_BIN, {DEFAULT_BINARY}, and prometheus on "
    f"PATH). .ci/run installs it; locally run `apt-get install -y {PACKAGE}` "
    "(Debian/Ubuntu, v2.42) or point PROMETHEUS_BIN at a prometheus binary (v2.x)."
)

_services = itertools.count(1)


class PrometheusError(RuntimeError):
    """Prometheus failed to start or to answer; carries its log."""


def unique_service(prefix: str = "svc") -> str:
    """A service name no other test of this process uses (the fixtures are
    shared by a module's tests, and Prometheus keeps every series)."""
    return f"{prefix}-{os.getpid()}-{next(_services)}"


# -- the binary ----------------------------------------------------------------

PROGRAM = DebianProgram(PACKAGE, DEFAULT_BINARY, "PROMETHEUS_BIN", ("prometheus",), MISSING_MESSAGE)
binary = PROGRAM.binary
ensure_installed = PROGRAM.ensure_installed


# -- the app Prometheus scrapes ------------------------------------------------

@dataclass
class _Traffic:
    since: float  # monotonic time of the last set()
    ok: float  # the counters at ``since``
    errors: float
    rps: float
    error_rate: float

    def counts(self, now: float) -> tuple[float, float]:
        elapsed = max(0.0, now - self.since)
        return (self.ok + self.rps * (1 - self.error_rate) * elapsed,
                self.errors + self.rps * self.error_rate * elapsed)


class MetricsApp:
    """An HTTP server on 127.0.0.1 (a thread) serving ``/metrics``: per
    (service, track) set, ``http_requests_total`` with ``code="200"`` and
    ``code="500"``, growing at the rates set. Usable as a context manager."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._traffic: dict[tuple[str, str], _Traffic] = {}
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.scrapes = 0  # how many times /metrics was served

    # -- what it serves --

    def set(self, *, service: str, track: str, rps: float, error_rate: float = 0.0) -> None:
        """From now on, ``service``'s ``track`` serves ``rps`` requests a
        second, ``error_rate`` of them (0..1) answered 500. The counters
        carry on from where they are, so they never go down."""
        if rps < 0 or not 0 <= error_rate <= 1:
            raise ValueError(f"rps must be >= 0 and error_rate in 0..1 (got {rps}, {error_rate})")
        now = self._clock()
        with self._lock:
            previous = self._traffic.get((service, track))
            ok, errors = previous.counts(now) if previous else (0.0, 0.0)
            self._traffic[(service, track)] = _Traffic(now, ok, errors, rps, error_rate)

    def remove(self, *, service: str, track: str) -> None:
        """Stop serving ``service``'s ``track``: Prometheus marks its series
        stale at the next scrape, so queries on it find no data."""
        with self._lock:
            self._traffic.pop((service, track), None)

    def counters(self, *, service: str, track: str) -> tuple[float, float]:
        """(requests answered 200, requests answered 500) so far."""
        with self._lock:
            return self._traffic[(service, track)].counts(self._clock())

    def exposition(self) -> str:
        """The ``/metrics`` body (Prometheus text format 0.0.4)."""
        now = self._clock()
        lines = ["# HELP http_requests_total Requests served, by service, track and status code.",
                 "# TYPE http_requests_total counter"]
        with self._lock:
            for (service, track), traffic in sorted(self._traffic.items()):
                ok, errors = traffic.counts(now)
                for code, count in (("200", ok), ("500", errors)):
                    lines.append(f'http_requests_total{{service="{_label(service)}",track="{_label(track)}",'
                                 f'code="{code}"}} {count!r}')
        return "\n".join(lines) + "\n"

    # -- lifecycle --

    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def target(self) -> str:
        """``host:port``, as a Prometheus scrape target."""
        assert self._server is not None, "not started"
        return f"127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> Self:
        app = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                if self.path.split("?")[0] != "/metrics":
                    self._answer(404, "text/plain; charset=utf-8", b"404 page not found\n")
                    return
                body = app.exposition().encode()
                app.scrapes += 1
                self._answer(200, "text/plain; version=0.0.4; charset=utf-8", body)

            def _answer(self, status: int, content_type: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass  # one line a second per scrape is noise

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-app", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


# -- Prometheus ----------------------------------------------------------------

class RealPrometheus(LocalServer):
    """A real Prometheus on 127.0.0.1 scraping ``targets`` (``host:port``,
    path /metrics) every ``scrape_interval``.

    ``start()`` launches it and waits until it is ready; ``stop()`` ends the
    process but keeps its port and data, so a later ``start()`` brings the
    same URL back; ``close()`` stops it for good and removes its directory.
    These are synchronous (so a fixture of any scope can use them, whatever
    the event loop); ``async with`` runs them in a thread. The queries
    (``query``, ``value``, ``wait_for``) are async. The lifecycle is
    ``LocalServer``'s (tests/debian.py).
    """

    NAME = "Prometheus"
    PROGRAM = PROGRAM
    ERROR = PrometheusError
    READY_PATH = "/-/ready"
    WORKDIR_PREFIX = "prometheus-"
    CONFIG_FILE = "prometheus.yml"
    LOG_FILE = "prometheus.log"
    NO_LOG = "(no Prometheus log)\n"

    def __init__(self, targets: Iterable[str] = (), *, scrape_interval: str = "1s",
                 evaluation_interval: str = "1s", workdir: str | os.PathLike[str] | None = None,
                 log_level: str = "info", startup_timeout: float = 30.0,
                 binary_path: str | None = None, extra_args: Iterable[str] = ()) -> None:
        super().__init__(workdir=workdir, startup_timeout=startup_timeout, binary_path=binary_path)
        self.targets = list(targets)
        self.scrape_interval = scrape_interval
        self.evaluation_interval = evaluation_interval
        self.log_level = log_level
        self.extra_args = list(extra_args)
        self.url: str | None = None  # http://127.0.0.1:<port>

    # -- configuration --

    def config(self) -> dict[str, Any]:
        """The Prometheus configuration (written out as YAML)."""
        return {
            "global": {"scrape_interval": self.scrape_interval,
                       "evaluation_interval": self.evaluation_interval,
                       "scrape_timeout": self.scrape_interval},
            "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": self.targets}]}],
        }

    def _command(self, path: str) -> list[str]:
        self.config_path.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        self.url = f"http://127.0.0.1:{self.port}"
        return [
            path,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            f"--web.external-url={self.url}",  # else derived from the hostname
            f"--log.level={self.log_level}",
            *self.extra_args,
        ]

    # -- async lifecycle --

    async def __aenter__(self) -> Self:
        path = self._binary_path or ensure_installed()  # pytest.fail must run in the test's thread
        self._binary_path = path
        return await asyncio.to_thread(self.start)

    async def __aexit__(self, exc_type, exc, tb) -> None:
        await asyncio.to_thread(self.__exit__, exc_type, exc, tb)

    # -- the HTTP API --

    async def query(self, promql: str) -> dict[str, Any]:
        """``data`` of ``GET /api/v1/query`` (its resultType and result);
        raises PrometheusError for anything but a success."""
        return await asyncio.to_thread(self._query, promql)

    def _query(self, promql: str) -> dict[str, Any]:
        assert self.url is not None, "not started"
        address = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
        try:
            with _opener.open(address, timeout=10) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise self._error(f"query {promql!r}: HTTP {exc.code}: {exc.read()[:500]!r}") from None
        except (OSError, urllib.error.URLError, ValueError) as exc:
            raise self._error(f"query {promql!r}: {exc!r}") from None
        if body.get("status") != "success":
            raise self._error(f"query {promql!r}: {body}")
        return body["data"]

    async def value(self, promql: str) -> float | None:
        """The first sample's value (or the scalar); None for an empty
        vector. NaN stays NaN: this is the test's view, not Slipway's."""
        data = await self.query(promql)
        if data["resultType"] == "scalar":
            return float(data["result"][1])
        if data["resultType"] == "vector":
            return float(data["result"][0]["value"][1]) if data["result"] else None
        raise self._error(f"query {promql!r} gave a {data['resultType']}, not one value")

    async def wait_for(self, promql: str, predicate: Callable[[float], bool] | None = None,
                       timeout: float = 30.0) -> float:
        """Poll until ``promql`` has a value (not None nor NaN) for which
        ``predicate`` holds (default: any), and return it. Fails with the
        last value seen and Prometheus' log after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        last: float | None = None
        while True:
            last = await self.value(promql)
            if last is not None and not math.isnan(last) and (predicate is None or predicate(last)):
                return last
            if time.monotonic() > deadline:
                raise self._error(f"{promql!r} still {last} after {timeout}s")
            await asyncio.sleep(0.2)

    async def wait_scraped(self, times: int = 2, timeout: float = 30.0) -> None:
        """Wait until every target has been scraped successfully ``times``
        times (two are what ``rate()`` needs)."""
        await self.wait_for(f'min(sum_over_time(up{{job="{JOB}"}}[1h]))', lambda n: n >= times, timeout)


# -- fixtures ------------------------------------------------------------------

@pytest.fixture(scope="module")
def metrics_app() -> Iterator[MetricsApp]:
    """The app Prometheus scrapes, one per test module: ``set()`` the
    traffic of a service of your own (``unique_service()``)."""
    with MetricsApp() as app:
        yield app


@pytest.fixture(scope="module")
def prometheus_server(metrics_app: MetricsApp) -> Iterator[RealPrometheus]:
    """The module's Prometheus scraping ``metrics_app`` (for module-scoped
    fixtures; a test takes ``real_prometheus``, which is this one running)."""
    yield from serving(RealPrometheus(targets=[metrics_app.target]))


@pytest.fixture
def real_prometheus(prometheus_server: RealPrometheus) -> Iterator[RealPrometheus]:
    """A real Prometheus scraping ``metrics_app`` every second, running when
    the test starts (restarted if an earlier test stopped it). Its log is
    printed at teardown, which pytest shows when the test failed."""
    yield from running(prometheus_server)
