"""Secrets and endpoints, from the environment only (never from the config
file or the repository)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from bot.errors import MissingSecret


@dataclass(frozen=True)
class Settings:
    bot_token: str
    signing_secret: str | None
    app_token: str | None = None
    api_url: str | None = None  # SLACK_API_URL: another Web API base URL (tests, sandbox)

    @property
    def socket_mode(self) -> bool:
        return self.app_token is not None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, socket_mode: bool | None = None) -> "Settings":
        """Read the settings; Socket Mode when ``SLACK_APP_TOKEN`` is set
        (or ``socket_mode=True``).

        Raises:
            MissingSecret: naming every variable that must be set and is not.
        """
        env = os.environ if environ is None else environ
        wants_socket = bool(env.get("SLACK_APP_TOKEN")) if socket_mode is None else socket_mode
        required = ["SLACK_BOT_TOKEN", "SLACK_APP_TOKEN" if wants_socket else "SLACK_SIGNING_SECRET"]
        missing = [name for name in required if not env.get(name)]
        if missing:
            mode = "Socket Mode" if wants_socket else "HTTP mode"
            raise MissingSecret(f"missing environment variable(s) for {mode}: {', '.join(missing)}")
        api_url = env.get("SLACK_API_URL") or None
        if api_url and not api_url.endswith("/"):
            api_url += "/"  # slack_sdk joins method names onto the base URL
        return cls(
            bot_token=env["SLACK_BOT_TOKEN"],
            signing_secret=env.get("SLACK_SIGNING_SECRET") or None,
            app_token=env.get("SLACK_APP_TOKEN") if wants_socket else None,
            api_url=api_url,
        )
