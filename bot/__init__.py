"""Slipway's application core, in rooms:

* ``bot.deploys`` — the deploy domain: request, approve, run, verify, roll
  back; policy, locks, freezes, versions, nudges, DORA figures.
* ``bot.slack`` — Slack presentation and delivery: Block Kit, the deploy
  message, status and App Home, the ship report, usergroups, the outbox.
* ``bot.alerts`` — monitors' alerts: parsing, baselines, rules, the relay.
* ``bot.executors`` — handing a deploy to the team's engine.
* ``bot.runtime`` — composition, CLI, settings, logs, metrics, health, tasks.
* ``bot.sandbox`` — ``slipway sandbox`` and the stand-in for Slack it needs.

At the top: ``config`` (the YAML file), ``errors``, ``durations`` and
``events`` (the bus), which every room uses.
"""
