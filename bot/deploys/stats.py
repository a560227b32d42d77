"""The four DORA figures, from Slipway's own deploy records.

Pure computation: records in, figures out, with "now" passed in, so every
figure can be checked by hand in a test.

How deploys count (README, `/deploy stats`):

- Only deploys whose engine ran to an end count: ``succeeded``, ``failed``
  and ``rolled_back``. Cancelled, rejected and expired requests never ran.
- A rollback deploy (``rollback_of`` set) restores a service; it is not a
  change. It is left out of deploy frequency, lead time and change failure
  rate, and its success ends an outage for time to restore.
- A deploy later rolled back did go live: it counts as deployed (frequency,
  lead time, dated by when it went live) and as a failed change.
- An outage starts when a deploy fails (at its end) or when a deploy that
  was later rolled back went live, and ends at the next success on the same
  service and environment. Failures before that success belong to the same
  outage, timed from the first.
- A staged rollout aborted before full traffic is a failed change restored
  at the abort: its outage runs from the start of the stage it was aborted
  at to the abort, whatever comes after (the stable version never left).
- Each figure counts what happened in the window: a deploy by the moment it
  succeeded or failed, an outage by the moment it started.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from store import DeployStatus, DeployTimes

FAILED_STATES = (DeployStatus.FAILED, DeployStatus.ROLLED_BACK)


@dataclass
class Figures:
    """One environment's figures over ``days`` days; a figure with no
    samples is ``None`` (shown as "no data", never as 0)."""

    environment: str
    days: int
    deploys: int = 0  # changes that went live
    lead_times: list[float] = field(default_factory=list)  # seconds, request → success
    finished: int = 0  # changes that succeeded, failed or were rolled back
    failures: int = 0  # of those, failed or rolled back
    restore_times: list[float] = field(default_factory=list)  # seconds, outage start → next success
    unrestored: int = 0  # outages with no success since

    @property
    def per_day(self) -> float | None:
        return self.deploys / self.days if self.deploys else None

    @property
    def lead_time_median(self) -> float | None:
        return statistics.median(self.lead_times) if self.lead_times else None

    @property
    def lead_time_p90(self) -> float | None:
        return percentile_90(self.lead_times)

    @property
    def change_failure_rate(self) -> float | None:
        return self.failures / self.finished if self.finished else None

    @property
    def restore_median(self) -> float | None:
        return statistics.median(self.restore_times) if self.restore_times else None


def percentile_90(samples: list[float]) -> float | None:
    """The 90th percentile, interpolated between the samples around it
    (``statistics.quantiles``' inclusive method); one sample is its own p90."""
    if not samples:
        return None
    if len(samples) == 1:
        return samples[0]
    return statistics.quantiles(samples, n=10, method="inclusive")[-1]


def _moment(iso: str) -> datetime:
    return datetime.fromisoformat(iso)


def dora(records: Iterable[DeployTimes], environments: list[str], now: datetime, days: int) -> list[Figures]:
    """The figures of each of ``environments`` (in that order) over the
    ``days`` days up to ``now``, from ``records`` (deploys that ran)."""
    since = now - timedelta(days=days)
    figures = {name: Figures(name, days) for name in environments}
    places: dict[tuple[str, str], list[DeployTimes]] = defaultdict(list)
    for record in records:
        if record.environment not in figures:
            continue
        places[(record.service, record.environment)].append(record)
        if record.rollback_of is None:
            _count_change(figures[record.environment], record, since, now)
    for (_, environment), history in places.items():
        _count_outages(figures[environment], history, since, now)
    return [figures[name] for name in environments]


def _count_change(figures: Figures, record: DeployTimes, since: datetime, now: datetime) -> None:
    ended = _moment(record.went_live_at or record.finished_at)
    if not since <= ended <= now:
        return
    figures.finished += 1
    if record.status in FAILED_STATES:
        figures.failures += 1
    if record.went_live_at is not None:
        figures.deploys += 1
        figures.lead_times.append((ended - _moment(record.requested_at)).total_seconds())


def _count_outages(figures: Figures, history: list[DeployTimes], since: datetime, now: datetime) -> None:
    """Outages of one service on one environment, from its deploys' successes
    and failures in time order."""
    events: list[tuple[datetime, int, int]] = []  # (when, deploy id, 0 = success | 1 = failure)
    for record in history:
        if record.aborted_from is not None:
            began = _moment(record.aborted_from)
            if since <= began <= now:
                figures.restore_times.append(max(0.0, (_moment(record.finished_at) - began).total_seconds()))
            continue
        if record.went_live_at is not None:
            events.append((_moment(record.went_live_at), record.id, 0))
        if record.status == DeployStatus.FAILED:
            events.append((_moment(record.finished_at), record.id, 1))
        elif record.status == DeployStatus.ROLLED_BACK:  # bad from the moment it went live
            events.append((_moment(record.went_live_at or record.finished_at), record.id, 1))
    started: datetime | None = None
    for moment, _, failure in sorted(events):
        if failure and started is None:
            started = moment
        elif not failure and started is not None:
            if since <= started <= now:
                figures.restore_times.append((moment - started).total_seconds())
            started = None
    if started is not None and since <= started <= now:
        figures.unrestored += 1
