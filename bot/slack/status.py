"""What runs where: the status matrix (`/deploy status`, the App Home tab)
and the DORA figures (`/deploy stats`), gathered from the store and
rendered as Block Kit.

Gathering is a few set-based queries (``store.reads``, store/read_models.py); rendering is pure,
builds slack_sdk's typed blocks (which check Block Kit's limits as they
become dicts) and keeps to those limits gracefully (50 blocks a message,
100 a view, 10 fields a section, 2000 characters a field, 3000 a section),
saying what it left out rather than letting Slack refuse the whole reply.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from slack_sdk.models.blocks import Block, DividerBlock, SectionBlock
from slack_sdk.models.views import View

from bot.config import Config
from bot.deploys.policy import resolve_service
from bot.deploys.stats import Figures, dora
from bot.durations import format_duration
from bot.slack.blocks import MAX_BLOCKS, as_dicts, context, header, section
from bot.slack.mrkdwn import ago, clip, mention, when
from store import ALL_ENVIRONMENTS, Deploy, DeployStatus, Lock, Store, stamp

MAX_VIEW_BLOCKS = View.blocks_max_length  # slack_sdk refuses more; we leave the rest out first
MAX_FIELDS = SectionBlock.fields_max_length  # a row of more environments takes several sections
MAX_REASON = 150  # characters of a lock or freeze reason shown in a cell
HOME_MATRIX_BLOCKS = 60  # the rest of the Home tab's 100 is for the recent deploys
HOME_RECENT_DEPLOYS = 15

IN_FLIGHT_WORDS = {
    DeployStatus.AWAITING_APPROVAL: "awaiting approval",
    DeployStatus.APPROVED: "approved, starting",
    DeployStatus.DEPLOYING: "deploying",
    DeployStatus.VERIFYING: "verifying",
    DeployStatus.BAKING: "baking",
}
STATUS_MARKS = {
    DeployStatus.AWAITING_APPROVAL: ":hourglass_flowing_sand:", DeployStatus.APPROVED: ":white_check_mark:",
    DeployStatus.DEPLOYING: ":rocket:", DeployStatus.VERIFYING: ":mag:", DeployStatus.BAKING: ":bread:",
    DeployStatus.SUCCEEDED: ":large_green_circle:", DeployStatus.FAILED: ":red_circle:",
    DeployStatus.REJECTED: ":no_entry:", DeployStatus.CANCELLED: ":heavy_multiplication_x:",
    DeployStatus.ROLLED_BACK: ":rewind:", DeployStatus.EXPIRED: ":hourglass:",
}


# -- freezes ------------------------------------------------------------------------


@dataclass(frozen=True)
class FreezeNote:
    reason: str
    until: str  # ISO


def active_freeze(config: Config, environment: str, now: datetime) -> FreezeNote | None:
    """The freeze on ``environment`` at ``now`` (the first, in config order),
    if any, with the end of its current occurrence (a weekly window ends at
    this week's end). The one place the views ask the config about freezes."""
    windows = config.freezes_at(environment, now)
    return FreezeNote(windows[0].freeze.reason, windows[0].until.isoformat()) if windows else None


# -- the matrix -----------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """One service on one environment."""

    environment: str
    on_ladder: bool  # False: the service's config skips this environment
    live: Deploy | None
    in_flight: Deploy | None
    locks: tuple[Lock, ...]
    freeze: FreezeNote | None


@dataclass(frozen=True)
class Matrix:
    services: list[tuple[str, tuple[Cell, ...]]]
    hidden: list[str]  # services left out to stay within Block Kit's limits
    freezes: dict[str, FreezeNote]  # environment -> its active freeze
    single: bool = False  # asked for one service

    @property
    def empty(self) -> bool:
        return not any(cell.live or cell.in_flight for _, cells in self.services for cell in cells)


def blocks_per_service(environments: int) -> int:
    return max(1, math.ceil(environments / MAX_FIELDS))


def build_matrix(config: Config, store: Store, now: datetime, service: str | None = None,
                 max_blocks: int = MAX_BLOCKS - 4) -> Matrix:
    """The matrix of every service (or ``service``) × every environment of
    the ladder, in ladder order, for the services whose rows fit in
    ``max_blocks`` blocks (config order; the default leaves room for the
    reply's header, freeze line, note and "more services" line).

    Raises:
        UnknownService: ``service`` is not in the config.
    """
    names = [resolve_service(config, service)] if service is not None else list(config.services)
    environments = config.environment_names
    fits = max(1, max_blocks // blocks_per_service(len(environments)))
    shown, hidden = names[:fits], names[fits:]
    live, flying = store.reads.live(shown, environments), store.reads.in_flight(shown)
    locks = [lock for lock in store.locks.all() if lock.service in set(shown)]
    freezes = {env: note for env in environments if (note := active_freeze(config, env, now)) is not None}
    rows = []
    for name in shown:
        ladder = set(config.environments_of(name))
        rows.append((name, tuple(
            Cell(env, env in ladder, live.get((name, env)), flying.get((name, env)),
                 tuple(lock for lock in locks if lock.service == name and lock.environment in (env, ALL_ENVIRONMENTS)),
                 freezes.get(env))
            for env in environments)))
    return Matrix(rows, hidden, freezes, single=service is not None)


def deploy_ref(deploy: Deploy) -> str:
    """``#12``, linked to the deploy's message when it has one."""
    return f"<{deploy.permalink}|#{deploy.id}>" if deploy.permalink else f"#{deploy.id}"


def cell_text(cell: Cell) -> str:
    lines = [f"*{cell.environment}*"]
    if cell.live is not None:
        rollback = " (rollback)" if cell.live.rollback_of is not None else ""
        lines.append(f"`{cell.live.display_version}`{rollback} by {mention(cell.live.requested_by)} "
                     f"{ago(cell.live.finished_at or cell.live.requested_at)}")
    else:
        lines.append("_nothing deployed_" if cell.on_ladder else "— _not on this service's ladder_")
    if cell.in_flight is not None:
        flying = cell.in_flight
        lines.append(f":arrows_counterclockwise: {deploy_ref(flying)} `{flying.display_version}` "
                     f"{IN_FLIGHT_WORDS.get(flying.status, flying.status.replace('_', ' '))}")
    if cell.on_ladder:
        for lock in cell.locks:
            until = f" until {when(lock.until)}" if lock.until else ""
            lines.append(f":lock: locked by {mention(lock.locked_by)}{until}: “{clip(lock.reason, MAX_REASON)}”")
        if cell.freeze is not None:
            lines.append(f":snowflake: frozen until {when(cell.freeze.until)}")
    return "\n".join(lines)


def service_blocks(service: str, cells: tuple[Cell, ...]) -> list[SectionBlock]:
    """One section per ten environments (a section holds ten fields), each
    cell clipped to a field's 2000 characters."""
    texts = [cell_text(cell) for cell in cells]
    return [section(f"*{service}*" if start == 0 else None, fields=texts[start:start + MAX_FIELDS])
            for start in range(0, max(1, len(texts)), MAX_FIELDS)]


def matrix_blocks(matrix: Matrix, max_blocks: int) -> list[Block]:
    """The matrix without a header, in at most ``max_blocks`` blocks:
    freezes, one row per service, and what was left out (the services
    ``build_matrix`` left out, and any whose rows do not fit here)."""
    blocks: list[Block] = []
    if matrix.freezes:
        lines = [f":snowflake: *{env}* is frozen until {when(note.until)}: {clip(note.reason, MAX_REASON)}"
                 for env, note in matrix.freezes.items()]
        blocks.append(context(" \n".join(lines)))
    if matrix.empty and not matrix.single:
        blocks.append(section("Nothing deployed yet. `/deploy <service> <version>` requests the first deploy."))
    rows = [(service, service_blocks(service, cells)) for service, cells in matrix.services]
    room = max_blocks - len(blocks)
    if matrix.hidden or sum(len(row) for _, row in rows) > room:
        room -= 1  # for the line that names what is left out
    left_out: list[str] = []
    for service, row in rows:
        if left_out or len(row) > room:  # once one is left out, the rest follow it, in config order
            left_out.append(service)
        else:
            blocks.extend(row)
            room -= len(row)
    left_out += matrix.hidden
    if left_out:
        blocks.append(context(f"…and {len(left_out)} more service(s) not shown here ({', '.join(left_out)}): "
                              "`/deploy status <service>` shows one."))
    return blocks


def status_blocks(matrix: Matrix) -> list[dict[str, Any]]:
    """`/deploy status`: the matrix as an ephemeral message (≤ 50 blocks)."""
    title = "Deploy status" + (f": {matrix.services[0][0]}" if matrix.single else "")
    return as_dicts([header(title), *matrix_blocks(matrix, MAX_BLOCKS - 1)])


def status_fallback(matrix: Matrix) -> str:
    live = sum(1 for _, cells in matrix.services for cell in cells if cell.live)
    flying = sum(1 for _, cells in matrix.services for cell in cells if cell.in_flight)
    return (f"Deploy status: {len(matrix.services) + len(matrix.hidden)} service(s), {live} live version(s), "
            f"{flying} deploy(s) in flight")


def status_reply(config: Config, store: Store, now: datetime, service: str | None) -> dict[str, Any]:
    """What `/deploy status [service]` acks with.

    Raises:
        UnknownService: ``service`` is not in the config.
    """
    matrix = build_matrix(config, store, now, service)
    return {"text": status_fallback(matrix), "blocks": status_blocks(matrix)}


# -- the App Home tab -------------------------------------------------------------------


def recent_deploy_block(deploy: Deploy) -> SectionBlock:
    mark = STATUS_MARKS.get(deploy.status, "")
    rollback = f" (rollback of #{deploy.rollback_of})" if deploy.rollback_of is not None else ""
    text = (f"{mark} {deploy_ref(deploy)} *{deploy.service}* `{deploy.display_version}` → {deploy.environment}: "
            f"{deploy.status.replace('_', ' ')}{rollback} · by {mention(deploy.requested_by)} "
            f"{ago(deploy.requested_at)}")
    return section(text)


def home_view(config: Config, store: Store, now: datetime) -> dict[str, Any]:
    """The App Home tab: the matrix and the last deploys (≤ 100 blocks)."""
    matrix = build_matrix(config, store, now, max_blocks=HOME_MATRIX_BLOCKS)
    recent = [recent_deploy_block(deploy) for deploy in store.reads.recent(HOME_RECENT_DEPLOYS)]
    top: list[Block] = [header("What runs where"),
                        context("Refreshed whenever a deploy changes state. `/deploy help` lists the commands.")]
    bottom: list[Block] = [DividerBlock(), header("Recent deploys"), *(recent or [section("No deploys yet.")])]
    matrix_room = MAX_VIEW_BLOCKS - len(top) - len(bottom)
    return View(type="home", blocks=[*top, *matrix_blocks(matrix, matrix_room), *bottom]).to_dict()


# -- DORA figures -----------------------------------------------------------------------


def frequency_text(figures: Figures) -> str:
    if figures.per_day is None:
        return f"no data (no successful deploy in {figures.days} days)"
    rate = f"{figures.per_day:.1f} per day" if figures.per_day >= 1 else f"{figures.per_day * 7:.1f} per week"
    return f"{rate} ({figures.deploys} in {figures.days} days)"


def lead_time_text(figures: Figures) -> str:
    if figures.lead_time_median is None or figures.lead_time_p90 is None:
        return "no data"
    return (f"median {format_duration(figures.lead_time_median)} · p90 {format_duration(figures.lead_time_p90)} "
            f"({len(figures.lead_times)} deploy(s))")


def failure_rate_text(figures: Figures) -> str:
    if figures.change_failure_rate is None:
        return "no data"
    return f"{figures.change_failure_rate:.0%} ({figures.failures} of {figures.finished} failed or rolled back)"


def restore_text(figures: Figures) -> str:
    still = f"; {figures.unrestored} not restored yet" if figures.unrestored else ""
    if figures.restore_median is None:
        return "no data" + still
    return f"median {format_duration(figures.restore_median)} ({len(figures.restore_times)} outage(s)){still}"


def stats_blocks(figures: list[Figures], service: str | None, days: int) -> list[dict[str, Any]]:
    """`/deploy stats`: one section of four figures per environment."""
    blocks: list[Block] = [header(f"Deploy stats: last {days} day(s)"),
                           context(f"*{service}*" if service else "All services")]
    room = MAX_BLOCKS - len(blocks) - 1
    for env in figures[:room]:
        blocks.append(section(f"*{env.environment}*", fields=[
            f"*Deploy frequency*\n{frequency_text(env)}",
            f"*Lead time* (request → success)\n{lead_time_text(env)}",
            f"*Change failure rate*\n{failure_rate_text(env)}",
            f"*Time to restore*\n{restore_text(env)}",
        ]))
    left_out = f" {len(figures) - room} more environment(s) not shown." if len(figures) > room else ""
    blocks.append(context("Rollbacks count as restorations, not changes; cancelled, rejected and expired requests "
                          f"never ran and are not counted.{left_out}"))
    return as_dicts(blocks)


def stats_reply(config: Config, store: Store, now: datetime, service: str | None, days: int) -> dict[str, Any]:
    """What `/deploy stats [service] [days]` acks with.

    Raises:
        UnknownService: ``service`` is not in the config.
    """
    if service is not None:
        service = resolve_service(config, service)
    environments = config.environments_of(service) if service else config.environment_names
    since = stamp(now - timedelta(days=days))
    figures = dora(store.reads.finished_since(since, service), environments, now, days)
    where = service or "all services"
    return {"text": f"Deploy stats for {where}, last {days} day(s)", "blocks": stats_blocks(figures, service, days)}
