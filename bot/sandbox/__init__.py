"""``slipway sandbox``: try Slipway in a browser, without a Slack workspace.

Slipway runs with its real code against the fake Slack the test-suite uses
(bot/sandbox/fake_slack.py); a local page shows the deploy channel and lets you type
``/deploy``, click, approve as someone else and simulate a monitor's alert.
See server.py for how the pieces fit.
"""

from bot.sandbox.server import PageError, Sandbox, serve

__all__ = ["PageError", "Sandbox", "serve"]
