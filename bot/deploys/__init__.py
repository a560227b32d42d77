"""The deploy domain: requests, approvals, policy, running, verification, rollbacks, locks, freezes, versions.

Nothing here speaks to Slack: what a person sees is ``bot.slack``'s to draw."""
