"""The metric gates of progressive rollouts (bot.deploys.analysis): filling
and escaping queries, judging a value against its ceilings and baseline, the
sparkline and numbers people read, and measuring against a real Prometheus
(tests/prometheus.py) that scrapes an app whose error rates the tests set."""

from __future__ import annotations

import asyncio
import json
import math
import socket
import time
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
from aiohttp import web

from bot.config import AnalysisCheck
from bot.deploys.analysis import (
    Measurement,
    Prometheus,
    PrometheusUnavailable,
    fill_query,
    format_value,
    judge,
    measure,
    sparkline,
)
from tests.prometheus import (  # noqa: F401 (fixtures)
    MetricsApp,
    RealPrometheus,
    metrics_app,
    prometheus_server,
    real_prometheus,
    unique_service,
)

# The README's check, word for word.
ERROR_RATE = ('sum(rate(http_requests_total{service="{service}",track="canary",code=~"5.."}[1m]))\n'
              '/ sum(rate(http_requests_total{service="{service}",track="canary"}[1m]))')
STABLE_ERROR_RATE = ('sum(rate(http_requests_total{service="{service}",track="stable",code=~"5.."}[1m]))\n'
                     '/ sum(rate(http_requests_total{service="{service}",track="stable"}[1m]))')
VALUES = {"service": "api", "environment": "production", "version": "2.7.0", "previous_version": "2.6.1"}


def check(**options) -> AnalysisCheck:
    """The README's error_rate check, ``options`` overriding its fields."""
    fields = {"query": ERROR_RATE, "baseline_query": STABLE_ERROR_RATE, "max": 0.05, "max_ratio": 2,
              "min_baseline": 0.001}
    return AnalysisCheck(**{**fields, **options})


# -- fill_query ------------------------------------------------------------------------

def test_fill_query_fills_the_four_placeholders_and_leaves_promql_braces_alone() -> None:
    template = ('x{service="{service}",env="{environment}",v="{version}",was="{previous_version}"}'
                ' + on(job) y{job=~".+"}[5m:{window}]')
    assert fill_query(template, **VALUES) == (
        'x{service="api",env="production",v="2.7.0",was="2.6.1"} + on(job) y{job=~".+"}[5m:{window}]')


def test_fill_query_without_a_previous_version_fills_the_empty_string() -> None:
    assert fill_query('x{was="{previous_version}"}', **{**VALUES, "previous_version": None}) == 'x{was=""}'


def test_fill_query_fills_once_a_value_that_looks_like_a_placeholder_stays_as_it_is() -> None:
    assert fill_query('"{service}" "{version}"', **{**VALUES, "service": "{version}"}) == '"{version}" "2.7.0"'


def test_fill_query_escapes_values_for_a_promql_double_quoted_string() -> None:
    filled = fill_query('x{service="{service}"}', **{**VALUES, "service": 'a"b\\c\nd'})
    assert filled == 'x{service="a\\"b\\\\c\\nd"}'
    # the label string still ends where the template ends it
    assert filled.endswith('"}') and filled.count('"') - filled.count('\\"') == 2


# -- judge -----------------------------------------------------------------------------

def test_judge_passes_under_both_ceilings() -> None:
    assert judge("error_rate", check(), 0.004, 0.003) == Measurement(
        "error_rate", 0.004, 0.003, "pass", "error_rate 0.004 (stable 0.003, ceiling 0.05 and 2× stable)")


def test_judge_fails_above_max() -> None:
    measured = judge("error_rate", check(), 0.06, 0.04)  # 1.5× stable: the ratio alone would pass
    assert (measured.verdict, measured.detail) == ("fail", "error_rate 0.06 > max 0.05")


def test_judge_fails_above_max_ratio_times_the_stable_baseline() -> None:
    measured = judge("error_rate", check(), 0.03, 0.01)  # under max 0.05
    assert (measured.verdict, measured.detail) == ("fail", "error_rate 0.03 > 2× stable 0.01")


def test_judge_names_both_ceilings_when_both_are_broken() -> None:
    measured = judge("error_rate", check(), 0.12, 0.01)
    assert (measured.verdict, measured.detail) == ("fail", "error_rate 0.12 > 2× stable 0.01 and > max 0.05")


def test_judge_the_ceilings_themselves_pass() -> None:
    assert judge("error_rate", check(), 0.05, 0.03).verdict == "pass"  # == max
    assert judge("error_rate", check(), 0.02, 0.01).verdict == "pass"  # == 2× stable
    assert judge("error_rate", check(), 0.0200001, 0.01).verdict == "fail"


def test_judge_min_baseline_keeps_twice_almost_nothing_quiet() -> None:
    # 15× a stable error rate of 0.0001, but under 2× the floor of 0.001
    quiet = judge("error_rate", check(), 0.0015, 0.0001)
    assert (quiet.verdict, quiet.detail) == (
        "pass", "error_rate 0.0015 (stable 0.0001, ceiling 0.05 and 2× floor 0.001)")
    assert quiet.baseline == 0.0001  # what was measured, not the floor
    loud = judge("error_rate", check(), 0.003, 0.0001)
    assert (loud.verdict, loud.detail) == ("fail", "error_rate 0.003 > 2× floor 0.001 (stable 0.0001)")
    # without a floor, anything above a stable 0 fails
    assert judge("error_rate", check(min_baseline=0), 0.0001, 0.0).verdict == "fail"
    assert judge("error_rate", check(min_baseline=0), 0.0, 0.0).verdict == "pass"


@pytest.mark.parametrize("value", [None, math.nan, math.inf, -math.inf])
def test_judge_without_a_number_is_inconclusive(value: float | None) -> None:
    measured = judge("error_rate", check(), value, 0.01)
    assert measured == Measurement("error_rate", None, 0.01, "inconclusive", "error_rate: no data")


@pytest.mark.parametrize("baseline", [None, math.nan])
def test_judge_a_ratio_without_a_baseline_is_inconclusive_unless_max_alone_fails(baseline: float | None) -> None:
    unsure = judge("error_rate", check(), 0.03, baseline)
    assert unsure == Measurement("error_rate", 0.03, None, "inconclusive",
                                 "error_rate 0.03: no baseline (stable: no data)")
    failed = judge("error_rate", check(), 0.2, baseline)
    assert (failed.verdict, failed.detail) == ("fail", "error_rate 0.2 > max 0.05 (stable: no data)")
    assert judge("error_rate", check(max=None), 0.2, baseline).verdict == "inconclusive"


def test_judge_with_max_alone_needs_no_baseline() -> None:
    only_max = check(baseline_query=None, max_ratio=None)
    assert judge("p99", only_max, 0.04, None) == Measurement("p99", 0.04, None, "pass", "p99 0.04 (ceiling 0.05)")
    assert judge("p99", only_max, 0.06, None).detail == "p99 0.06 > max 0.05"


def test_judge_with_a_ratio_alone() -> None:
    only_ratio = check(max=None, max_ratio=1.5)
    assert judge("error_rate", only_ratio, 0.2, 0.15).detail == "error_rate 0.2 (stable 0.15, ceiling 1.5× stable)"
    assert judge("error_rate", only_ratio, 0.3, 0.15).detail == "error_rate 0.3 > 1.5× stable 0.15"


def test_judge_reports_inconclusive_honestly_even_when_the_check_counts_it_as_failed() -> None:
    assert judge("error_rate", check(inconclusive="fail"), None, None).verdict == "inconclusive"


def test_a_measurement_is_a_json_record() -> None:
    record = judge("error_rate", check(), math.nan, math.inf).as_record()
    assert record == {"check": "error_rate", "value": None, "baseline": None, "verdict": "inconclusive",
                      "detail": "error_rate: no data"}
    assert json.loads(json.dumps(record, allow_nan=False)) == record


# -- sparkline and format_value ----------------------------------------------------------

def test_sparkline_scales_between_the_lowest_and_highest_known_value() -> None:
    assert sparkline([0, 1, 2, 3, 4, 5, 6, 7]) == "▁▂▃▄▅▆▇█"
    assert sparkline([0.01, None, 0.03, 0.02]) == "▁·█▅"
    assert sparkline([10, 1000]) == "▁█"


def test_sparkline_of_equal_unknown_and_no_values() -> None:
    assert sparkline([0.5, 0.5, 0.5]) == "▁▁▁"
    assert sparkline([None, math.nan, 2.0]) == "··▁"
    assert sparkline([None, None]) == "··"
    assert sparkline([]) == ""


def test_sparkline_shows_the_last_twenty_values() -> None:
    line = sparkline([100.0] * 5 + [float(n) for n in range(20)])
    assert len(line) == 20
    assert line[0] == "▁" and line[-1] == "█"  # the early 100s are gone: 19 is the top


@pytest.mark.parametrize(("value", "shown"), [
    (None, "—"), (0.0, "0"), (-0.0, "0"), (0.012, "0.012"), (0.004, "0.004"), (1.5, "1.5"), (2.0, "2"),
    (123.456, "123"), (999.4, "999"), (999.9, "1000"), (1200.0, "1200"), (1234567.0, "1.23M"),
    (999_999.7, "1M"), (2.5e9, "2.5G"), (0.00001234, "1.23e-05"), (-3.25, "-3.25"), (math.nan, "NaN"),
    (math.inf, "∞"),
])
def test_format_value_is_compact(value: float | None, shown: str) -> None:
    assert format_value(value) == shown


# -- against a real Prometheus -----------------------------------------------------------

BAD, GOOD, QUIET, IDLE, WEIRD = "bad", "good", "quiet", "idle", 'we"ird\\svc\nname'


@pytest.fixture(scope="module")
def traffic(metrics_app: MetricsApp, prometheus_server: RealPrometheus) -> dict[str, str]:  # noqa: F811
    """Services of this module, their traffic set once and scraped at least
    twice (what ``rate()`` needs) before the first test measures them."""
    names = {kind: unique_service(kind) for kind in (BAD, GOOD, QUIET, IDLE)} | {WEIRD: WEIRD}
    for track, rates in {"canary": {BAD: 0.2, GOOD: 0.004, QUIET: 0.0015, WEIRD: 0.5},
                         "stable": {BAD: 0.01, GOOD: 0.003, QUIET: 0.0001, WEIRD: 0.25}}.items():
        for kind, error_rate in rates.items():
            metrics_app.set(service=names[kind], track=track, rps=200, error_rate=error_rate)
    metrics_app.set(service=names[IDLE], track="canary", rps=0)  # 0 errors / 0 requests: NaN
    metrics_app.set(service=names[IDLE], track="stable", rps=100, error_rate=0.01)
    asyncio.run(prometheus_server.wait_scraped(times=2))
    fill = {**VALUES, "service": names[BAD]}
    asyncio.run(prometheus_server.wait_for(fill_query(ERROR_RATE, **fill)))
    return names


@pytest.fixture
async def client(real_prometheus: RealPrometheus) -> AsyncIterator[Prometheus]:  # noqa: F811
    prometheus = Prometheus(real_prometheus.url, timeout=5)
    yield prometheus
    await prometheus.close()


async def measured(client: Prometheus, service: str, the_check: AnalysisCheck | None = None,
                   **kwargs) -> Measurement:
    return await measure(client, "error_rate", the_check or check(), **{**VALUES, "service": service}, **kwargs)


async def test_a_canary_erring_far_more_than_stable_fails_with_its_evidence(
        traffic: dict[str, str], client: Prometheus) -> None:
    result = await measured(client, traffic[BAD])
    assert result.verdict == "fail"
    assert result.value == pytest.approx(0.2) and result.baseline == pytest.approx(0.01)
    assert result.detail == "error_rate 0.2 > 2× stable 0.01 and > max 0.05"


async def test_a_canary_erring_like_stable_passes(traffic: dict[str, str], client: Prometheus) -> None:
    result = await measured(client, traffic[GOOD])
    assert (result.verdict, result.detail) == ("pass", "error_rate 0.004 (stable 0.003, ceiling 0.05 and 2× stable)")


async def test_min_baseline_keeps_a_canary_at_fifteen_times_almost_nothing_quiet(
        traffic: dict[str, str], client: Prometheus) -> None:
    result = await measured(client, traffic[QUIET])
    assert result.verdict == "pass", result.detail
    assert "floor 0.001" in result.detail
    assert (await measured(client, traffic[QUIET], check(min_baseline=0))).verdict == "fail"


async def test_a_canary_serving_nothing_is_no_data(traffic: dict[str, str], client: Prometheus,
                                                   real_prometheus: RealPrometheus) -> None:  # noqa: F811
    query = fill_query(ERROR_RATE, **{**VALUES, "service": traffic[IDLE]})
    assert math.isnan(await real_prometheus.value(query))  # Prometheus' own answer: 0/0
    result = await measured(client, traffic[IDLE])
    assert result == Measurement("error_rate", None, pytest.approx(0.01), "inconclusive", "error_rate: no data")
    unknown = await measured(client, "no-such-service")
    assert (unknown.verdict, unknown.value, unknown.baseline) == ("inconclusive", None, None)


async def test_a_stable_version_without_data_leaves_the_ratio_without_a_baseline(
        traffic: dict[str, str], client: Prometheus) -> None:
    # the canary is the good one's; the baseline asks about a service with no data
    the_check = check(baseline_query=STABLE_ERROR_RATE.replace("{service}", "no-such-service"))
    result = await measured(client, traffic[GOOD], the_check)
    assert result == Measurement("error_rate", pytest.approx(0.004), None, "inconclusive",
                                 "error_rate 0.004: no baseline (stable: no data)")


async def test_odd_characters_in_a_value_match_exactly_and_cannot_break_out_of_the_label(
        traffic: dict[str, str], client: Prometheus, real_prometheus: RealPrometheus) -> None:  # noqa: F811
    # a service named with " \ and a newline is found by its exact name ...
    result = await measured(client, traffic[WEIRD], check(max=None, max_ratio=3))
    assert (result.value, result.baseline) == (pytest.approx(0.5), pytest.approx(0.25))
    # ... and a value written to end the label string and add its own
    # expression stays inside the string: no such service, no data
    template = 'sum(http_requests_total{service="{service}"})'
    sneaky = 'nope"}) or vector(42) or sum(up{job="app'
    assert await real_prometheus.value(template.replace("{service}", sneaky)) == 42  # what it would do unescaped
    assert await client.instant(fill_query(template, **{**VALUES, "service": sneaky})) is None
    trailing_backslash = 'nope\\'
    assert await client.instant(fill_query(template, **{**VALUES, "service": trailing_backslash})) is None


async def test_a_baseline_given_is_used_instead_of_asking(traffic: dict[str, str], client: Prometheus) -> None:
    # the bake: the stable version is gone; a baseline query that Prometheus
    # would refuse shows that it is not asked
    the_check = check(baseline_query="this is not promql(")
    asked = await measured(client, traffic[GOOD], the_check)
    assert asked.verdict == "inconclusive"
    assert asked.detail.startswith("error_rate 0.004: no baseline (stable: Prometheus query error (bad_data:")
    result = await measured(client, traffic[GOOD], the_check, baseline=0.0035)
    assert result == Measurement("error_rate", pytest.approx(0.004), 0.0035, "pass",
                                 "error_rate 0.004 (stable 0.0035, ceiling 0.05 and 2× stable)")
    failed = await measured(client, traffic[GOOD], the_check, baseline=0.0015)
    assert (failed.verdict, failed.detail) == ("fail", "error_rate 0.004 > 2× stable 0.0015")


async def test_a_query_prometheus_refuses_is_inconclusive_with_its_error(
        traffic: dict[str, str], client: Prometheus) -> None:
    result = await measured(client, traffic[BAD], check(query='sum(rate(http_requests_total{service="{service}"}'))
    assert (result.verdict, result.value, result.baseline) == ("inconclusive", None, pytest.approx(0.01))
    assert result.detail.startswith('error_rate: Prometheus query error (bad_data: invalid parameter "query": ')
    assert "parse error" in result.detail and "\n" not in result.detail


async def test_prometheus_stopped_is_inconclusive_and_back_it_measures_again(
        traffic: dict[str, str], client: Prometheus, real_prometheus: RealPrometheus) -> None:  # noqa: F811
    real_prometheus.stop()
    try:
        result = await measured(client, traffic[BAD], baseline=0.01)
        assert result == Measurement("error_rate", None, 0.01, "inconclusive",
                                     "error_rate: Prometheus unreachable (connection refused)")
        with pytest.raises(PrometheusUnavailable, match=r"^unreachable \(connection refused\)$"):
            await client.instant("vector(1)")
    finally:
        real_prometheus.start()  # same URL; the samples kept answer at once
    assert (await measured(client, traffic[BAD])).verdict == "fail"


async def test_instant_reads_vectors_and_scalars(traffic: dict[str, str], client: Prometheus) -> None:
    assert await client.instant("vector(3.5)") == 3.5
    assert await client.instant("1 + 1") == 2.0
    assert await client.instant('up{job="nothing"}') is None  # empty vector
    assert await client.instant("0 / 0") is None  # NaN
    assert await client.instant("vector(1) / 0") is None  # +Inf: nothing to judge either


@pytest.mark.parametrize(("query", "reason"), [
    ("sum(", r"^query error \(bad_data: invalid parameter \"query\": .*parse error"),
    ("up[1m]", r"^answered a matrix, not one number"),
    ('"text"', r"^answered a string, not one number"),
])
async def test_instant_says_why_a_query_gives_no_number(client: Prometheus, query: str, reason: str) -> None:
    with pytest.raises(PrometheusUnavailable, match=reason):
        await client.instant(query)


async def test_instant_says_when_something_else_answers(metrics_app: MetricsApp) -> None:  # noqa: F811
    # the metrics app is an HTTP server, but not Prometheus
    prometheus = Prometheus(metrics_app.url + "/", timeout=5)
    try:
        with pytest.raises(PrometheusUnavailable, match=r"^answered HTTP 404 without its API's JSON: 404 page"):
            await prometheus.instant("vector(1)")
    finally:
        await prometheus.close()


async def test_instant_says_when_a_page_answers_instead_of_the_api() -> None:
    async def login_page(request: web.Request) -> web.Response:
        return web.Response(text="<html><body>Sign in</body></html>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/api/v1/query", login_page)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    prometheus = Prometheus(f"http://127.0.0.1:{port}", timeout=5)
    try:
        with pytest.raises(PrometheusUnavailable,
                           match=r"^answered HTTP 200 without its API's JSON: <html><body>Sign in"):
            await prometheus.instant("vector(1)")
    finally:
        await prometheus.close()
        await runner.cleanup()


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A server that takes connections (the kernel's backlog) and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


async def test_a_silent_prometheus_times_out_and_both_queries_wait_together(silent_server: str) -> None:
    prometheus = Prometheus(silent_server, timeout=1.0)
    try:
        with pytest.raises(PrometheusUnavailable, match=r"^timed out after 1 s$"):
            await prometheus.instant("vector(1)")
        started = time.monotonic()
        result = await measure(prometheus, "error_rate", check(), **VALUES)
        elapsed = time.monotonic() - started
    finally:
        await prometheus.close()
    assert result == Measurement("error_rate", None, None, "inconclusive",
                                 "error_rate: Prometheus timed out after 1 s")
    assert 0.9 < elapsed < 1.8  # the query and its baseline query at once, not one after the other


async def test_a_session_given_is_used_and_left_open(real_prometheus: RealPrometheus) -> None:  # noqa: F811
    async with aiohttp.ClientSession() as session:
        # a fraction of a second is a timeout Prometheus takes too
        prometheus = Prometheus(real_prometheus.url + "/", timeout=0.75, session=session)
        assert await prometheus.instant("vector(7)") == 7.0
        await prometheus.close()
        assert not session.closed
