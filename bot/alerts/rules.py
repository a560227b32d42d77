"""Threshold rules: is an alert a breach, and how loud should it be?

A rule compares a metric's value with its baseline (error rate above 2×
baseline → notify, above 5× → page; latency above 3× → warn), after
absolute floors, so twice almost nothing stays quiet. An alert that carries
no numbers is relayed by the severity its monitor gave it.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.alerts.model import Alert
from bot.config import AlertRule

# Loudest first. "quiet": stored, not posted.
LEVELS = ("page", "warn", "notify", "info", "quiet")
SEVERITY_LEVELS = {"critical": "page", "page": "page", "error": "warn", "warning": "warn", "warn": "warn",
                   "info": "info", "none": "info"}


@dataclass(frozen=True)
class Judgement:
    level: str  # one of LEVELS
    rule_key: str  # which message this belongs to: the rule's metric, or the alert's name
    ratio: float | None
    reason: str  # the number, the baseline and the ratio, in words

    @property
    def loud(self) -> bool:
        return self.level != "quiet"


def louder(a: str, b: str) -> str:
    return a if LEVELS.index(a) <= LEVELS.index(b) else b


def judge(alert: Alert, rules: list[AlertRule]) -> Judgement:
    """How loud ``alert`` is under ``rules``."""
    rule = next((r for r in rules if alert.metric is not None and r.metric == alert.metric), None)
    if rule is not None and alert.value is not None:
        return _by_rule(alert, rule)
    return _by_severity(alert, rule)


def _fmt(value: float, unit: str) -> str:
    return f"{value:.4g}{unit}"


def _by_rule(alert: Alert, rule: AlertRule) -> Judgement:
    assert alert.value is not None
    value = _fmt(alert.value, rule.unit)
    if alert.value <= rule.min_value:
        return Judgement("quiet", rule.metric, None, f"{rule.metric} {value} is at or below the floor "
                                                     f"{_fmt(rule.min_value, rule.unit)}")
    if alert.traffic is not None and alert.traffic < rule.min_traffic:
        return Judgement("quiet", rule.metric, None, f"traffic {alert.traffic:.4g} is below the floor "
                                                     f"{rule.min_traffic:.4g}")
    if not alert.baseline:  # None or 0: no ratio to judge; the monitor's own word decides
        by_severity = _by_severity(alert, rule)
        return Judgement(by_severity.level, rule.metric, None,
                         f"{rule.metric} {value} (no baseline to compare with; {by_severity.reason})")
    ratio = alert.value / alert.baseline
    level = "quiet"
    for name, threshold in (("page", rule.page_above), ("warn", rule.warn_above), ("notify", rule.notify_above)):
        if threshold is not None and ratio > threshold:
            level = louder(level, name)
    limits = ", ".join(f"{name} above {threshold:g}×" for name, threshold in
                       (("notify", rule.notify_above), ("warn", rule.warn_above), ("page", rule.page_above))
                       if threshold is not None)
    return Judgement(level, rule.metric, ratio,
                     f"{rule.metric} {value} is {ratio:.1f}× its baseline {_fmt(alert.baseline, rule.unit)} "
                     f"({limits})")


def _by_severity(alert: Alert, rule: AlertRule | None) -> Judgement:
    severity = (alert.severity or "").lower()
    level = SEVERITY_LEVELS.get(severity, "info")
    # alerts without a rule share one message per group, whatever their names
    key = rule.metric if rule is not None else (alert.metric or "by-severity")
    said = f"severity {alert.severity}" if alert.severity else "no severity given"
    return Judgement(level, key, None, f"relayed by the monitor's {said}")
