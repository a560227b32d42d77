"""Slack presentation and delivery: Block Kit, the deploy message, status and App Home, the outbox."""
