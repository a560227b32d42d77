"""Alerts from monitors: parsed into one shape, judged against threshold
rules, tied to the deploy that most likely caused them, and relayed into
Slack through the durable outbox."""
