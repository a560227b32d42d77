"""The errors Slipway raises on purpose.

Every subclass of :class:`SlipwayError` carries a message written for the
person in Slack: handlers show it as an ephemeral reply as it is. Anything
that is not a ``SlipwayError`` is a bug; the central error handler logs it
with a traceback and tells the person something went wrong, with an id to
grep for.
"""

from __future__ import annotations


class SlipwayError(Exception):
    """Base of every error whose message is meant for the user."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UsageError(SlipwayError, ValueError):
    """The command was malformed (wrong arguments, unknown subcommand)."""


class UnknownService(SlipwayError, LookupError):
    """The service named is not in the config."""


class UnknownEnvironment(SlipwayError, LookupError):
    """The environment named is not in the config's ladder."""


class InvalidVersion(SlipwayError, ValueError):
    """The version is not a semantic version."""


class PolicyViolation(SlipwayError):
    """The request is well-formed but the deploy discipline refuses it
    (ladder, live version, lock, freeze, deploy in flight)."""


class NotAllowed(SlipwayError, PermissionError):
    """The person who clicked or typed is not allowed to do that."""


class InvalidTransition(SlipwayError):
    """The deploy is no longer in a state where that action applies.

    This is what makes double clicks and Slack retries harmless: the second
    attempt finds the state already moved and is refused without effect.
    """


class ConfigError(Exception):
    """The config file is invalid; ``problems`` lists every problem found."""

    def __init__(self, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        super().__init__(f"{path}: {len(problems)} problem(s):\n" + "\n".join(problems))


class MissingSecret(Exception):
    """A secret that must come from the environment is not set."""
