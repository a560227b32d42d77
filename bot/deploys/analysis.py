"""The metric gates of progressive rollouts: one check measured once.

A check (``analysis.checks.<name>`` in the config) is a PromQL instant query
on the new version, optionally with a ``baseline_query``: the same measure
on the stable version. :func:`measure` fills ``{service}``, ``{environment}``,
``{version}`` and ``{previous_version}`` into both (:func:`fill_query`),
asks Prometheus for both at once, and :func:`judge` decides:

* **fail** when the value exceeds ``max``, or ``max_ratio`` × the baseline,
  the baseline floored at ``min_baseline`` (so that 2× of almost no errors
  stays quiet);
* **inconclusive** when there is nothing honest to compare: no data (an empty
  result, NaN from 0/0 when nothing is served, ±Inf), a ratio check whose
  baseline has no data (unless ``max`` alone already fails it), or
  Prometheus unreachable, refusing the query or answering nonsense;
* **pass** otherwise.

Every :class:`Measurement` carries one plain-text line for people, e.g.
``error_rate 0.12 > 2× stable 0.01`` or ``error_rate: no data``. Judging is
honest and local: what an inconclusive measurement means for the rollout
(``inconclusive: pause`` or ``fail``, ``failure_limit``) is the runner's
business (:mod:`bot.deploys.progressive`). Trouble with Prometheus never
raises out of :func:`measure`: it is an inconclusive measurement.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import aiohttp

from bot.config import AnalysisCheck

PASS, FAIL, INCONCLUSIVE = "pass", "fail", "inconclusive"
PLACEHOLDER = re.compile(r"\{(service|environment|version|previous_version)\}")
SPARKS = "▁▂▃▄▅▆▇█"
SPARK_UNKNOWN = "·"
SPARK_WIDTH = 20
MAX_REASON = 200  # characters of Prometheus' own error text kept in a detail


@dataclass(frozen=True)
class Measurement:
    """One check measured once. ``value`` and ``baseline`` are finite
    numbers or None (no data); ``detail`` is one line a person reads."""

    check: str
    value: float | None
    baseline: float | None
    verdict: str  # "pass" | "fail" | "inconclusive"
    detail: str

    def as_record(self) -> dict[str, Any]:
        """The measurement as JSON-ready data."""
        return asdict(self)


# -- queries -----------------------------------------------------------------------------

def fill_query(template: str, *, service: str, environment: str, version: str,
               previous_version: str | None) -> str:
    """``template`` with ``{service}``, ``{environment}``, ``{version}`` and
    ``{previous_version}`` replaced, in one pass (a value that contains a
    placeholder is not filled again), and nothing else touched: PromQL's own
    braces stay. Values are escaped for a PromQL double-quoted string, where
    placeholders belong (``service="{service}"``); use them with ``=``, not
    ``=~``, as a version's ``.`` or ``+`` means something in a regex.
    ``previous_version`` None (a first deploy) is the empty string."""
    values = {"service": service, "environment": environment, "version": version,
              "previous_version": previous_version or ""}
    return PLACEHOLDER.sub(lambda match: _promql_string(values[match.group(1)]), template)


def _promql_string(value: str) -> str:
    """``value`` escaped to sit between double quotes in PromQL (Go's rules)."""
    return (value.replace("\\", "\\\\").replace('"', '\\"')
            .replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t"))


# -- judging -----------------------------------------------------------------------------

def judge(name: str, check: AnalysisCheck, value: float | None, baseline: float | None) -> Measurement:
    """The verdict on one measured ``value`` of ``check``, against its
    ``max`` and (with ``max_ratio``) the stable ``baseline``. See the module
    docstring for the rules; ``check.inconclusive`` is not applied here."""
    return _judge(name, check, value, baseline, baseline_missing="no data")


def _judge(name: str, check: AnalysisCheck, value: float | None, baseline: float | None,
           *, baseline_missing: str) -> Measurement:
    value, baseline = _finite(value), _finite(baseline)
    if value is None:
        return Measurement(name, None, baseline, INCONCLUSIVE, f"{name}: no data")
    shown = f"{name} {format_value(value)}"
    over_max = check.max is not None and value > check.max
    max_text = f"max {format_value(check.max)}"
    if check.max_ratio is None:
        if over_max:
            return Measurement(name, value, baseline, FAIL, f"{shown} > {max_text}")
        return Measurement(name, value, baseline, PASS, f"{shown} (ceiling {format_value(check.max)})")
    ratio = f"{format_value(check.max_ratio)}×"
    if baseline is None:
        if over_max:
            return Measurement(name, value, None, FAIL, f"{shown} > {max_text} (stable: {baseline_missing})")
        return Measurement(name, value, None, INCONCLUSIVE, f"{shown}: no baseline (stable: {baseline_missing})")
    floored = baseline < check.min_baseline
    reference = max(baseline, check.min_baseline)
    compared = (f"{ratio} floor {format_value(check.min_baseline)} (stable {format_value(baseline)})"
                if floored else f"{ratio} stable {format_value(baseline)}")
    over_ratio = value > check.max_ratio * reference
    if over_ratio or over_max:
        broken = ([f"> {compared}"] if over_ratio else []) + ([f"> {max_text}"] if over_max else [])
        return Measurement(name, value, baseline, FAIL, f"{shown} {' and '.join(broken)}")
    ceilings = [format_value(check.max)] if check.max is not None else []
    ceilings.append(f"{ratio} floor {format_value(check.min_baseline)}" if floored else f"{ratio} stable")
    return Measurement(name, value, baseline, PASS,
                       f"{shown} (stable {format_value(baseline)}, ceiling {' and '.join(ceilings)})")


def _finite(number: float | None) -> float | None:
    return number if number is not None and math.isfinite(number) else None


# -- Prometheus --------------------------------------------------------------------------

class PrometheusUnavailable(Exception):
    """Prometheus gave no number: unreachable, too slow, an HTTP error, an
    answer that is not its API's JSON, or it refused the query. ``str()`` is
    a short reason that reads after "Prometheus", e.g. "unreachable
    (connection refused)" or "query error (bad_data: ... parse error ...)"."""


class Prometheus:
    """An instant-query client of Prometheus' HTTP API (``GET
    {url}/api/v1/query``), each query bounded by ``timeout`` seconds (also
    sent to Prometheus, which then gives up evaluating it too).

    The session is opened at the first query unless one is given; a given
    session is the caller's to close. Proxies in the environment are not
    used (aiohttp's default)."""

    def __init__(self, url: str, timeout: float, session: aiohttp.ClientSession | None = None) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._session = session
        self._own_session = session is None

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def instant(self, query: str) -> float | None:
        """The query's value now: the first sample of a vector, or a scalar.
        None for an empty vector, and for NaN or ±Inf (no number to judge:
        NaN is what 0/0 gives when nothing is served). Raises
        :class:`PrometheusUnavailable` for anything that is not an answer."""
        if self._session is None:
            self._session = aiohttp.ClientSession()
        params = {"query": query, "timeout": f"{self.timeout:g}"}  # seconds: "0.5s" is not a Go duration
        try:
            async with self._session.get(f"{self.url}/api/v1/query", params=params,
                                         timeout=aiohttp.ClientTimeout(total=self.timeout)) as response:
                status = response.status
                text = await response.text(errors="replace")
        except TimeoutError:  # also aiohttp's ServerTimeoutError
            raise PrometheusUnavailable(f"timed out after {format_value(self.timeout)} s") from None
        except aiohttp.ClientConnectorError as exc:
            raise PrometheusUnavailable(f"unreachable ({_connect_reason(exc)})") from None
        except aiohttp.ClientError as exc:
            raise PrometheusUnavailable(f"unreachable ({_one_line(str(exc) or type(exc).__name__)})") from None
        try:
            body = json.loads(text)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise PrometheusUnavailable(f"answered HTTP {status} without its API's JSON"
                                        f"{': ' + _one_line(text) if text.strip() else ''}")
        if body.get("status") != "success":
            # Prometheus answers 400/422/503 with {"status": "error", "errorType", "error"}
            raise PrometheusUnavailable(f"query error ({_one_line(str(body.get('errorType', status)))}: "
                                        f"{_one_line(str(body.get('error', 'no error text')))})")
        if not 200 <= status < 300:
            raise PrometheusUnavailable(f"answered HTTP {status}")
        return _value_of(body.get("data"))


def _value_of(data: Any) -> float | None:
    try:
        kind, result = data["resultType"], data["result"]
        if kind == "vector":
            if not result:
                return None
            number = float(result[0]["value"][1])
        elif kind == "scalar":
            number = float(result[1])
        else:
            raise PrometheusUnavailable(f"answered a {kind}, not one number: the query must give an "
                                        "instant vector or a scalar (no [range] at its end)")
    except (KeyError, IndexError, TypeError, ValueError):
        raise PrometheusUnavailable(f"answered something unexpected: {_one_line(json.dumps(data))}") from None
    return number if math.isfinite(number) else None


def _connect_reason(exc: aiohttp.ClientConnectorError) -> str:
    """"connection refused", "name or service not known", ... for a failed connect."""
    error = getattr(exc, "os_error", None)
    if not isinstance(error, OSError):  # e.g. a certificate error
        return _one_line(str(exc) or type(exc).__name__)
    if error.errno is not None and error.errno > 0:
        reason = os.strerror(error.errno)
    else:
        reason = error.strerror or str(error) or type(error).__name__
    return _one_line(reason[:1].lower() + reason[1:])


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_REASON else text[:MAX_REASON - 1] + "…"


async def measure(prometheus: Prometheus, name: str, check: AnalysisCheck, *, service: str,
                  environment: str, version: str, previous_version: str | None,
                  baseline: float | None = None) -> Measurement:
    """Measure ``check`` once and judge it. The check's query and (when it
    has a ``baseline_query`` and no ``baseline`` is given) its baseline
    query run at once. A given ``baseline`` is used instead of asking: in the
    bake the stable version is gone, so the runner passes the last baseline
    measured before full traffic. Never raises for Prometheus trouble: that
    is an inconclusive measurement saying why."""
    values = {"service": service, "environment": environment, "version": version,
              "previous_version": previous_version}
    asks = [_ask(prometheus, fill_query(check.query, **values))]
    if baseline is None and check.baseline_query is not None:
        asks.append(_ask(prometheus, fill_query(check.baseline_query, **values)))
    answers = await asyncio.gather(*asks)
    baseline_missing = "no data"
    if len(answers) > 1:
        baseline, baseline_trouble = answers[1]
        if baseline_trouble is not None:
            baseline_missing = f"Prometheus {baseline_trouble}"
    value, trouble = answers[0]
    if trouble is not None:
        return Measurement(name, None, _finite(baseline), INCONCLUSIVE, f"{name}: Prometheus {trouble}")
    return _judge(name, check, value, baseline, baseline_missing=baseline_missing)


async def _ask(prometheus: Prometheus, query: str) -> tuple[float | None, str | None]:
    """(value, None), or (None, why Prometheus gave none)."""
    try:
        return await prometheus.instant(query), None
    except PrometheusUnavailable as trouble:
        return None, str(trouble)


# -- showing numbers ---------------------------------------------------------------------

def format_value(value: float | None) -> str:
    """A compact number for people: 0.012, 1.5, 1200, 2.5M, 3e-05; "—" for
    None (no data). Three significant digits below 1000, whole numbers up to
    a million."""
    if value is None:
        return "—"
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "∞" if value > 0 else "-∞"
    size = abs(value)
    for limit, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M")):
        if limit * 0.9995 <= size < limit * 999.5:  # what rounds to 1M stays 1M, not 1000000
            return f"{value / limit:.3g}{suffix}"
    if 999.5 <= size < 1e6:
        return str(round(value))
    text = f"{value:.3g}"
    return "0" if text == "-0" else text


def sparkline(values: Sequence[float | None]) -> str:
    """The last 20 ``values`` as ``▁▂▃▄▅▆▇█``, scaled between the lowest and
    highest known one (all equal: all ``▁``); ``·`` where there was no data."""
    shown = list(values)[-SPARK_WIDTH:]
    known = [v for v in shown if v is not None and math.isfinite(v)]
    if not known:
        return SPARK_UNKNOWN * len(shown)
    low, high = min(known), max(known)
    span = high - low
    marks = []
    for v in shown:
        if v is None or not math.isfinite(v):
            marks.append(SPARK_UNKNOWN)
        elif span == 0:
            marks.append(SPARKS[0])
        else:
            marks.append(SPARKS[round((v - low) / span * (len(SPARKS) - 1))])
    return "".join(marks)
