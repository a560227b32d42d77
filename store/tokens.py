"""API tokens: the bearer tokens CI uses on ``/api/v1`` (``slipway token
create|list|revoke``). Only a token's SHA-256 is stored; the token itself is
shown once, when it is made, and cannot be read back.

A token is ``slp_`` followed by 43 URL-safe characters (256 random bits).
Its scopes say what it may do: ``read``, ``request:<environment>`` (or
``request:*``) and ``control:<environment>``.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from store.database import Database

TOKEN_PREFIX = "slp_"
#: a token's name: lowercase, so ``api:NAME`` never reads as a Slack user id (``U0…``), and no mrkdwn
#: character (``_`` included: api:my_ci_bot would turn italic), so it is shown as it is, needing no escape
TOKEN_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{0,63}$")
#: ``read``, ``request:staging``, ``request:*``, ``control:production``
SCOPE = re.compile(r"^(?:read|request:(?:\*|[A-Za-z0-9_.-]{1,64})|control:[A-Za-z0-9_.-]{1,64})$")
TOUCH_EVERY_SECONDS = 60  # last_used_at is rewritten at most this often (a polling CI would write on every read)


class TokenError(ValueError):
    """A token cannot be made or changed as asked; the message says why."""


class TokenRefused(Exception):
    """A bearer token that does not authenticate: ``reason`` is ``unknown``,
    ``revoked`` or ``expired`` (the message says it for the caller)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ApiToken:
    """One token's record (never the token itself)."""

    id: int
    name: str
    scopes: tuple[str, ...]
    created_at: str
    expires_at: str | None
    revoked_at: str | None
    last_used_at: str | None

    @property
    def actor(self) -> str:
        """Who the audit log and the deploy message say acted: ``api:NAME``."""
        return f"api:{self.name}"

    def may_read(self) -> bool:
        return "read" in self.scopes

    def may_request(self, environment: str) -> bool:
        return f"request:{environment}" in self.scopes or "request:*" in self.scopes

    def may_control(self, environment: str) -> bool:
        return f"control:{environment}" in self.scopes

    def state(self, now: str) -> str:
        """``active``, ``revoked`` or ``expired`` at ``now`` (ISO)."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def _record(row: dict[str, Any]) -> ApiToken:
    return ApiToken(row["id"], row["name"], tuple(json.loads(row["scopes"])), row["created_at"], row["expires_at"],
                    row["revoked_at"], row["last_used_at"])


class ApiTokens:
    """Making, checking, listing and revoking API tokens."""

    def __init__(self, database: Database) -> None:
        self._database = database
        self._db = database.db

    def create(self, name: str, scopes: list[str], expires_at: str | None = None) -> tuple[ApiToken, str]:
        """Make a token; returns its record and the token, which exists only
        in this answer (the store keeps its hash).

        Raises:
            TokenError: a bad name or scope, no scope, or the name is taken.
        """
        if not TOKEN_NAME.match(name):
            raise TokenError(f"{name!r} is not a token name: 1 to 64 of a-z, 0-9, '.' and '-', "
                             "starting with a letter or digit")
        if not scopes:
            raise TokenError("a token needs at least one scope (read, request:<environment>, control:<environment>)")
        for scope in scopes:
            if not SCOPE.match(scope):
                raise TokenError(f"{scope!r} is not a scope: read, request:<environment>, request:* "
                                 "or control:<environment>")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        try:
            with self._database.transaction():
                self._db.execute(
                    "INSERT INTO api_tokens (name, token_hash, scopes, created_at, expires_at) VALUES (?, ?, ?, ?, ?)",
                    [name, hash_token(token), json.dumps(sorted(set(scopes))), self._database.now(), expires_at])
        except sqlite3.IntegrityError:
            raise TokenError(f"a token named {name!r} exists already (revoked ones keep their name)") from None
        return self.get(name), token

    def get(self, name: str) -> ApiToken:
        """Raises TokenError when no token has that name."""
        rows = list(self._db.query("SELECT * FROM api_tokens WHERE name = ?", [name]))
        if not rows:
            raise TokenError(f"there is no token named {name!r}")
        return _record(rows[0])

    def verify(self, token: str) -> ApiToken:
        """The token's record, if it may be used now (its last use noted).

        Raises:
            TokenRefused: unknown (never made, or mistyped), revoked or expired.
        """
        rows = list(self._db.query("SELECT * FROM api_tokens WHERE token_hash = ?", [hash_token(token)]))
        if not rows:
            raise TokenRefused("unknown", "unknown API token")
        record = _record(rows[0])
        now = self._database.now()
        state = record.state(now)
        if state == "revoked":
            raise TokenRefused("revoked", f"API token {record.name!r} was revoked at {record.revoked_at}")
        if state == "expired":
            raise TokenRefused("expired", f"API token {record.name!r} expired at {record.expires_at}")
        self._touch(record)
        return record

    def _touch(self, record: ApiToken) -> None:
        """Note the token's use, at most once a minute: a read-only poll need not write every time."""
        now = self._database.clock()
        if record.last_used_at is not None:
            if (now - datetime.fromisoformat(record.last_used_at)).total_seconds() < TOUCH_EVERY_SECONDS:
                return
        with self._database.transaction():
            self._db.execute("UPDATE api_tokens SET last_used_at = ? WHERE id = ?", [self._database.now(), record.id])

    def all(self) -> list[ApiToken]:
        """Every token, revoked and expired ones too, oldest first."""
        return [_record(row) for row in self._db.query("SELECT * FROM api_tokens ORDER BY id")]

    def revoke(self, name: str) -> ApiToken:
        """Revoke a token at once (its next use is refused); revoking it again changes nothing.

        Raises:
            TokenError: no token has that name.
        """
        with self._database.transaction():
            self.get(name)
            self._db.execute("UPDATE api_tokens SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL",
                             [self._database.now(), name])
        return self.get(name)
