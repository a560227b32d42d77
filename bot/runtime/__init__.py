"""Running Slipway: composition, the CLI, settings, logs, metrics, health and background tasks."""
