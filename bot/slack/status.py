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

import dataclasses
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
from bot.errors import SlipwayError
from bot.slack.blocks import MAX_BLOCKS, as_dicts, context, header, section
from bot.slack.mrkdwn import ago, clip, escape, mention, when
from store import ALL_ENVIRONMENTS, Deploy, DeployStatus, Lock, Store, stamp

MAX_VIEW_BLOCKS = View.blocks_max_length  # slack_sdk refuses more; we leave the rest out first
MAX_FIELDS = SectionBlock.fields_max_length  # a row of more environments takes several sections
MAX_REASON = 150  # characters of a lock or freeze reason shown in a cell
HOME_MATRIX_BLOCKS = 60  # the rest of the Home tab's 100 is for the recent deploys
HOME_RECENT_DEPLOYS = 15
HOME_RECENT_SCAN = 500  # with an owner chosen, its last deploys are looked for among this many of everyone's

IN_FLIGHT_WORDS = {
    DeployStatus.AWAITING_APPROVAL: "awaiting approval",
    DeployStatus.APPROVED: "approved, starting",
    DeployStatus.DEPLOYING: "deploying",
    DeployStatus.VERIFYING: "verifying",
    DeployStatus.BAKING: "baking",
}
STATUS_MARKS = {
    DeployStatus.AWAITING_APPROVAL: ":hourglass_flowing_sand:", DeployStatus.APPROVED: ":white_check_mark:",
    DeployStatus.QUEUED: ":busstop:",
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


# -- owners ---------------------------------------------------------------------------


def owners_text(owners: list[str] | tuple[str, ...]) -> str:
    """Who a service belongs to, as a line shows it: ``@payments, <@U0ALICE>``."""
    return ", ".join(mention(owner) for owner in owners)


def owned_services(config: Config, owner: str, service: str | None = None) -> list[str]:
    """The services ``owner`` (a user id or ``@handle``, as ``services.<name>.owners``
    writes it) owns, in config order; just ``service`` when one is named.

    Raises:
        UnknownService: ``service`` is not in the config.
        SlipwayError: ``owner`` owns no service (or not ``service``); says who owns what.
    """
    owned = [name for name, spec in config.services.items() if owner in spec.owners]
    if service is not None:
        service = resolve_service(config, service)
        if service not in owned:
            whose = owners_text(config.services[service].owners) or "nobody (it has no `owners`)"
            raise SlipwayError(f"`{service}` does not belong to {escape(owner)}: it belongs to {whose}.")
        return [service]
    if not owned:
        known = sorted({o for spec in config.services.values() for o in spec.owners})
        listed = f" The owners I know: {owners_text(known)}." if known else " No service has `owners` set."
        raise SlipwayError(f"No service belongs to {escape(owner)}.{listed}")
    return owned


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
    owners: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)  # service -> who it belongs to
    owner: str | None = None  # only the services this owner owns (``--owner``)

    @property
    def empty(self) -> bool:
        return not any(cell.live or cell.in_flight for _, cells in self.services for cell in cells)


def blocks_per_service(environments: int) -> int:
    return max(1, math.ceil(environments / MAX_FIELDS))


def build_matrix(config: Config, store: Store, now: datetime, service: str | None = None,
                 max_blocks: int = MAX_BLOCKS - 4, owner: str | None = None) -> Matrix:
    """The matrix of every service (or ``service``, or those ``owner``
    owns) × every environment of the ladder, in ladder order, for the
    services whose rows fit in ``max_blocks`` blocks (config order; the
    default leaves room for the reply's header, freeze line, note and "more
    services" line).

    Raises:
        UnknownService: ``service`` is not in the config.
        SlipwayError: ``owner`` owns no service (or not ``service``).
    """
    if owner is not None:
        names = owned_services(config, owner, service)
    else:
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
    owners = {name: tuple(config.services[name].owners) for name in names if config.services[name].owners}
    return Matrix(rows, hidden, freezes, single=service is not None, owners=owners, owner=owner)


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


def service_blocks(service: str, cells: tuple[Cell, ...], owners: tuple[str, ...] = ()) -> list[SectionBlock]:
    """One section per ten environments (a section holds ten fields), each
    cell clipped to a field's 2000 characters; the first names the service
    (and who it belongs to: ``*api* — @payments``)."""
    texts = [cell_text(cell) for cell in cells]
    title = f"*{service}*" + (f" — {owners_text(owners)}" if owners else "")
    return [section(title if start == 0 else None, fields=texts[start:start + MAX_FIELDS])
            for start in range(0, max(1, len(texts)), MAX_FIELDS)]


def matrix_blocks(matrix: Matrix, max_blocks: int) -> list[Block]:
    """The matrix without a header, in at most ``max_blocks`` blocks:
    freezes, one row per service, and what was left out (the services
    ``build_matrix`` left out, and any whose rows do not fit here)."""
    blocks: list[Block] = []
    if matrix.owner is not None and not matrix.single:
        names = [name for name, _ in matrix.services] + matrix.hidden
        blocks.append(context(f"Only the services of {owners_text([matrix.owner])}: {', '.join(names)}."))
    if matrix.freezes:
        lines = [f":snowflake: *{env}* is frozen until {when(note.until)}: {clip(note.reason, MAX_REASON)}"
                 for env, note in matrix.freezes.items()]
        blocks.append(context(" \n".join(lines)))
    if matrix.empty and not matrix.single:
        blocks.append(section("Nothing deployed yet. `/deploy <service> <version>` requests the first deploy."))
    rows = [(service, service_blocks(service, cells, matrix.owners.get(service, ())))
            for service, cells in matrix.services]
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
    title = "Deploy status" + (f": {matrix.services[0][0]}" if matrix.single
                               else f": {matrix.owner}" if matrix.owner is not None else "")
    return as_dicts([header(title), *matrix_blocks(matrix, MAX_BLOCKS - 1)])


def status_fallback(matrix: Matrix) -> str:
    live = sum(1 for _, cells in matrix.services for cell in cells if cell.live)
    flying = sum(1 for _, cells in matrix.services for cell in cells if cell.in_flight)
    return (f"Deploy status: {len(matrix.services) + len(matrix.hidden)} service(s), {live} live version(s), "
            f"{flying} deploy(s) in flight")


def status_reply(config: Config, store: Store, now: datetime, service: str | None,
                 owner: str | None = None) -> dict[str, Any]:
    """What `/deploy status [service] [--owner @team]` acks with.

    Raises:
        UnknownService: ``service`` is not in the config.
        SlipwayError: ``owner`` owns no service (or not ``service``).
    """
    matrix = build_matrix(config, store, now, service, owner=owner)
    return {"text": status_fallback(matrix), "blocks": status_blocks(matrix)}


# -- the App Home tab -------------------------------------------------------------------


def recent_deploy_block(deploy: Deploy) -> SectionBlock:
    mark = STATUS_MARKS.get(deploy.status, "")
    rollback = f" (rollback of #{deploy.rollback_of})" if deploy.rollback_of is not None else ""
    text = (f"{mark} {deploy_ref(deploy)} *{deploy.service}* `{deploy.display_version}` → {deploy.environment}: "
            f"{deploy.status.replace('_', ' ')}{rollback} · by {mention(deploy.requested_by)} "
            f"{ago(deploy.requested_at)}")
    return section(text)


def home_view(config: Config, store: Store, now: datetime, owner: str | None = None) -> dict[str, Any]:
    """The App Home tab: the matrix and the last deploys (≤ 100 blocks);
    with ``owner``, only the services it owns and their deploys (or, should
    it own none any more, everything, saying so)."""
    note = "Refreshed whenever a deploy changes state. `/deploy help` lists the commands."
    try:
        matrix = build_matrix(config, store, now, max_blocks=HOME_MATRIX_BLOCKS, owner=owner)
    except SlipwayError:  # the config changed under the choice: a tab is never left unpublished
        note = f"No service belongs to {escape(owner or '')} any more: showing every service. " + note
        owner, matrix = None, build_matrix(config, store, now, max_blocks=HOME_MATRIX_BLOCKS)
    if owner is None:
        deploys = store.reads.recent(HOME_RECENT_DEPLOYS)
    else:  # the team's last deploys, looked for among everyone's recent ones
        shown = {name for name, _ in matrix.services} | set(matrix.hidden)
        deploys = [d for d in store.reads.recent(HOME_RECENT_SCAN) if d.service in shown][:HOME_RECENT_DEPLOYS]
        note = f"`/deploy home` shows every service again. {note}"
    recent = [recent_deploy_block(deploy) for deploy in deploys]
    top: list[Block] = [header("What runs where" + (f": {owner}" if owner is not None else "")), context(note)]
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


def stats_blocks(figures: list[Figures], service: str | None, days: int, owner: str | None = None,
                 owned: list[str] | None = None) -> list[dict[str, Any]]:
    """`/deploy stats`: one section of four figures per environment."""
    scope = (f"*{service}*" if service else
             f"The services of {owners_text([owner])}: {', '.join(owned or [])}" if owner else "All services")
    blocks: list[Block] = [header(f"Deploy stats: last {days} day(s)"), context(scope)]
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


def stats_reply(config: Config, store: Store, now: datetime, service: str | None, days: int,
                owner: str | None = None) -> dict[str, Any]:
    """What `/deploy stats [service] [days] [--owner @team]` acks with.

    Raises:
        UnknownService: ``service`` is not in the config.
        SlipwayError: ``owner`` owns no service (or not ``service``).
    """
    owned = owned_services(config, owner, service) if owner is not None else None
    if service is not None:
        service = resolve_service(config, service)
    since = stamp(now - timedelta(days=days))
    if service is not None or owned is None:
        environments = config.environments_of(service) if service else config.environment_names
        deploys = store.reads.finished_since(since, service)
        where = service or "all services"
    else:  # summed over the owner's services, on the rungs any of them deploys to
        rungs = {env for name in owned for env in config.environments_of(name)}
        environments = [env for env in config.environment_names if env in rungs]
        deploys = [d for d in store.reads.finished_since(since) if d.service in owned]
        where = f"the services of {owner} ({', '.join(owned)})"
    figures = dora(deploys, environments, now, days)
    return {"text": f"Deploy stats for {where}, last {days} day(s)",
            "blocks": stats_blocks(figures, service, days, owner=None if service is not None else owner, owned=owned)}
