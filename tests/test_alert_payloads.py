"""Monitors' webhook bodies become Alerts exactly as documented in
bot/alerts/parse.py, anything else is refused with a reason that names the
field, and only senders holding the token or the Grafana secret get in.

The fixtures in tests/payloads/ follow the example payloads of the official
docs: Alertmanager's webhook_config (prometheus.io/docs/alerting/latest/
configuration/#webhook_config) and Grafana's webhook contact point
(grafana.com/docs/grafana/latest/alerting/configure-notifications/
manage-contact-points/integrations/webhook-notifier/).
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from bot.alerts.auth import bearer_ok, grafana_signature_problem
from bot.alerts.model import Alert, MalformedPayload
from bot.alerts.parse import (
    MAX_ALERTS,
    MAX_STRING,
    parse_alertmanager,
    parse_generic,
    parse_grafana,
)
from bot.config import AlertLabels

PAYLOADS = Path(__file__).parent / "payloads"
DEFAULT = AlertLabels()
UTC = timezone.utc
NOW = datetime(2026, 5, 4, 11, 0, tzinfo=UTC)


def fixture(name: str) -> dict[str, Any]:
    return json.loads((PAYLOADS / name).read_text())


def encode(payload: Any) -> bytes:
    return json.dumps(payload).encode()


def am_alert(**changes: Any) -> dict[str, Any]:
    alert = {"status": "firing", "labels": {"alertname": "HighErrorRate", "service": "api", "env": "production"},
             "annotations": {"summary": "api errors"}, "startsAt": "2026-05-04T10:15:00Z",
             "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "http://prometheus.example.org/graph",
             "fingerprint": "1a30ba71cca2921f"}
    alert.update(changes)
    return {key: value for key, value in alert.items() if value is not DROP}


def am_body(*alerts: dict[str, Any], **changes: Any) -> dict[str, Any]:
    payload = {"version": "4", "groupKey": "{}:{alertname=\"HighErrorRate\"}", "truncatedAlerts": 0,
               "status": "firing", "receiver": "slipway", "groupLabels": {}, "commonLabels": {},
               "commonAnnotations": {}, "externalURL": "http://alertmanager.example.org",
               "alerts": list(alerts) or [am_alert()]}
    payload.update(changes)
    return {key: value for key, value in payload.items() if value is not DROP}


def grafana_body(*alerts: dict[str, Any], **changes: Any) -> dict[str, Any]:
    payload = {"receiver": "slipway", "status": "firing", "orgId": 1, "groupLabels": {}, "commonLabels": {},
               "commonAnnotations": {}, "externalURL": "https://grafana.example.org/", "version": "1",
               "groupKey": "{}:{}", "truncatedAlerts": 0, "title": "[FIRING:1] payments", "state": "alerting",
               "message": "", "alerts": list(alerts) or [am_alert(values={"B": 0.5})]}
    payload.update(changes)
    return {key: value for key, value in payload.items() if value is not DROP}


def generic(**changes: Any) -> dict[str, Any]:
    alert = {"id": "checkout-errors", "service": "api", "environment": "production", "metric": "error_rate",
             "value": 0.031}
    alert.update(changes)
    return {key: value for key, value in alert.items() if value is not DROP}


class _Drop:
    def __repr__(self) -> str:
        return "DROP"


DROP = _Drop()  # a key to leave out


def one_am(**changes: Any) -> Alert:
    [alert] = parse_alertmanager(encode(am_body(am_alert(**changes))), DEFAULT)[1]
    return alert


def one_grafana(**changes: Any) -> Alert:
    [alert] = parse_grafana(encode(grafana_body(am_alert(**changes))), DEFAULT)[1]
    return alert


# -- the documented examples, field by field ----------------------------------------------


def test_alertmanager_firing_group() -> None:
    payload = fixture("alertmanager_firing.json")
    group_key, alerts = parse_alertmanager(encode(payload), DEFAULT)
    assert group_key == payload["groupKey"]
    assert alerts == [
        Alert(source="alertmanager", fingerprint="1a30ba71cca2921f", status="firing", name="HighErrorRate",
              group_key=payload["groupKey"], service="api", environment="production", metric="error_rate",
              value=0.052, baseline=0.004, traffic=1250.0, severity=None,
              starts_at=datetime(2026, 5, 4, 10, 15, 3, 739266, tzinfo=UTC), ends_at=None,
              summary="api is returning errors",
              url="http://prometheus.example.org:9090/graph?g0.expr=job%3Aerror_ratio%3Arate5m+%3E+0.04&g0.tab=1",
              labels=payload["alerts"][0]["labels"], annotations=payload["alerts"][0]["annotations"]),
        Alert(source="alertmanager", fingerprint="bc97ff14869b13e3", status="firing", name="HighLatency",
              group_key=payload["groupKey"], service="web", environment="production", metric=None,
              value=None, baseline=None, traffic=None, severity="critical",
              starts_at=datetime(2026, 5, 4, 10, 16, 45, 828000, tzinfo=UTC), ends_at=None,
              summary="p95 latency on web is above 2s.",
              url="http://prometheus.example.org:9090/graph?g0.expr=latency_p95+%3E+2&g0.tab=1",
              labels=payload["alerts"][1]["labels"], annotations=payload["alerts"][1]["annotations"]),
    ]


def test_alertmanager_resolved() -> None:
    group_key, [alert] = parse_alertmanager((PAYLOADS / "alertmanager_resolved.json").read_bytes(), DEFAULT)
    assert group_key == '{}:{alertname="HighErrorRate"}'
    assert alert.status == "resolved" and alert.fingerprint == "1a30ba71cca2921f"
    assert alert.starts_at == datetime(2026, 5, 4, 10, 15, 3, 739000, tzinfo=UTC)
    assert alert.ends_at == datetime(2026, 5, 4, 11, 10, 3, 100000, tzinfo=UTC)  # 10:40:03.1 at -00:30
    assert (alert.service, alert.environment, alert.value) == ("api", "production", None)


def test_grafana_firing_with_values() -> None:
    payload = fixture("grafana_firing.json")
    group_key, [checkout, search] = parse_grafana(encode(payload), DEFAULT)
    assert group_key == '{}/{grafana_folder="payments"}:{}'
    assert checkout == Alert(
        source="grafana", fingerprint="c6eadffa33fcdf37", status="firing", name="Checkout error rate",
        group_key=group_key, service="checkout", environment="production", metric="error_rate",
        value=0.052,  # values["B"], because the rule's value_ref annotation says B
        baseline=None, traffic=None, severity=None,
        starts_at=datetime(2026, 5, 4, 10, 15, 3, 157076, tzinfo=UTC), ends_at=None,
        summary="checkout errors are high", url="https://grafana.example.org/d/checkout?viewPanel=4",
        labels=payload["alerts"][0]["labels"], annotations=payload["alerts"][0]["annotations"])
    assert search.value == 812.5  # the only value
    assert (search.service, search.environment, search.metric) == ("search", "staging", "latency_p95")
    assert search.url == "https://grafana.example.org/d/search"  # panelURL is empty
    assert search.summary == "Search latency" and search.annotations == {}


def test_grafana_resolved() -> None:
    group_key, [alert] = parse_grafana((PAYLOADS / "grafana_resolved.json").read_bytes(), DEFAULT)
    assert (group_key, alert.status, alert.fingerprint) == ("{}:{}", "resolved", "c6eadffa33fcdf37")
    assert alert.ends_at == datetime(2026, 5, 4, 10, 45, tzinfo=UTC)
    assert alert.value is None  # two values and no value_ref: no guess
    assert alert.url == "https://grafana.example.org/alerting/grafana/1afz29v7z/view"  # generatorURL, last resort


def test_generic_single() -> None:
    group_key, alerts = parse_generic((PAYLOADS / "generic_single.json").read_bytes(), DEFAULT, now=NOW)
    assert group_key is None
    assert alerts == [Alert(
        source="generic", fingerprint="checkout-errors", status="firing", name="error_rate", group_key=None,
        service="api", environment="production", metric="error_rate", value=0.031, baseline=0.004,
        traffic=1250.0, severity="critical", starts_at=datetime(2026, 5, 4, 10, 15, tzinfo=UTC), ends_at=None,
        summary="5xx on /checkout", url="https://grafana.example.org/d/abc")]


def test_generic_list() -> None:
    group_key, [resolved, firing] = parse_generic((PAYLOADS / "generic_list.json").read_bytes(), DEFAULT, now=NOW)
    assert group_key is None
    assert (resolved.status, resolved.value, resolved.fingerprint) == ("resolved", None, "checkout-errors")
    assert resolved.starts_at == datetime(2026, 5, 4, 10, 15, tzinfo=UTC)
    assert (firing.name, firing.summary, firing.value, firing.baseline) == ("SearchLatency", "SearchLatency", 2.0,
                                                                           None)
    assert firing.starts_at == NOW  # no started_at: now
    assert firing.severity is None and firing.url is None


def test_generic_started_at_defaults_to_the_current_time_in_utc() -> None:
    before = datetime.now(UTC)
    [alert] = parse_generic(encode(generic()), DEFAULT)[1]
    assert before <= alert.starts_at <= datetime.now(UTC)
    assert alert.starts_at.utcoffset() == timedelta(0)


def test_generic_now_given_in_another_zone_is_returned_in_utc() -> None:
    [alert] = parse_generic(encode(generic()), DEFAULT, now=NOW.astimezone(timezone(timedelta(hours=5))))[1]
    assert alert.starts_at == NOW and alert.starts_at.tzinfo == UTC


# -- mapping rules ------------------------------------------------------------------------


def test_service_falls_back_to_job() -> None:
    alert = one_am(labels={"alertname": "X", "job": "billing", "env": "staging"})
    assert (alert.service, alert.environment) == ("billing", "staging")


def test_labels_win_over_annotations_and_the_list_order_holds_within_each() -> None:
    alert = one_am(labels={"alertname": "X", "job": "from-job-label"},
                   annotations={"service": "from-annotation", "environment": "prod-annotation"})
    assert alert.service == "from-job-label"  # any label before any annotation
    assert alert.environment == "prod-annotation"  # no label: the annotation


def test_the_first_name_of_the_list_wins() -> None:
    alert = one_am(labels={"alertname": "X", "service": "api", "job": "api-scrape", "env": "e1",
                           "environment": "e2"})
    assert (alert.service, alert.environment) == ("api", "e1")


def test_blank_values_count_as_absent() -> None:
    alert = one_am(labels={"alertname": "X", "service": "  ", "job": "billing", "severity": ""},
                   annotations={"severity": "warning"})
    assert (alert.service, alert.severity) == ("billing", "warning")


def test_a_custom_label_configuration() -> None:
    names = AlertLabels(service=["app"], environment=["stage"], metric=["slo"], value=["current"],
                        baseline=["usual"], traffic=["rps"], severity=["priority"])
    body = am_body(am_alert(labels={"alertname": "X", "app": "cart", "service": "ignored", "stage": "prod",
                                    "priority": "P1", "severity": "ignored"},
                            annotations={"slo": "error_rate", "current": "0.2", "value": "9", "usual": "0.01",
                                         "rps": "30"}))
    [alert] = parse_alertmanager(encode(body), names)[1]
    assert (alert.service, alert.environment, alert.severity, alert.metric) == ("cart", "prod", "P1", "error_rate")
    assert (alert.value, alert.baseline, alert.traffic) == (0.2, 0.01, 30.0)
    [default] = parse_alertmanager(encode(body), DEFAULT)[1]
    assert (default.service, default.severity, default.value) == ("ignored", "ignored", 9.0)


@pytest.mark.parametrize(("text", "number"), [
    ("0.052", 0.052), ("5.2e-02", 0.052), (" 3 ", 3.0), ("-1", -1.0), ("1250", 1250.0),
    ("high", None), ("12%", None), ("NaN", None), ("Infinity", None), ("-inf", None), ("0x10", None),
])
def test_numbers_are_parsed_and_unparsable_ones_become_none(text: str, number: float | None) -> None:
    alert = one_am(annotations={"value": text, "baseline": text, "traffic": text})
    assert (alert.value, alert.baseline, alert.traffic) == (number, number, number)


def test_summary_falls_back_to_description_then_the_name() -> None:
    assert one_am(annotations={"summary": "s", "description": "d"}).summary == "s"
    assert one_am(annotations={"description": "d"}).summary == "d"
    assert one_am(annotations={"summary": " ", "description": "d"}).summary == "d"
    assert one_am(annotations={}).summary == "HighErrorRate"


def test_name_when_alertname_is_missing() -> None:
    assert one_am(labels={"service": "api"}).name == "unnamed alert"
    assert one_grafana(labels={"service": "api"}).name == "[FIRING:1] payments"  # Grafana: the title
    [untitled] = parse_grafana(encode(grafana_body(am_alert(labels={"a": "b"}), title=DROP)), DEFAULT)[1]
    assert untitled.name == "unnamed alert" and untitled.summary == "api errors"


def test_alertmanager_url_and_empty_url() -> None:
    assert one_am().url == "http://prometheus.example.org/graph"
    assert one_am(generatorURL="").url is None
    assert one_am(generatorURL=DROP).url is None


@pytest.mark.parametrize(("urls", "expected"), [
    ({"panelURL": "p", "dashboardURL": "d", "generatorURL": "g"}, "p"),
    ({"panelURL": "", "dashboardURL": "d", "generatorURL": "g"}, "d"),
    ({"panelURL": "", "dashboardURL": "", "generatorURL": "g"}, "g"),
    ({"generatorURL": DROP}, None),
])
def test_grafana_url_prefers_panel_then_dashboard(urls: dict[str, Any], expected: str | None) -> None:
    assert one_grafana(**urls).url == expected


def test_labels_and_annotations_are_copied() -> None:
    labels = {"alertname": "X", "service": "api", "team": "blue"}
    annotations = {"summary": "s", "runbook_url": "https://runbooks.example.org"}
    alert = one_am(labels=labels, annotations=annotations)
    assert alert.labels == labels and alert.annotations == annotations


def test_null_annotations_are_empty() -> None:  # Go marshals a nil map as null
    alert = one_am(annotations=None)
    assert alert.annotations == {} and alert.summary == "HighErrorRate"
    assert one_am(annotations=DROP).annotations == {}


# -- Grafana's values ---------------------------------------------------------------------


@pytest.mark.parametrize(("labels", "annotations", "values", "expected"), [
    pytest.param({}, {"value_ref": "B"}, {"B": 0.052, "C": 1}, 0.052, id="value_ref-annotation"),
    pytest.param({"value_ref": "C"}, {"value_ref": "B"}, {"B": 0.052, "C": 1}, 1.0, id="value_ref-label-first"),
    pytest.param({}, {"value_ref": "X"}, {"B": 0.052}, None, id="value_ref-names-no-value"),
    pytest.param({}, {}, {"A": 812.5}, 812.5, id="the-only-value"),
    pytest.param({}, {}, {"B": 0.052, "C": 1}, None, id="several-values-no-ref"),
    pytest.param({}, {}, {}, None, id="no-values"),
    pytest.param({}, {}, None, None, id="null-values"),
    pytest.param({}, {}, DROP, None, id="values-absent"),
    pytest.param({"value": "0.3"}, {"value_ref": "B"}, {"B": 0.052}, 0.3, id="a-label-wins"),
    pytest.param({}, {"value": "0.4"}, {"A": 9}, 0.4, id="an-annotation-wins"),
    pytest.param({}, {"value": "n/a", "value_ref": "B"}, {"B": 0.052}, 0.052, id="unparsable-annotation-falls-back"),
])
def test_grafana_value_from_values(labels: dict, annotations: dict, values: Any, expected: float | None) -> None:
    alert = one_grafana(labels={"alertname": "X", **labels}, annotations=annotations, values=values)
    assert alert.value == expected


def test_alertmanager_ignores_values() -> None:
    # values is Grafana's; an Alertmanager body that carried it gets no value from it
    assert one_am(values={"A": 1.0}).value is None


# -- fingerprints -------------------------------------------------------------------------


def test_fingerprint_fallback_is_a_stable_hash_of_the_labels() -> None:
    first = one_am(fingerprint=DROP, labels={"alertname": "X", "service": "api", "env": "production"})
    reordered = one_am(fingerprint=DROP, labels={"env": "production", "service": "api", "alertname": "X"})
    other = one_am(fingerprint=DROP, labels={"alertname": "X", "service": "api", "env": "staging"})
    empty = one_am(fingerprint="", labels={"alertname": "X", "service": "api", "env": "production"})
    grafana = one_grafana(fingerprint=DROP, labels={"alertname": "X", "service": "api", "env": "production"})
    assert len(first.fingerprint) == 64 and int(first.fingerprint, 16) >= 0
    assert first.fingerprint == reordered.fingerprint == empty.fingerprint == grafana.fingerprint
    assert other.fingerprint != first.fingerprint
    # not fooled by a value that contains what would otherwise separate pairs
    glued = one_am(fingerprint=DROP, labels={"a": "b,c=d"})
    split = one_am(fingerprint=DROP, labels={"a": "b", "c": "d"})
    assert glued.fingerprint != split.fingerprint


def test_the_monitors_fingerprint_is_kept() -> None:
    assert one_am(fingerprint="abc123").fingerprint == "abc123"


# -- times --------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-05-04T10:15:03Z", datetime(2026, 5, 4, 10, 15, 3, tzinfo=UTC)),
    ("2026-05-04T12:15:03+02:00", datetime(2026, 5, 4, 10, 15, 3, tzinfo=UTC)),
    ("2026-05-04T09:45:03-00:30", datetime(2026, 5, 4, 10, 15, 3, tzinfo=UTC)),
    ("2026-05-04T10:15:03.739266876Z", datetime(2026, 5, 4, 10, 15, 3, 739266, tzinfo=UTC)),  # Go's nanoseconds
    ("2026-05-04T10:15:03.1Z", datetime(2026, 5, 4, 10, 15, 3, 100000, tzinfo=UTC)),
    ("2026-05-04t10:15:03z", datetime(2026, 5, 4, 10, 15, 3, tzinfo=UTC)),  # RFC 3339 allows lower case
    ("2026-05-04 10:15:03Z", datetime(2026, 5, 4, 10, 15, 3, tzinfo=UTC)),  # …and a space
    ("2026-05-05T00:15:03+14:00", datetime(2026, 5, 4, 10, 15, 3, tzinfo=UTC)),
])
def test_times_are_aware_and_in_utc(text: str, expected: datetime) -> None:
    alert = one_am(startsAt=text, endsAt=text)
    assert alert.starts_at == expected and alert.ends_at == expected
    assert alert.starts_at.tzinfo == UTC and alert.ends_at.tzinfo == UTC


@pytest.mark.parametrize("zero", ["0001-01-01T00:00:00Z", "0001-01-01T00:00:00.000Z", "0001-01-01T00:00:00+00:00"])
def test_go_zero_end_time_is_none(zero: str) -> None:
    assert one_am(endsAt=zero).ends_at is None
    assert one_grafana(endsAt=zero).ends_at is None


@pytest.mark.parametrize("absent", [DROP, None, ""])
def test_a_missing_end_time_is_none(absent: Any) -> None:
    assert one_am(endsAt=absent).ends_at is None


def test_a_year_one_time_that_is_not_go_zero_is_kept() -> None:
    assert one_am(endsAt="0001-01-01T00:00:00-01:00").ends_at == datetime(1, 1, 1, 1, tzinfo=UTC)


# -- limits -------------------------------------------------------------------------------


def test_a_thousand_alerts_are_taken() -> None:
    alerts = [am_alert(fingerprint=f"fp{i}") for i in range(MAX_ALERTS)]
    assert len(parse_alertmanager(encode(am_body(*alerts)), DEFAULT)[1]) == MAX_ALERTS


def test_an_empty_group_is_no_alerts() -> None:
    assert parse_alertmanager(encode(am_body(alerts=[])), DEFAULT) == ('{}:{alertname="HighErrorRate"}', [])
    assert parse_generic(encode({"alerts": []}), DEFAULT) == (None, [])


def test_long_free_text_is_cut_not_refused() -> None:
    long = "x" * (MAX_STRING + 5000)
    alert = one_am(annotations={"summary": long, "description": long})
    assert len(alert.summary) == MAX_STRING and alert.summary.endswith("…")
    assert len(alert.annotations["description"]) == MAX_STRING
    [titled] = parse_grafana(encode(grafana_body(am_alert(labels={"a": "b"}), title=long)), DEFAULT)[1]
    assert len(titled.name) == MAX_STRING and titled.name.endswith("…")
    [summed] = parse_generic(encode(generic(summary=long)), DEFAULT)[1]
    assert len(summed.summary) == MAX_STRING


def test_exactly_the_limit_is_kept_whole() -> None:
    edge = "y" * MAX_STRING
    alert = one_am(labels={"alertname": "X", "team": edge}, annotations={"summary": edge})
    assert alert.labels["team"] == edge and alert.summary == edge


def test_a_json_bom_is_accepted() -> None:
    assert parse_alertmanager(b"\xef\xbb\xbf" + encode(am_body()), DEFAULT)[1][0].name == "HighErrorRate"


# -- malformed bodies, each with its exact reason ------------------------------------------

LONG = "z" * (MAX_STRING + 1)
KNOWN = "baseline, environment, id, metric, name, service, severity, started_at, status, summary, traffic, url, value"
RFC = "must be an RFC 3339 time such as 2026-05-04T10:15:00Z, got"

AM, GRAFANA, GENERIC = parse_alertmanager, parse_grafana, parse_generic


MALFORMED: list[tuple[str, Callable, bytes, str]] = [
    # not JSON, or not an object
    ("empty", AM, b"", "not JSON: Expecting value (line 1 column 1)"),
    ("truncated", AM, b'{"version": "4"', "not JSON: Expecting ',' delimiter (line 1 column 16)"),
    ("not-utf8", AM, b'{"a": "\xff"}', "not JSON: not UTF-8 text (byte 7)"),
    ("nan", AM, b'{"version": "4", "alerts": [], "x": NaN}', "not JSON: NaN is not a JSON number"),
    ("infinity", GENERIC, b'{"value": -Infinity}', "not JSON: -Infinity is not a JSON number"),
    ("deep", AM, b"[" * 100_000 + b"]" * 100_000, "not JSON: nested too deeply"),
    ("list", AM, b"[]", "the body must be a JSON object, got a list"),
    ("string", GRAFANA, b'"alerts"', "the body must be a JSON object, got a string"),
    ("null", GENERIC, b"null", "the body must be a JSON object, got null"),
    ("number", GENERIC, b"42", "the body must be a JSON object, got a number"),
    # versions
    ("am-no-version", AM, encode(am_body(version=DROP)),
     'version must be "4" (Alertmanager webhook payload), got nothing'),
    ("am-version-int", AM, encode(am_body(version=4)), 'version must be "4" (Alertmanager webhook payload), got 4'),
    ("am-version-3", AM, encode(am_body(version="3")),
     'version must be "4" (Alertmanager webhook payload), got "3"'),
    ("am-grafana-body", AM, encode(grafana_body()), 'version must be "4" (Alertmanager webhook payload), got "1"'),
    ("grafana-version-2", GRAFANA, encode(grafana_body(version="2")),
     'version must be "1" (Grafana webhook payload), got "2"'),
    ("grafana-am-body", GRAFANA, encode(am_body()), 'version must be "1" (Grafana webhook payload), got "4"'),
    # the alert list
    ("no-alerts", AM, encode(am_body(alerts=DROP)), "alerts is missing"),
    ("alerts-object", AM, encode(am_body(alerts={})), "alerts must be a list, got an object"),
    ("alerts-null", GRAFANA, encode(grafana_body(alerts=None)), "alerts must be a list, got null"),
    ("too-many", AM, encode(am_body(alerts=[am_alert()] * (MAX_ALERTS + 1))),
     "too many alerts: 1001 (at most 1000 per request)"),
    ("too-many-generic", GENERIC, encode({"alerts": [generic()] * (MAX_ALERTS + 1)}),
     "too many alerts: 1001 (at most 1000 per request)"),
    ("alert-string", AM, encode(am_body(alerts=["x"])), "alerts[0] must be an object, got a string"),
    ("group-key-number", AM, encode(am_body(groupKey=1)), "groupKey must be a string, got a number"),
    ("group-key-long", GRAFANA, encode(grafana_body(groupKey=LONG)),
     "groupKey is longer than 10000 characters (10001)"),
    # labels and annotations
    ("labels-list", AM, encode(am_body(am_alert(), am_alert(), am_alert(labels=[]))),
     "alerts[2].labels must be an object, got a list"),
    ("labels-missing", AM, encode(am_body(am_alert(labels=DROP))), "alerts[0].labels is missing"),
    ("labels-null", GRAFANA, encode(grafana_body(am_alert(labels=None))),
     "alerts[0].labels must be an object, got null"),
    ("label-number", AM, encode(am_body(am_alert(labels={"alertname": "X", "team": 7}))),
     "alerts[0].labels.team must be a string, got a number"),
    ("label-odd-key", AM, encode(am_body(am_alert(labels={"a b": True}))),
     'alerts[0].labels["a b"] must be a string, got a boolean'),
    ("label-long", AM, encode(am_body(am_alert(labels={"team": LONG}))),
     "alerts[0].labels.team is longer than 10000 characters (10001)"),
    ("label-key-long", AM, encode(am_body(am_alert(labels={LONG: "x"}))),
     "a key of alerts[0].labels is longer than 10000 characters (10001)"),
    ("annotations-string", AM, encode(am_body(am_alert(annotations="summary"))),
     "alerts[0].annotations must be an object, got a string"),
    ("annotation-null", GRAFANA, encode(grafana_body(am_alert(annotations={"summary": None}))),
     "alerts[0].annotations.summary must be a string, got null"),
    # status
    ("status-missing", AM, encode(am_body(am_alert(status=DROP))),
     'alerts[0].status must be "firing" or "resolved", got nothing'),
    ("status-pending", GRAFANA, encode(grafana_body(am_alert(status="pending"))),
     'alerts[0].status must be "firing" or "resolved", got "pending"'),
    # times
    ("starts-missing", AM, encode(am_body(am_alert(startsAt=DROP))), "alerts[0].startsAt is missing"),
    ("starts-empty", AM, encode(am_body(am_alert(startsAt=""))), "alerts[0].startsAt must not be empty"),
    ("starts-number", AM, encode(am_body(am_alert(startsAt=1714817700))),
     "alerts[0].startsAt must be a string, got a number"),
    ("starts-words", AM, encode(am_body(am_alert(startsAt="yesterday"))), f'alerts[0].startsAt {RFC} "yesterday"'),
    ("starts-naive", AM, encode(am_body(am_alert(startsAt="2026-05-04T10:15:00"))),
     f'alerts[0].startsAt {RFC} "2026-05-04T10:15:00"'),
    ("starts-date", GRAFANA, encode(grafana_body(am_alert(startsAt="2026-05-04"))),
     f'alerts[0].startsAt {RFC} "2026-05-04"'),
    ("starts-short-offset", AM, encode(am_body(am_alert(startsAt="2026-05-04T10:15:00+02"))),
     f'alerts[0].startsAt {RFC} "2026-05-04T10:15:00+02"'),
    ("starts-month-13", AM, encode(am_body(am_alert(startsAt="2026-13-04T10:15:00Z"))),
     'alerts[0].startsAt is not a valid time: "2026-13-04T10:15:00Z"'),
    ("starts-leap-second", AM, encode(am_body(am_alert(startsAt="2016-12-31T23:59:60Z"))),
     'alerts[0].startsAt is not a valid time: "2016-12-31T23:59:60Z"'),
    ("offset-24h", AM, encode(am_body(am_alert(startsAt="2026-05-04T10:15:00+24:00"))),
     'alerts[0].startsAt is not a valid time: "2026-05-04T10:15:00+24:00"'),
    ("ends-before-year-one", AM, encode(am_body(am_alert(endsAt="0001-01-01T00:00:00+02:00"))),
     'alerts[0].endsAt is not a valid time: "0001-01-01T00:00:00+02:00"'),
    ("ends-number", AM, encode(am_body(am_alert(endsAt=0))), "alerts[0].endsAt must be a string, got a number"),
    ("starts-long", AM, encode(am_body(am_alert(startsAt=LONG))),
     "alerts[0].startsAt is longer than 10000 characters (10001)"),
    # other alert fields
    ("fingerprint-number", AM, encode(am_body(am_alert(fingerprint=42))),
     "alerts[0].fingerprint must be a string, got a number"),
    ("fingerprint-long", GRAFANA, encode(grafana_body(am_alert(fingerprint=LONG))),
     "alerts[0].fingerprint is longer than 10000 characters (10001)"),
    ("generator-url-list", AM, encode(am_body(am_alert(generatorURL=["x"]))),
     "alerts[0].generatorURL must be a string, got a list"),
    ("panel-url-number", GRAFANA, encode(grafana_body(am_alert(panelURL=1))),
     "alerts[0].panelURL must be a string, got a number"),
    ("title-number", GRAFANA, encode(grafana_body(title=5)), "title must be a string, got a number"),
    ("values-string", GRAFANA, encode(grafana_body(am_alert(values="B=1"))),
     "alerts[0].values must be an object, got a string"),
    ("values-entry-string", GRAFANA, encode(grafana_body(am_alert(values={"B": "0.5"}))),
     "alerts[0].values.B must be a number, got a string"),
    ("values-entry-bool", GRAFANA, encode(grafana_body(am_alert(), am_alert(values={"B": True}))),
     "alerts[1].values.B must be a number, got a boolean"),
    ("values-entry-huge", GRAFANA, encode(grafana_body(am_alert(values={"B": 1}))).replace(b"1}", b"1e999}"),
     "alerts[0].values.B must be a finite number"),
    # the generic format
    ("generic-empty", GENERIC, encode({}), "id is missing"),
    ("generic-id-number", GENERIC, encode(generic(id=7)), "id must be a string, got a number"),
    ("generic-id-long", GENERIC, encode(generic(id=LONG)), "id is longer than 10000 characters (10001)"),
    ("generic-no-service", GENERIC, encode(generic(service=DROP)), "service is missing"),
    ("generic-service-empty", GENERIC, encode(generic(service=" ")), "service must not be empty"),
    ("generic-environment-null", GENERIC, encode(generic(environment=None)), "environment is missing"),
    ("generic-metric-list", GENERIC, encode(generic(metric=["error_rate"])), "metric must be a string, got a list"),
    ("generic-status", GENERIC, encode(generic(status="ok")), 'status must be "firing" or "resolved", got "ok"'),
    ("generic-no-value", GENERIC, encode(generic(value=DROP)),
     'value is required (a number) unless status is "resolved"'),
    ("generic-null-value", GENERIC, encode(generic(value=None, status="firing")),
     'value is required (a number) unless status is "resolved"'),
    ("generic-value-string", GENERIC, encode(generic(value="0.3")), "value must be a number, got a string"),
    ("generic-value-bool", GENERIC, encode(generic(value=True)), "value must be a number, got a boolean"),
    ("generic-value-huge", GENERIC, encode(generic(value=1)).replace(b'"value": 1', b'"value": 1e999'),
     "value must be a finite number"),
    ("generic-baseline", GENERIC, encode(generic(baseline="low")), "baseline must be a number, got a string"),
    ("generic-traffic", GENERIC, encode(generic(traffic={})), "traffic must be a number, got an object"),
    ("generic-severity", GENERIC, encode(generic(severity=3)), "severity must be a string, got a number"),
    ("generic-url", GENERIC, encode(generic(url=LONG)), "url is longer than 10000 characters (10001)"),
    ("generic-started", GENERIC, encode(generic(started_at="now")), f'started_at {RFC} "now"'),
    ("generic-started-number", GENERIC, encode(generic(started_at=1714817700)),
     "started_at must be a string, got a number"),
    ("generic-typo", GENERIC, encode(generic(enviroment="production")),
     f'unknown key "enviroment" (known: {KNOWN})'),
    ("generic-batch-extra", GENERIC, encode({"alerts": [generic()], "source": "x"}),
     'a batch has only the key alerts; unknown key "source"'),
    ("generic-batch-not-list", GENERIC, encode({"alerts": "x"}), "alerts must be a list, got a string"),
    ("generic-batch-item", GENERIC, encode({"alerts": [generic(), generic(id=DROP)]}), "alerts[1].id is missing"),
    ("generic-batch-typo", GENERIC, encode({"alerts": [generic(sevrity="x")]}),
     f'alerts[0]: unknown key "sevrity" (known: {KNOWN})'),
    ("generic-batch-not-object", GENERIC, encode({"alerts": [[]]}), "alerts[0] must be an object, got a list"),
]


@pytest.mark.parametrize(("parse", "body", "reason"), [pytest.param(p, b, r, id=i) for i, p, b, r in MALFORMED])
def test_malformed_bodies_are_refused_with_their_reason(parse: Callable, body: bytes, reason: str) -> None:
    with pytest.raises(MalformedPayload) as refused:
        parse(body, DEFAULT)
    assert str(refused.value) == reason


def test_reasons_do_not_echo_long_values() -> None:
    with pytest.raises(MalformedPayload) as refused:
        parse_alertmanager(encode(am_body(version="4" * 5000)), DEFAULT)
    assert len(str(refused.value)) < 150


def _mutations(node: Any, path: tuple = ()):
    """Every copy of ``node`` with one value (anywhere) replaced by a value of another type."""
    junk = [None, 0, -1.5, True, "", "x", [], {}, [1], {"k": None}]
    for replacement in junk:
        yield path, replacement
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in children:
        yield from _mutations(child, path + (key,))


def _replace(root: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    copied = copy.deepcopy(root)
    node = copied
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return copied


@pytest.mark.parametrize(("name", "parse"), [
    ("alertmanager_firing.json", parse_alertmanager), ("alertmanager_resolved.json", parse_alertmanager),
    ("grafana_firing.json", parse_grafana), ("grafana_resolved.json", parse_grafana),
    ("generic_single.json", parse_generic), ("generic_list.json", parse_generic),
])
def test_no_other_exception_escapes_whatever_is_changed(name: str, parse: Callable) -> None:
    original = fixture(name)
    tried = 0
    for path, value in _mutations(original):
        body = encode(_replace(original, path, value))
        try:
            _, alerts = parse(body, DEFAULT)
        except MalformedPayload:
            pass
        else:
            assert all(isinstance(alert, Alert) for alert in alerts)
        tried += 1
    assert tried > 100


# -- bearer tokens -------------------------------------------------------------------------

TOKEN = "s3cret-token"


@pytest.mark.parametrize(("headers", "ok"), [
    pytest.param({"Authorization": f"Bearer {TOKEN}"}, True, id="right"),
    pytest.param({"authorization": f"bearer {TOKEN}"}, True, id="case-insensitive-name-and-scheme"),
    pytest.param({"Authorization": f"  Bearer  {TOKEN} "}, True, id="extra-spaces"),
    pytest.param({"Authorization": "Bearer wrong-token"}, False, id="wrong"),
    pytest.param({"Authorization": f"Bearer {TOKEN[:-1]}"}, False, id="prefix"),
    pytest.param({"Authorization": f"Bearer {TOKEN}x"}, False, id="longer"),
    pytest.param({}, False, id="missing"),
    pytest.param({"Authorization": ""}, False, id="empty"),
    pytest.param({"Authorization": "Bearer"}, False, id="no-token"),
    pytest.param({"Authorization": f"Basic {TOKEN}"}, False, id="other-scheme"),
    pytest.param({"Authorization": TOKEN}, False, id="no-scheme"),
    pytest.param({"X-Token": TOKEN}, False, id="other-header"),
    pytest.param({"Authorization": "Bearer tökén"}, False, id="non-ascii"),
])
def test_bearer(headers: dict[str, str], ok: bool) -> None:
    assert bearer_ok(headers, TOKEN) is ok


def test_an_empty_configured_token_lets_nobody_in() -> None:
    assert bearer_ok({"Authorization": "Bearer "}, "") is False
    assert bearer_ok({"Authorization": "Bearer"}, "") is False


# -- Grafana's HMAC signature -------------------------------------------------------------

SECRET = "grafana-hmac-secret"
BODY = (PAYLOADS / "grafana_firing.json").read_bytes()
STAMP = 1_777_900_000
SIG = "X-Grafana-Alerting-Signature"
TS = "X-Grafana-Alerting-Timestamp"


def signed(body: bytes = BODY, secret: str = SECRET, timestamp: int | None = None) -> str:
    """What Grafana sends (grafana/alerting http/hmac.go): hex HMAC-SHA256 of
    the body, or of "<timestamp>:<body>" when a timestamp header is configured."""
    message = body if timestamp is None else f"{timestamp}:".encode() + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def test_a_known_hmac_sha256_vector() -> None:
    # pins the algorithm and the hex encoding to a published value (the well-known HMAC-SHA256 example)
    headers = {SIG: "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"}
    assert grafana_signature_problem(headers, b"The quick brown fox jumps over the lazy dog", "key") is None


def test_grafana_signature_valid() -> None:
    assert grafana_signature_problem({SIG: signed()}, BODY, SECRET) is None


def test_grafana_signature_in_upper_case_hex_or_lower_case_header_name() -> None:
    assert grafana_signature_problem({SIG: signed().upper()}, BODY, SECRET) is None
    assert grafana_signature_problem({SIG.lower(): signed()}, BODY, SECRET) is None


def test_grafana_signature_tampered_body() -> None:
    tampered = BODY.replace(b"0.052", b"0.001")
    assert tampered != BODY
    assert grafana_signature_problem({SIG: signed()}, tampered, SECRET) == f"bad signature in {SIG}"


def test_grafana_signature_wrong_secret() -> None:
    assert grafana_signature_problem({SIG: signed(secret="other")}, BODY, SECRET) == f"bad signature in {SIG}"


def test_grafana_signature_missing_header() -> None:
    assert grafana_signature_problem({}, BODY, SECRET) == f"missing {SIG} header"
    assert grafana_signature_problem({SIG: ""}, BODY, SECRET) == f"missing {SIG} header"


def test_grafana_signature_garbage() -> None:
    assert grafana_signature_problem({SIG: "sha256=" + signed()}, BODY, SECRET) == f"bad signature in {SIG}"
    assert grafana_signature_problem({SIG: "ünïcode"}, BODY, SECRET) == f"bad signature in {SIG}"


def test_grafana_code_default_header_name_is_accepted_too() -> None:
    # grafana/alerting http/hmac.go signs into X-Grafana-Alert-Signature when the header field is empty
    assert grafana_signature_problem({"X-Grafana-Alert-Signature": signed()}, BODY, SECRET) is None
    assert grafana_signature_problem({"X-Grafana-Alert-Signature": signed(secret="x")}, BODY, SECRET) \
        == f"bad signature in {SIG}"


def test_grafana_custom_header_name() -> None:
    assert grafana_signature_problem({"X-Sig": signed()}, BODY, SECRET, header="X-Sig") is None
    assert grafana_signature_problem({SIG: signed()}, BODY, SECRET, header="X-Sig") == "missing X-Sig header"


def test_grafana_no_secret_configured_refuses() -> None:
    assert grafana_signature_problem({SIG: signed(secret="")}, BODY, "") == "no Grafana signing secret is configured"


def test_grafana_timestamp_variant_valid() -> None:
    headers = {SIG: signed(timestamp=STAMP), TS: str(STAMP)}
    assert grafana_signature_problem(headers, BODY, SECRET, timestamp_header=TS, now=STAMP + 10) is None
    assert grafana_signature_problem(headers, BODY, SECRET, timestamp_header=TS, now=STAMP + 300) is None
    assert grafana_signature_problem(headers, BODY, SECRET, timestamp_header=TS, now=STAMP - 300) is None


def test_grafana_timestamp_variant_stale() -> None:
    headers = {SIG: signed(timestamp=STAMP), TS: str(STAMP)}
    assert grafana_signature_problem(headers, BODY, SECRET, timestamp_header=TS, now=STAMP + 301) \
        == f"stale timestamp in {TS}: 301s old (at most 300s)"
    assert grafana_signature_problem(headers, BODY, SECRET, timestamp_header=TS, now=STAMP - 400) \
        == f"stale timestamp in {TS}: 400s in the future (at most 300s)"
    assert grafana_signature_problem(headers, BODY, SECRET, timestamp_header=TS, now=STAMP + 50, tolerance=30) \
        == f"stale timestamp in {TS}: 50s old (at most 30s)"


def test_grafana_timestamp_variant_uses_the_clock_by_default() -> None:
    stamp = int(time.time())
    headers = {SIG: signed(timestamp=stamp), TS: str(stamp)}
    assert grafana_signature_problem(headers, BODY, SECRET, timestamp_header=TS) is None
    old = stamp - 3600
    headers = {SIG: signed(timestamp=old), TS: str(old)}
    assert grafana_signature_problem(headers, BODY, SECRET, timestamp_header=TS).startswith("stale timestamp")


def test_grafana_timestamp_variant_signs_timestamp_colon_body() -> None:
    body_only = {SIG: signed(), TS: str(STAMP)}
    assert grafana_signature_problem(body_only, BODY, SECRET, timestamp_header=TS, now=STAMP) \
        == f"bad signature in {SIG}"
    dot = {SIG: hmac.new(SECRET.encode(), f"{STAMP}.".encode() + BODY, hashlib.sha256).hexdigest(), TS: str(STAMP)}
    assert grafana_signature_problem(dot, BODY, SECRET, timestamp_header=TS, now=STAMP) == f"bad signature in {SIG}"


def test_grafana_timestamp_changed_after_signing() -> None:
    headers = {SIG: signed(timestamp=STAMP), TS: str(STAMP + 1)}
    assert grafana_signature_problem(headers, BODY, SECRET, timestamp_header=TS, now=STAMP) \
        == f"bad signature in {SIG}"


@pytest.mark.parametrize(("stamp", "reason"), [
    (None, f"missing {TS} header"),
    ("", f"missing {TS} header"),
    ("yesterday", f"{TS} is not a Unix timestamp"),
    ("-5", f"{TS} is not a Unix timestamp"),
    ("1.5", f"{TS} is not a Unix timestamp"),
    ("١٢٣", f"{TS} is not a Unix timestamp"),  # Arabic-Indic digits: isdigit() but not a timestamp
])
def test_grafana_timestamp_malformed(stamp: str | None, reason: str) -> None:
    headers = {SIG: signed(timestamp=STAMP)}
    if stamp is not None:
        headers[TS] = stamp
    assert grafana_signature_problem(headers, BODY, SECRET, timestamp_header=TS, now=STAMP) == reason
