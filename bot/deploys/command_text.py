"""Parsing the text of ``/deploy`` into a command (data, not behaviour).

The parser knows the shape of each subcommand, not the config: whether a
service or environment exists is the workflow's question.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from bot.config import USER_ID, USERGROUP_HANDLE
from bot.errors import UsageError
from bot.slack.mrkdwn import escape

HELP_TEXT = """\
*Slipway — deploys from Slack*
• `/deploy <service> <version> [environment]` — request a deploy (environment defaults to the first rung of the ladder), e.g. `/deploy api v2.7.0 production`
• `/deploy <service> <version> [environment] --migration` — the deploy carries a database migration: the migration checklist, and a backup before the engine where configured
• `/deploy <service> <version> <environment> --override "reason"` — ask to deploy inside a freeze (needs one more approval, from the `override` role)
• `/deploy lock <service> [environment] [duration] <reason>` — stop deploys of a service (every environment when none is named), e.g. `/deploy lock api production 2h "db maintenance"`
• `/deploy unlock <service> [environment]` — lift a lock
• `/deploy locks [service]` — every lock and blocked version: who, when, why, until
• `/deploy queue [service]` — requests waiting in line where an environment queues (`queue: true`), in order
• `/deploy unblock <service> <version> [environment]` — allow a rolled-back version again
• `/deploy rollback <service> [environment]` — go back to the last good version (asks you to confirm)
• `/deploy promote <service> [environment]` — a staged rollout (canary, blue-green, bake) goes on from its stage now, without waiting out its pause
• `/deploy pause <service> [environment]` — hold a staged rollout where it is (its pause keeps the time left); `/deploy resume <service> [environment]` lets it go on
• `/deploy abort <service> [environment]` — stop a staged rollout: traffic returns to the previous version, or, once at full traffic, it rolls back
• `/deploy show <id>` — the whole record of one deploy
• `/deploy history <service> [environment]` — recent deploys
• `/deploy status [service] [--owner @team]` — what runs where: live version, locks, freezes and deploys in flight per environment (`--owner`: only that team's services)
• `/deploy stats [service] [days] [--owner @team]` — deploy frequency, lead time, change failure rate and time to restore (default 30 days)
• `/deploy home [--owner @team]` — your App Home tab shows only that team's services (without `--owner`: every service again)
• `/deploy help` — this message
Versions are semantic (`2.7.0` or `v2.7.0`). A version reaches an environment only after it succeeded on the rung below; production needs approvals and a ticked checklist."""

SUBCOMMANDS = ("help", "lock", "unlock", "locks", "queue", "unblock", "rollback", "promote", "pause", "resume", "abort",
               "show", "history", "status", "stats", "home")
STEERING = ("promote", "pause", "resume", "abort")  # what people do to a staged rollout in progress


@dataclass(frozen=True)
class Help:
    pass


@dataclass(frozen=True)
class RequestDeploy:
    service: str
    version: str
    environment: str | None
    override: str | None = None  # `--override "reason"`: deploy inside a freeze, with one more approval
    migration: bool = False  # `--migration`: it carries a database migration (checklist, backup first)


@dataclass(frozen=True)
class LockCommand:
    service: str
    words: tuple[str, ...]  # [environment] [duration] reason…: which is which needs the config


@dataclass(frozen=True)
class LocksCommand:
    service: str | None  # None: every service


@dataclass(frozen=True)
class QueueCommand:
    service: str | None  # None: every service


@dataclass(frozen=True)
class UnblockCommand:
    service: str
    version: str
    environment: str | None  # None: every environment where the version is blocked


@dataclass(frozen=True)
class UnlockCommand:
    service: str
    environment: str | None


@dataclass(frozen=True)
class RollbackCommand:
    service: str
    environment: str | None


@dataclass(frozen=True)
class SteerCommand:
    """``/deploy promote|pause|resume|abort <service> [environment]``."""

    action: str  # one of STEERING
    service: str
    environment: str | None  # None: wherever the service has a rollout in progress


@dataclass(frozen=True)
class ShowCommand:
    deploy_id: int


@dataclass(frozen=True)
class HistoryCommand:
    service: str
    environment: str | None


@dataclass(frozen=True)
class StatusCommand:
    service: str | None  # None: every service
    owner: str | None = None  # `--owner @team`: only the services it owns (see :func:`owner_of`)


@dataclass(frozen=True)
class StatsCommand:
    service: str | None  # None: every service
    days: int
    owner: str | None = None  # `--owner @team`: summed over the services it owns


@dataclass(frozen=True)
class HomeCommand:
    """``/deploy home [--owner @team]``: which services the asker's App Home tab shows."""

    owner: str | None  # None: every service


STATS_DAYS = (1, 365)
STATS_DEFAULT_DAYS = 30
LOOKS_LIKE_DAYS = re.compile(r"^[-+]?\d+(?:\.\d*)?d?$", re.IGNORECASE)  # told apart from a service name


Command = (Help | RequestDeploy | LockCommand | UnlockCommand | RollbackCommand | ShowCommand | HistoryCommand
           | StatusCommand | StatsCommand | LocksCommand | QueueCommand | UnblockCommand | SteerCommand
           | HomeCommand)

# Slack sends what people type, and their clients often turn "…" into “…”.
QUOTES = str.maketrans({"“": '"', "”": '"', "„": '"'})
OVERRIDE = "--override"
OVERRIDE_USAGE = 'Usage: `/deploy <service> <version> <environment> --override "reason"`, e.g. ' \
                 '`/deploy api 2.7.0 production --override "fix for INC-42"`.'


def split_words(text: str) -> list[str]:
    """Words, with a double-quoted phrase (plain or smart quotes) as one
    word. Apostrophes are not quotes: `don't` stays a word.

    Raises:
        UsageError: a quote is left open.
    """
    lexer = shlex.shlex(text.translate(QUOTES), posix=True)
    lexer.whitespace_split = True
    lexer.quotes = '"'
    lexer.escape = ""
    lexer.commenters = ""
    try:
        return list(lexer)
    except ValueError:
        raise UsageError('A quote is left open: close it (`"like this"`) and try again.') from None


MIGRATION = "--migration"
OWNER = "--owner"
# A user or usergroup as Slack may send it in a command's text: <@U123|name>, <!subteam^S123|@team>
SLACK_USER = re.compile(r"^<@([UW][A-Z0-9]{2,})(?:\|[^>]*)?>$")
SLACK_USERGROUP = re.compile(r"^<!subteam\^[A-Z0-9]+\|@?([^>]+)>$")


def owner_of(word: str) -> str:
    """An owner as ``services.<name>.owners`` writes it: a user id
    (``U0ALICE``, ``<@U0ALICE>``) or a usergroup handle (``@payments``,
    ``payments``, ``<!subteam^S0PAY|@payments>``).

    Raises:
        UsageError: it is neither.
    """
    if match := SLACK_USER.match(word):
        return match.group(1)
    if match := SLACK_USERGROUP.match(word):
        word = match.group(1)
    if USER_ID.match(word):
        return word
    handle = "@" + word.removeprefix("@").lower()
    if not USERGROUP_HANDLE.match(handle):
        raise UsageError(f"`{escape(word)}` is not a team: give `--owner` a usergroup handle such as `@payments` "
                         f"or a user (`@someone`, as Slack completes it).")
    return handle


def _take_owner(words: list[str], usage: str) -> tuple[list[str], str | None]:
    """``words`` without ``--owner @team`` (or ``--owner=@team``), and the owner."""
    owner: str | None = None
    rest: list[str] = []
    index = 0
    while index < len(words):
        word = words[index]
        if word.lower() == OWNER or word.lower().startswith(OWNER + "="):
            if owner is not None:
                raise UsageError(f"Give `--owner` once. {usage}")
            if word.lower() == OWNER:
                if index + 1 >= len(words) or words[index + 1].startswith("--"):
                    raise UsageError(f"`--owner` needs a team, e.g. `--owner @payments`. {usage}")
                value, index = words[index + 1], index + 2
            else:
                value, index = word[len(OWNER) + 1:], index + 1
            owner = owner_of(value)
            continue
        if word.startswith("--"):
            raise UsageError(f"I don't know the option `{escape(word)}` here. {usage}")
        rest.append(word)
        index += 1
    return rest, owner


def _take_override(words: list[str]) -> tuple[list[str], str | None]:
    """``words`` without ``--override "reason"`` (or ``--override=reason``), and the reason."""
    for index, word in enumerate(words):
        if word.lower() == OVERRIDE:
            if index + 1 >= len(words) or words[index + 1].startswith("--"):
                raise UsageError(f"`--override` needs a reason. {OVERRIDE_USAGE}")
            reason, rest = words[index + 1], words[:index] + words[index + 2:]
        elif word.lower().startswith(OVERRIDE + "="):
            reason, rest = word[len(OVERRIDE) + 1:], words[:index] + words[index + 1:]
        else:
            continue
        if not reason.strip():
            raise UsageError(f"`--override` needs a reason. {OVERRIDE_USAGE}")
        if any(w.lower().split("=")[0] == OVERRIDE for w in rest):
            raise UsageError(f"Give `--override` once. {OVERRIDE_USAGE}")
        return rest, reason.strip()
    return words, None


def parse_command(text: str) -> Command:
    """Parse the text after ``/deploy``.

    Raises:
        UsageError: the words do not fit any subcommand; the message shows
            the right form.
    """
    words = split_words(text)
    if not words or words[0].lower() in ("help", "-h", "--help"):
        return Help()
    head = words[0].lower()
    if head == "lock":
        if len(words) < 3:
            raise UsageError("Usage: `/deploy lock <service> [environment] [duration] <reason>` — a lock needs a "
                             'reason, e.g. `/deploy lock api production 2h "database maintenance"`.')
        return LockCommand(words[1].lower(), tuple(words[2:]))
    if head == "locks":
        if len(words) > 2:
            raise UsageError("Usage: `/deploy locks [service]`.")
        return LocksCommand(words[1].lower() if len(words) == 2 else None)
    if head == "queue":
        if len(words) > 2:
            raise UsageError("Usage: `/deploy queue [service]`.")
        return QueueCommand(words[1].lower() if len(words) == 2 else None)
    if head == "unblock":
        if len(words) not in (3, 4):
            raise UsageError("Usage: `/deploy unblock <service> <version> [environment]`, e.g. "
                             "`/deploy unblock api 2.7.0 production`.")
        return UnblockCommand(words[1].lower(), words[2], words[3].lower() if len(words) == 4 else None)
    if head == "unlock":
        if len(words) not in (2, 3):
            raise UsageError("Usage: `/deploy unlock <service> [environment]`.")
        return UnlockCommand(words[1].lower(), words[2].lower() if len(words) == 3 else None)
    if head in ("rollback", "history"):
        if len(words) not in (2, 3):
            raise UsageError(f"Usage: `/deploy {head} <service> [environment]`.")
        environment = words[2].lower() if len(words) == 3 else None
        kind = RollbackCommand if head == "rollback" else HistoryCommand
        return kind(words[1].lower(), environment)
    if head in STEERING:
        if len(words) not in (2, 3):
            raise UsageError(f"Usage: `/deploy {head} <service> [environment]`, e.g. `/deploy {head} api production`.")
        return SteerCommand(head, words[1].lower(), words[2].lower() if len(words) == 3 else None)
    if head == "status":
        usage = ("Usage: `/deploy status [service]`, e.g. `/deploy status api`; "
                 "`--owner @team` shows only that team's services.")
        rest, owner = _take_owner(words[1:], usage)
        if len(rest) > 1:
            raise UsageError(usage)
        return StatusCommand(rest[0].lower() if rest else None, owner)
    if head == "stats":
        return _parse_stats(words[1:])
    if head == "home":
        usage = "Usage: `/deploy home [--owner @team]`, e.g. `/deploy home --owner @payments`."
        rest, owner = _take_owner(words[1:], usage)
        if rest:
            raise UsageError(usage)
        return HomeCommand(owner)
    if head == "show":
        if len(words) != 2 or not words[1].lstrip("#").isdigit():
            raise UsageError("Usage: `/deploy show <id>`, e.g. `/deploy show 12`.")
        return ShowCommand(int(words[1].lstrip("#")))
    words, override = _take_override(words)
    migration = any(word.lower() == MIGRATION for word in words)
    words = [word for word in words if word.lower() != MIGRATION]
    if unknown := [word for word in words if word.startswith("--")]:
        raise UsageError(f"I don't know the option `{escape(unknown[0])}`. A request takes `--override \"reason\"` "
                         f"and `--migration`. Try `/deploy help`.")
    if len(words) not in (2, 3):
        raise UsageError(
            "Usage: `/deploy <service> <version> [environment]`, e.g. `/deploy api v2.7.0 production`. "
            "Try `/deploy help`."
        )
    return RequestDeploy(head, words[1], words[2].lower() if len(words) == 3 else None, override, migration)


def _parse_stats(words: list[str]) -> StatsCommand:
    """``[service] [days]``: a lone number is the days (service names are words)."""
    usage = (f"Usage: `/deploy stats [service] [days]`, days from {STATS_DAYS[0]} to {STATS_DAYS[1]} "
             f"(default {STATS_DEFAULT_DAYS}), e.g. `/deploy stats api 90`; `--owner @team` sums that team's services.")
    words, owner = _take_owner(words, usage)
    if len(words) > 2:
        raise UsageError(usage)
    service, days_text = None, None
    if len(words) == 2:
        service, days_text = words[0].lower(), words[1]
    elif words and LOOKS_LIKE_DAYS.match(words[0]):
        days_text = words[0]
    elif words:
        service = words[0].lower()
    if days_text is None:
        return StatsCommand(service, STATS_DEFAULT_DAYS, owner)
    number = days_text.lower().removesuffix("d")
    if not number.isdigit() or not STATS_DAYS[0] <= int(number) <= STATS_DAYS[1]:
        raise UsageError(f"`{escape(days_text)}` is not a number of days from {STATS_DAYS[0]} to {STATS_DAYS[1]}. {usage}")
    return StatsCommand(service, int(number), owner)
