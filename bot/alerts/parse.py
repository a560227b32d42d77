"""Webhook bodies from monitors, turned into :class:`~bot.alerts.model.Alert`\\ s.

Three shapes are understood, each checked against its documentation; anything
else raises :class:`~bot.alerts.model.MalformedPayload` whose message names
the offending field (``alerts[2].labels must be an object``) and goes back to
the monitor in a 400.

* **Prometheus Alertmanager** (``webhook_config``, payload ``version: "4"``),
  as documented at https://prometheus.io/docs/alerting/latest/configuration/#webhook_config
  (prometheus/alertmanager ``docs/configuration.md``). Any other version is
  refused: a new version is a new contract, and guessing would be worse.
* **Grafana Alerting** webhook contact point (``version: "1"``, or no version),
  as documented at https://grafana.com/docs/grafana/latest/alerting/configure-notifications/manage-contact-points/integrations/webhook-notifier/
  (grafana/grafana ``docs/sources/alerting/configure-notifications/manage-contact-points/integrations/webhook-notifier.md``).
* **Slipway's generic format**, below, for anything else that can POST JSON.

How a monitor's alert becomes an Alert
--------------------------------------

``service``, ``environment``, ``metric``, ``severity``, ``value``,
``baseline`` and ``traffic`` are looked up by the names configured in
``alerts.labels`` (:class:`bot.config.AlertLabels`): first in the alert's
labels, name by name, then in its annotations; the first non-blank one wins.
Numbers are parsed from that text; text that is not a finite number gives
``None`` (the alert is still taken — the rules then judge it on severity).

For Grafana, when no label or annotation yields a number for ``value``, it is
taken from the alert's ``values`` (the results of the rule's expressions,
e.g. ``{"B": 0.052, "C": 1}``): ``values[X]`` where ``X`` is the label or
annotation ``value_ref`` (say ``value_ref: B``) if the rule sets one — and
``None`` when ``values`` has no ``X`` — otherwise the only value when there is
exactly one, otherwise ``None`` (a threshold expression ``C`` is 0/1 and is
not the measured value, so with two or more we do not guess).

``fingerprint`` is the monitor's own; when it is missing (older Alertmanagers
sent none) it is the SHA-256 of the sorted label set, so the same label
set always gets the same fingerprint. ``name`` is the ``alertname`` label
(for Grafana, failing that, the payload's ``title``). ``summary`` is the
``summary`` annotation, else ``description``, else the name. ``url`` is
``generatorURL``; for Grafana the first non-empty of ``panelURL``,
``dashboardURL``, ``generatorURL``. Times are RFC 3339 (fractional seconds up
to nanoseconds, ``Z`` or an offset) and come back timezone-aware in UTC; the
Go "zero" time ``0001-01-01T00:00:00Z`` that both monitors send as the
``endsAt`` of a firing alert becomes ``None``.

Limits
------

At most 1000 alerts per body. A string over 10,000 characters is refused when
it identifies or locates something (label values, names, ids, URLs, times,
group keys), because truncating an identifier would silently merge alerts;
free text (annotation values, Grafana's ``title``, the generic ``summary``) is
cut to 10,000 characters ending in "…" instead, so that a verbose description
template never costs the alert itself. Fields Slipway does not read
(``receiver``, ``groupLabels``, Grafana's ``message``…) are not checked.

Generic format
--------------

``POST /webhooks/generic`` with ``Authorization: Bearer <token>`` and a JSON
body that is either one alert object or ``{"alerts": [<alert>, ...]}``
(at most 1000). Each alert object has these keys, and no others::

    {
      "id": "checkout-errors",        # required string: the alert's stable identity (its fingerprint)
      "service": "api",               # required string
      "environment": "production",    # required string
      "metric": "error_rate",         # required string: matched against alerts.rules[].metric
      "value": 0.031,                 # number, required unless status is "resolved"
      "baseline": 0.004,              # optional number: the normal level, for the ratio rules
      "traffic": 1250,                # optional number: compared with a rule's min_traffic
      "status": "firing",             # optional: "firing" (default) or "resolved"
      "severity": "critical",         # optional string, as your monitor says it
      "name": "CheckoutErrors",       # optional string, default: the metric
      "summary": "5xx on /checkout",  # optional string, default: the name
      "url": "https://grafana.example/d/abc",  # optional string: where to look
      "started_at": "2026-05-04T10:15:00Z"     # optional RFC 3339 time, default: now (UTC)
    }

Optional keys may also be ``null``. Send the same ``id`` (and ``started_at``,
if you sent one) when the alert resolves; without ``started_at``, a repeat or
a resolve of an ``id`` still firing is taken as that same alert.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from datetime import datetime, timedelta, timezone
from typing import Any

from bot.alerts.model import Alert, MalformedPayload
from bot.config import AlertLabels

MAX_ALERTS = 1000
MAX_STRING = 10_000
STATUSES = ("firing", "resolved")
UNNAMED = "unnamed alert"
ZERO_TIME = datetime(1, 1, 1, tzinfo=timezone.utc)  # Go's time.Time{}, sent as 0001-01-01T00:00:00Z
VALUE_REF = "value_ref"
GRAFANA_URL_KEYS = ("panelURL", "dashboardURL", "generatorURL")  # most specific first

_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:([Zz])|([+-])(\d{2}):(\d{2}))\Z")
_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_GENERIC_KEYS = frozenset({"id", "service", "environment", "metric", "value", "baseline", "traffic", "status",
                           "severity", "name", "summary", "url", "started_at"})


# -- the three entry points ---------------------------------------------------------


def parse_alertmanager(body: bytes, labels: AlertLabels) -> tuple[str | None, list[Alert]]:
    """``(groupKey, alerts)`` from an Alertmanager webhook body (version "4").

    Raises:
        MalformedPayload: the body is not that documented shape; the message says where.
    """
    root = _root_object(body)
    version = root.get("version")
    if version != "4":
        raise MalformedPayload(f'version must be "4" (Alertmanager webhook payload), got {_show(version)}')
    group_key = _optional_string(root, "groupKey", "") or None
    alerts = []
    for index, raw in enumerate(_alert_list(root)):
        path = f"alerts[{index}]"
        common = _monitor_fields(raw, path, labels)
        name = common.pop("alertname") or UNNAMED
        alerts.append(Alert(source="alertmanager", group_key=group_key, name=name,
                            summary=common.pop("summary") or name,
                            url=_optional_string(raw, "generatorURL", path) or None, **common))
    return group_key, alerts


def parse_grafana(body: bytes, labels: AlertLabels) -> tuple[str | None, list[Alert]]:
    """``(groupKey, alerts)`` from a Grafana Alerting webhook contact point body
    (version "1" or none).

    Raises:
        MalformedPayload: the body is not that documented shape; the message says where.
    """
    root = _root_object(body)
    version = root.get("version")
    if version not in (None, "1"):
        raise MalformedPayload(f'version must be "1" (Grafana webhook payload), got {_show(version)}')
    group_key = _optional_string(root, "groupKey", "") or None
    title = _optional_string(root, "title", "", free_text=True)
    alerts = []
    for index, raw in enumerate(_alert_list(root)):
        path = f"alerts[{index}]"
        common = _monitor_fields(raw, path, labels)
        values = _values(raw, path)
        if common["value"] is None:
            common["value"] = _value_from_values(values, common["labels"], common["annotations"])
        url = next(filter(None, (_optional_string(raw, key, path) for key in GRAFANA_URL_KEYS)), None)
        name = common.pop("alertname") or title or UNNAMED
        alerts.append(Alert(source="grafana", group_key=group_key, name=name,
                            summary=common.pop("summary") or name, url=url, **common))
    return group_key, alerts


def parse_generic(body: bytes, labels: AlertLabels, *, now: datetime | None = None) -> tuple[str | None, list[Alert]]:
    """``(None, alerts)`` from a body in Slipway's generic format (see the
    module docstring). ``labels`` is unused — the format names its fields —
    and taken so that the three parsers are interchangeable. ``now`` is the
    default ``started_at`` (default: the current time).

    Raises:
        MalformedPayload: the body is not that documented shape; the message says where.
    """
    root = _root_object(body)
    if "alerts" in root:
        extra = sorted(set(root) - {"alerts"})
        if extra:
            raise MalformedPayload(f"a batch has only the key alerts; unknown key {_show(extra[0])}")
        raws, prefix = _alert_list(root), "alerts"
    else:
        raws, prefix = [root], ""
    moment = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    return None, [_generic_alert(raw, f"{prefix}[{index}]" if prefix else "", moment)
                  for index, raw in enumerate(raws)]


# -- shared by Alertmanager and Grafana ---------------------------------------------


def _monitor_fields(raw: Any, path: str, names: AlertLabels) -> dict[str, Any]:
    """The Alert fields both monitors' alert objects give the same way; the
    caller settles ``alertname`` and ``summary``, whose fallbacks differ."""
    alert = _object(raw, path)
    labels = _string_map(alert, "labels", path, free_text=False, required=True)
    annotations = _string_map(alert, "annotations", path, free_text=True, required=False)
    fingerprint = _optional_string(alert, "fingerprint", path) or _label_fingerprint(labels)
    return {
        "fingerprint": fingerprint,
        "status": _status(alert, path, default=None),
        "alertname": labels.get("alertname", "").strip(),
        "service": _first(names.service, labels, annotations),
        "environment": _first(names.environment, labels, annotations),
        "metric": _first(names.metric, labels, annotations),
        "severity": _first(names.severity, labels, annotations),
        "value": _number_text(_first(names.value, labels, annotations)),
        "baseline": _number_text(_first(names.baseline, labels, annotations)),
        "traffic": _number_text(_first(names.traffic, labels, annotations)),
        "starts_at": _moment(_required_string(alert, "startsAt", path), _at(path, "startsAt")),
        "ends_at": _optional_moment(alert, "endsAt", path),
        "summary": annotations.get("summary", "").strip() or annotations.get("description", "").strip(),
        "labels": labels,
        "annotations": annotations,
    }


def _first(names: list[str], labels: dict[str, str], annotations: dict[str, str]) -> str | None:
    """The first of ``names`` with a non-blank value: all labels first, then annotations."""
    for source in (labels, annotations):
        for name in names:
            value = source.get(name, "").strip()
            if value:
                return value
    return None


def _number_text(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _values(alert: dict[str, Any], path: str) -> dict[str, float]:
    raw = alert.get("values")
    if raw is None:
        return {}
    values = _object(raw, _at(path, "values"))
    return {key: _finite(number, _at(_at(path, "values"), key)) for key, number in values.items()}


def _value_from_values(values: dict[str, float], labels: dict[str, str], annotations: dict[str, str]) -> float | None:
    ref = _first([VALUE_REF], labels, annotations)
    if ref is not None:
        return values.get(ref)
    if len(values) == 1:
        return next(iter(values.values()))
    return None


def _label_fingerprint(labels: dict[str, str]) -> str:
    canonical = json.dumps(sorted(labels.items()), ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


# -- the generic format -------------------------------------------------------------


def _generic_alert(raw: Any, path: str, now: datetime) -> Alert:
    alert = _object(raw, path or "the body")
    unknown = sorted(set(alert) - _GENERIC_KEYS)
    if unknown:
        raise MalformedPayload(f"{path + ': ' if path else ''}unknown key {_show(unknown[0])} "
                               f"(known: {', '.join(sorted(_GENERIC_KEYS))})")
    fingerprint = _required_string(alert, "id", path)
    service = _required_string(alert, "service", path)
    environment = _required_string(alert, "environment", path)
    metric = _required_string(alert, "metric", path)
    status = _status(alert, path, default="firing")
    value = _optional_number(alert, "value", path)
    if value is None and status != "resolved":
        raise MalformedPayload(f'{_at(path, "value")} is required (a number) unless status is "resolved"')
    name = _optional_string(alert, "name", path) or metric
    started = _optional_string(alert, "started_at", path)
    return Alert(
        source="generic",
        fingerprint=fingerprint,
        status=status,
        name=name,
        service=service,
        environment=environment,
        metric=metric,
        value=value,
        baseline=_optional_number(alert, "baseline", path),
        traffic=_optional_number(alert, "traffic", path),
        severity=_optional_string(alert, "severity", path) or None,
        starts_at=_moment(started, _at(path, "started_at")) if started else now,
        summary=_optional_string(alert, "summary", path, free_text=True) or name,
        url=_optional_string(alert, "url", path) or None,
    )


# -- reading JSON carefully ---------------------------------------------------------


def _root_object(body: bytes) -> dict[str, Any]:
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise MalformedPayload(f"not JSON: not UTF-8 text (byte {error.start})") from None
    try:
        root = json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as error:
        raise MalformedPayload(f"not JSON: {error.msg} (line {error.lineno} column {error.colno})") from None
    except ValueError as error:  # from _refuse_constant
        raise MalformedPayload(f"not JSON: {error}") from None
    except RecursionError:
        raise MalformedPayload("not JSON: nested too deeply") from None
    if not isinstance(root, dict):
        raise MalformedPayload(f"the body must be a JSON object, got {_kind(root)}")
    return root


def _refuse_constant(name: str) -> None:
    # Python's json accepts NaN and Infinity; JSON does not, and neither do we.
    raise ValueError(f"{name} is not a JSON number")


def _alert_list(root: dict[str, Any]) -> list[Any]:
    if "alerts" not in root:
        raise MalformedPayload("alerts is missing")
    alerts = root["alerts"]
    if not isinstance(alerts, list):
        raise MalformedPayload(f"alerts must be a list, got {_kind(alerts)}")
    if len(alerts) > MAX_ALERTS:
        raise MalformedPayload(f"too many alerts: {len(alerts)} (at most {MAX_ALERTS} per request)")
    return alerts


def _object(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise MalformedPayload(f"{path} must be an object, got {_kind(value)}")
    return value


def _string_map(parent: dict[str, Any], key: str, path: str, *, free_text: bool, required: bool) -> dict[str, str]:
    where = _at(path, key)
    if key not in parent:
        if required:
            raise MalformedPayload(f"{where} is missing")
        return {}
    raw = parent[key]
    if raw is None and not required:  # Go sends a nil map as null
        return {}
    mapping = _object(raw, where)
    result = {}
    for name, value in mapping.items():
        # where a value sits is spelled out only for the error message (an alert
        # storm's bodies carry tens of thousands of labels)
        if len(name) > MAX_STRING:
            _check_length(name, f"a key of {where}", free_text=False)
        if not isinstance(value, str):
            raise MalformedPayload(f"{_at(where, name)} must be a string, got {_kind(value)}")
        result[name] = value if len(value) <= MAX_STRING else _check_length(value, _at(where, name),
                                                                             free_text=free_text)
    return result


def _required_string(parent: dict[str, Any], key: str, path: str) -> str:
    if parent.get(key) is None:
        raise MalformedPayload(f"{_at(path, key)} is missing")
    value = _optional_string(parent, key, path)
    if not value.strip():
        raise MalformedPayload(f"{_at(path, key)} must not be empty")
    return value


def _optional_string(parent: dict[str, Any], key: str, path: str, *, free_text: bool = False) -> str:
    """The string at ``key``, or "" when it is missing or null."""
    value = parent.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise MalformedPayload(f"{_at(path, key)} must be a string, got {_kind(value)}")
    return _check_length(value, _at(path, key), free_text=free_text)


def _check_length(value: str, where: str, *, free_text: bool) -> str:
    if len(value) <= MAX_STRING:
        return value
    if free_text:
        return value[:MAX_STRING - 1] + "…"
    raise MalformedPayload(f"{where} is longer than {MAX_STRING} characters ({len(value)})")


def _status(alert: dict[str, Any], path: str, *, default: str | None) -> str:
    value = alert.get("status")
    if value is None and default is not None:
        return default
    if value not in STATUSES:
        raise MalformedPayload(f'{_at(path, "status")} must be "firing" or "resolved", got {_show(value)}')
    return value


def _optional_number(alert: dict[str, Any], key: str, path: str) -> float | None:
    value = alert.get(key)
    return None if value is None else _finite(value, _at(path, key))


def _finite(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MalformedPayload(f"{where} must be a number, got {_kind(value)}")
    number = float(value)
    if not math.isfinite(number):  # 1e999 parses as inf
        raise MalformedPayload(f"{where} must be a finite number")
    return number


def _optional_moment(alert: dict[str, Any], key: str, path: str) -> datetime | None:
    text = _optional_string(alert, key, path)
    return _moment(text, _at(path, key)) if text else None


def _moment(text: str, where: str) -> datetime | None:
    """An RFC 3339 time as an aware datetime in UTC; None for Go's zero time.

    Stricter than ``datetime.fromisoformat``, which also takes dates without
    a time, times without an offset (naive), and week dates."""
    match = _RFC3339.match(text)
    if match is None:
        raise MalformedPayload(f"{where} must be an RFC 3339 time such as 2026-05-04T10:15:00Z, got {_show(text)}")
    year, month, day, hour, minute, second, fraction, zulu, sign, offset_h, offset_m = match.groups()
    try:
        offset = timedelta(0) if zulu else (1 if sign == "+" else -1) * timedelta(hours=int(offset_h),
                                                                                 minutes=int(offset_m))
        moment = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second),
                          int((fraction or "0")[:6].ljust(6, "0")), tzinfo=timezone(offset))
        moment = moment.astimezone(timezone.utc)
    except (ValueError, OverflowError):
        raise MalformedPayload(f"{where} is not a valid time: {_show(text)}") from None
    return None if moment == ZERO_TIME else moment


# -- messages -----------------------------------------------------------------------


def _at(path: str, key: str) -> str:
    shown = key if _PLAIN_KEY.match(key) else json.dumps(key[:60])
    if not path:
        return shown
    return f"{path}.{shown}" if _PLAIN_KEY.match(key) else f"{path}[{shown}]"


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list",
            dict: "an object"}.get(type(value), type(value).__name__)


def _show(value: Any) -> str:
    """A value for an error message, short: it goes back to the sender and into the log."""
    if value is None:
        return "nothing"
    text = json.dumps(value, ensure_ascii=False) if isinstance(value, (str, int, float, bool)) else _kind(value)
    return text if len(text) <= 60 else text[:57] + "…"
