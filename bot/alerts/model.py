"""One alert, whatever monitor sent it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class Alert:
    """An alert in the one shape the rest of Slipway works with."""

    source: str  # "alertmanager" | "grafana" | "generic"
    fingerprint: str  # stable id of the alert (its label set); with starts_at it names one occurrence
    status: str  # "firing" | "resolved"
    name: str  # alertname / rule title
    group_key: str | None = None  # the notification group (Alertmanager groupKey, Grafana groupKey)
    service: str | None = None
    environment: str | None = None
    metric: str | None = None
    value: float | None = None
    baseline: float | None = None
    traffic: float | None = None
    severity: str | None = None  # e.g. critical / warning / info, as the monitor says
    starts_at: datetime | None = None  # timezone-aware
    ends_at: datetime | None = None  # timezone-aware; None when the monitor sends its "zero" time
    summary: str = ""  # annotations.summary or description, or the rule title
    url: str | None = None  # where to look: generatorURL, panelURL/dashboardURL…
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)


class MalformedPayload(ValueError):
    """The webhook body is not the monitor's documented shape; the message
    says what is wrong (it goes back to the monitor in a 400)."""
