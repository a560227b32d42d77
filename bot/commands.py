"""Parsing the text of ``/deploy`` into a command (data, not behaviour).

The parser knows the shape of each subcommand, not the config: whether a
service or environment exists is the workflow's question.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.errors import UsageError

HELP_TEXT = """\
*Slipway — deploys from Slack*
• `/deploy <service> <version> [environment]` — request a deploy (environment defaults to the first rung of the ladder), e.g. `/deploy api v2.7.0 production`
• `/deploy lock <service> [environment] <reason>` — stop deploys of a service (every environment when none is named)
• `/deploy unlock <service> [environment]` — lift a lock
• `/deploy rollback <service> [environment]` — go back to the last good version (asks you to confirm)
• `/deploy show <id>` — the whole record of one deploy
• `/deploy history <service> [environment]` — recent deploys
• `/deploy help` — this message
Versions are semantic (`2.7.0` or `v2.7.0`). A version reaches an environment only after it succeeded on the rung below; production needs approvals and a ticked checklist."""

SUBCOMMANDS = ("help", "lock", "unlock", "rollback", "show", "history")


@dataclass(frozen=True)
class Help:
    pass


@dataclass(frozen=True)
class RequestDeploy:
    service: str
    version: str
    environment: str | None


@dataclass(frozen=True)
class LockCommand:
    service: str
    words: tuple[str, ...]  # [environment] reason…: which is which needs the config


@dataclass(frozen=True)
class UnlockCommand:
    service: str
    environment: str | None


@dataclass(frozen=True)
class RollbackCommand:
    service: str
    environment: str | None


@dataclass(frozen=True)
class ShowCommand:
    deploy_id: int


@dataclass(frozen=True)
class HistoryCommand:
    service: str
    environment: str | None


Command = Help | RequestDeploy | LockCommand | UnlockCommand | RollbackCommand | ShowCommand | HistoryCommand


def parse_command(text: str) -> Command:
    """Parse the text after ``/deploy``.

    Raises:
        UsageError: the words do not fit any subcommand; the message shows
            the right form.
    """
    words = text.split()
    if not words or words[0].lower() in ("help", "-h", "--help"):
        return Help()
    head = words[0].lower()
    if head == "lock":
        if len(words) < 3:
            raise UsageError("Usage: `/deploy lock <service> [environment] <reason>` — a lock needs a reason.")
        return LockCommand(words[1].lower(), tuple(words[2:]))
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
    if head == "show":
        if len(words) != 2 or not words[1].lstrip("#").isdigit():
            raise UsageError("Usage: `/deploy show <id>`, e.g. `/deploy show 12`.")
        return ShowCommand(int(words[1].lstrip("#")))
    if len(words) not in (2, 3):
        raise UsageError(
            "Usage: `/deploy <service> <version> [environment]`, e.g. `/deploy api v2.7.0 production`. "
            "Try `/deploy help`."
        )
    return RequestDeploy(head, words[1], words[2].lower() if len(words) == 3 else None)
