"""The ``slipway`` command: ``serve``, ``sandbox``, ``check-config``, ``report`` and ``token``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from typing import Any

from aiohttp import web

from bot.config import load_config
from bot.errors import ConfigError, MissingSecret
from bot.runtime.settings import Settings
from bot.runtime.tasks import until_stopped

log = logging.getLogger("slipway")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slipway", description="Ship software safely from Slack.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve Slack requests (HTTP, or Socket Mode with SLACK_APP_TOKEN)")
    serve.add_argument("--config", default=os.environ.get("SLIPWAY_CONFIG", "slipway.yml"),
                       help="config file (default: $SLIPWAY_CONFIG or slipway.yml)")
    serve.add_argument("--db", default=os.environ.get("SLIPWAY_DB", "slipway.db"),
                       help="SQLite database file (default: $SLIPWAY_DB or slipway.db)")
    serve.add_argument("--host", default="0.0.0.0", help="address to listen on (default: 0.0.0.0)")
    serve.add_argument("--port", type=int, default=3000, help="HTTP port (default: 3000; 0 picks a free one)")
    serve.add_argument("--socket-mode", action="store_true", help="connect over Socket Mode (needs SLACK_APP_TOKEN)")
    serve.add_argument("--log-level", default=os.environ.get("SLIPWAY_LOG_LEVEL", "INFO"),
                       help="DEBUG, INFO, WARNING or ERROR (default: $SLIPWAY_LOG_LEVEL or INFO)")
    serve.add_argument("--log-format", choices=("json", "text"), default=os.environ.get("SLIPWAY_LOG_FORMAT", "json"),
                       help="json: one JSON object per line; text: for a person (default: $SLIPWAY_LOG_FORMAT or json)")
    serve.add_argument("--drain", type=float, default=float(os.environ.get("SLIPWAY_DRAIN_SECONDS", "60")),
                       help="on SIGTERM, seconds to wait for command deploys in progress (default: 60)")
    serve.add_argument("--lease", type=_positive_seconds, default=os.environ.get("SLIPWAY_LEASE_SECONDS", "20"),
                       help="seconds a silent owner of the database keeps a standby waiting; renewed every quarter "
                            "of it (default: $SLIPWAY_LEASE_SECONDS or 20)")

    check = commands.add_parser("check-config", help="validate a config file and print every problem")
    check.add_argument("path")

    report = commands.add_parser("report", help="print the Markdown ship report of a deploy")
    report.add_argument("deploy_id", type=int, help="the deploy's number, as in the deploy message")
    report.add_argument("--config", default=os.environ.get("SLIPWAY_CONFIG", "slipway.yml"),
                        help="config file (default: $SLIPWAY_CONFIG or slipway.yml)")
    report.add_argument("--db", default=os.environ.get("SLIPWAY_DB", "slipway.db"),
                        help="SQLite database file (default: $SLIPWAY_DB or slipway.db)")

    token = commands.add_parser("token", help="make, list and revoke the API's bearer tokens (for CI)")
    token_actions = token.add_subparsers(dest="action", required=True)
    create = token_actions.add_parser("create", help="make a token and print it, once")
    create.add_argument("name", help="the token's name: the audit log says api:NAME")
    create.add_argument("--scope", action="append", required=True, dest="scopes",
                        help="read, request:<environment>, request:* or control:<environment>; repeat for more")
    create.add_argument("--expires", help="a lifetime (90d, 12h); default: until revoked")
    listing = token_actions.add_parser("list", help="every token: name, scopes, expiry, last use, state")
    revoke = token_actions.add_parser("revoke", help="revoke a token now")
    revoke.add_argument("name")
    for action in (create, listing, revoke):
        action.add_argument("--db", default=os.environ.get("SLIPWAY_DB", "slipway.db"),
                            help="SQLite database file (default: $SLIPWAY_DB or slipway.db)")
    create.add_argument("--config", default=os.environ.get("SLIPWAY_CONFIG", "slipway.yml"),
                        help="config file, whose environments the scopes name (default: $SLIPWAY_CONFIG or "
                             "slipway.yml)")

    sandbox = commands.add_parser("sandbox", help="try Slipway in a browser against a built-in stand-in for Slack")
    sandbox.add_argument("--host", default="127.0.0.1",
                         help="loopback address the page listens on (default: 127.0.0.1)")
    sandbox.add_argument("--port", type=int, default=8000, help="the page's port (default: 8000; 0 picks a free one)")
    sandbox.add_argument("--db", help="SQLite database file, kept between runs (default: a new one in a temp dir)")
    return parser


def _positive_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds above 0")
    return seconds


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "check-config":
        return check_config(args.path)
    if args.command == "report":
        return print_report(args)
    if args.command == "sandbox":
        return run_sandbox(args)
    if args.command == "token":
        return manage_tokens(args)
    return serve(args)


def run_sandbox(args: argparse.Namespace) -> int:
    """``slipway sandbox``: Slipway, a fake Slack and a page, until Ctrl-C."""
    import tempfile
    from pathlib import Path

    from bot.sandbox import serve as serve_sandbox
    from bot.sandbox.page import is_loopback

    if not is_loopback(args.host):
        print(f"slipway: the sandbox listens on loopback only (127.0.0.1, ::1 or localhost), not {args.host!r}: "
              "it has no authentication and acts for made-up people", file=sys.stderr)
        return 2
    from bot.runtime.logs import configure_logging

    configure_logging("WARNING", "text")  # a person at a terminal; the page shows what happens
    with tempfile.TemporaryDirectory(prefix="slipway-sandbox-") as scratch:
        db = Path(args.db) if args.db else Path(scratch) / "sandbox.db"
        state_dir = db.with_name(db.name + ".demo")  # what the demo service runs, kept with the database
        return asyncio.run(serve_sandbox(args.host, args.port, db, state_dir))


def print_report(args: argparse.Namespace) -> int:
    from bot.slack.ship_report import ship_report
    from store import DeployNotFound, Store

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"slipway: {args.config} is invalid: " + "; ".join(exc.problems), file=sys.stderr)
        return 2
    if not os.path.exists(args.db):
        print(f"slipway: no database at {args.db}", file=sys.stderr)
        return 2
    store = Store.open(args.db)
    try:
        print(ship_report(store, config, store.deploys.get(args.deploy_id)))
    except DeployNotFound:
        print(f"slipway: there is no deploy #{args.deploy_id} in {args.db}", file=sys.stderr)
        return 1
    finally:
        store.close()
    return 0


def manage_tokens(args: argparse.Namespace) -> int:
    """``slipway token create|list|revoke``: on the database ``serve`` uses
    (a running Slipway sees a new or revoked token at its next request)."""
    from store import Store
    from store.tokens import TokenError

    if args.action == "create":
        problem, expires_at = _token_problem(args)
        if problem:
            print(f"slipway: {problem}", file=sys.stderr)
            return 2
    elif not os.path.exists(args.db):
        print(f"slipway: no database at {args.db}", file=sys.stderr)
        return 2
    # a new file is migrated here; an existing one only by the `serve` that owns it (see "Running it for real")
    store = Store.open(args.db, migrate=not os.path.exists(args.db))
    try:
        if "api_tokens" not in store.db.table_names():
            print(f"slipway: {args.db} predates API tokens: start this version's `slipway serve` on it once "
                  "(it migrates the schema), then try again", file=sys.stderr)
            return 2
        if args.action == "create":
            record, token = store.tokens.create(args.name, args.scopes, expires_at)
            print(token)
            until = f"until {record.expires_at}" if record.expires_at else "until revoked"
            print(f"token {record.name!r} ({', '.join(record.scopes)}), valid {until}; it is shown this once and "
                  f"kept only as a hash: store it as a CI secret now", file=sys.stderr)
        elif args.action == "list":
            print(_token_table(store.tokens.all(), store.database.now()))
        else:
            record = store.tokens.revoke(args.name)
            print(f"token {record.name!r} revoked at {record.revoked_at}")
    except TokenError as refused:
        print(f"slipway: {refused}", file=sys.stderr)
        return 1
    finally:
        store.close()
    return 0


def _token_problem(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """What is wrong with ``token create``'s scopes and lifetime (else None), and its expiry."""
    from datetime import datetime, timedelta, timezone

    from bot.durations import parse_duration
    from store import stamp

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return f"{args.config} is invalid (the scopes name its environments): " + "; ".join(exc.problems), None
    for scope in args.scopes:
        kind, _, environment = scope.partition(":")
        if kind in ("request", "control") and environment not in config.environment_names and \
                not (kind == "request" and environment == "*"):
            return (f"{scope!r} names no environment of {args.config} "
                    f"({', '.join(config.environment_names)})"), None
    if args.expires is None:
        return None, None
    try:
        seconds = parse_duration(args.expires)
    except ValueError as bad:
        return f"--expires: {bad}", None
    return None, stamp(datetime.now(timezone.utc) + timedelta(seconds=seconds))


def _token_table(tokens: list[Any], now: str) -> str:
    if not tokens:
        return "no tokens (make one with `slipway token create NAME --scope …`)"
    rows = [("NAME", "SCOPES", "CREATED", "EXPIRES", "LAST USED", "STATE")]
    rows += [(t.name, " ".join(t.scopes), t.created_at[:16], (t.expires_at or "never")[:16],
              (t.last_used_at or "never")[:16], t.state(now)) for t in tokens]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
                     for row in rows)


def check_config(path: str) -> int:
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(f"{path}: {len(exc.problems)} problem(s)", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    print(f"{path}: OK — {len(config.services)} service(s), ladder {' → '.join(config.environment_names)}")
    return 0


def serve(args: argparse.Namespace) -> int:
    from bot.runtime.logs import configure_logging
    configure_logging(args.log_level, args.log_format)
    try:
        settings = Settings.from_env(socket_mode=True if args.socket_mode else None)
        config = load_config(args.config)
    except MissingSecret as exc:
        print(f"slipway: {exc}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(f"slipway: {args.config} is invalid:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    return asyncio.run(_serve(args, settings, config))


async def _serve(args: argparse.Namespace, settings: Settings, config) -> int:
    """Serve until SIGTERM/SIGINT (exit 0) or until the lease is lost (exit 1).

    1. Ask Slack who the token is (``auth.test``): a refused token stops here,
       exit 2, before anything touches the database; Slack unreachable is
       logged, and serving goes on (``/healthz`` answers 503 until it answers).
    2. Open the database without migrating (creating it 0600): the lease's
       own connection, and Slipway's; build Slipway (it reads nothing yet).
    3. Look at the lease once. Free (or expired, or its holder dead): take
       it, which migrates the schema in the same transaction (only an owner
       migrates), and start the workers (outbox, recovery of deploys left in
       flight, expiry and reminders). Then listen.
    4. Held by another: listen as a standby (``/healthz`` 503 ``standby``,
       every door but the metrics 503) and look again every ``poll``
       seconds; once it is ours, as in 3, then start the workers.
    5. As the owner, connect over Socket Mode if asked, and renew the lease
       every few seconds until told to stop.
    6. On SIGTERM: drain command deploys, stop the workers and the server,
       then release the lease, so a standby takes over at once. A lost lease
       skips the drain and the release: another process already owns the
       deploys.
    """
    from bot.runtime.composition import create_slipway, create_web_app
    from bot.runtime.health import OK, slack_at_start
    from bot.runtime.lease import OWNER, LeaseKeeper
    from store import Store

    slack = await slack_at_start(settings.bot_token, settings.api_url)
    if slack.refused_token is not None:
        print(f"slipway: Slack refused SLACK_BOT_TOKEN ({slack.refused_token}): the token is wrong, revoked or its "
              "workspace inactive; reinstall the app and export its Bot User OAuth Token", file=sys.stderr)
        return 2
    if slack.status == OK:
        log.info("Slack knows the bot token: %s", slack.identity)
    else:
        log.error("Slack is not reachable (%s); serving anyway: GET /healthz answers 503 until Slack answers",
                  slack.status.removeprefix("error: "))

    keeper = await LeaseKeeper(args.db, seconds=args.lease).open()
    _warn_if_others_can_read(args.db)
    store = Store.open(args.db, migrate=False)
    slipway = create_slipway(config, store, settings)
    runner = web.AppRunner(create_web_app(slipway, lease=keeper))
    await runner.setup()
    stopping = asyncio.ensure_future(until_stopped())
    owning: asyncio.Future[Any] = asyncio.ensure_future(keeper.try_acquire())
    lost = asyncio.ensure_future(keeper.lost.wait())
    socket_mode: asyncio.Task[None] | None = None
    socket_handler = None
    try:
        if await owning:  # a lease there for the taking is taken before the door opens, ready to work
            slipway.start_workers()
        site = web.TCPSite(runner, args.host, args.port)
        await site.start()
        port = runner.addresses[0][1] if runner.addresses else args.port
        routes = "GET /healthz" if settings.socket_mode else "POST /slack/events, GET /healthz"
        log.info("listening on http://%s:%s (%s) as %s", args.host, port, routes, keeper.role)
        if keeper.role != OWNER:
            owning = asyncio.ensure_future(keeper.acquire())
            await asyncio.wait({stopping, owning}, return_when=asyncio.FIRST_COMPLETED)
            if not owning.done():
                log.info("shutting down (a standby: nothing to drain or release)")
                return 0
            owning.result()  # a migration that failed stops here, with its traceback
            slipway.start_workers()
        if settings.socket_mode:
            from slack_bolt.adapter.socket_mode.aiohttp import AsyncSocketModeHandler

            # the handler's Web API client is the app's, so SLACK_API_URL applies to it too
            socket_handler = AsyncSocketModeHandler(slipway.bolt, settings.app_token)
            socket_mode = asyncio.create_task(_connect(socket_handler), name="socket-mode")
        await asyncio.wait({stopping, lost}, return_when=asyncio.FIRST_COMPLETED)
        if lost.done():
            await slipway.stop_workers()  # at once: the doors already answer 503
            return 1
        log.info("shutting down")
        left = await slipway.runner.drain(args.drain)
        if left:
            log.warning("stopping with deploys %s unfinished; they are picked up at the next start", left)
        return 0
    finally:
        for waiting in (owning, lost):
            waiting.cancel()
        if socket_mode is not None:
            socket_mode.cancel()
        if socket_handler is not None:
            await socket_handler.close_async()
        await runner.cleanup()  # the server closes and the workers stop
        if not keeper.lost.is_set():
            await keeper.release()  # after the workers have stopped: a standby may start its own
        await keeper.close()
        store.close()
        stopping.cancel()


async def _connect(socket_handler) -> None:
    """Connect over Socket Mode, trying again while Slack cannot be reached."""
    while True:
        try:
            await socket_handler.connect_async()
        except Exception as exc:  # noqa: BLE001 — unreachable or refused: said, and tried again
            log.error("could not connect to Slack over Socket Mode (%s: %s); trying again in 5 s",
                      type(exc).__name__, exc)
            await asyncio.sleep(5)
        else:
            log.info("connected to Slack over Socket Mode")
            return


def _warn_if_others_can_read(path: str) -> None:
    """Slipway creates its database 0600; one made earlier (or by hand) may
    be readable by others, and it holds command output and the audit log."""
    try:
        mode = os.stat(path).st_mode & 0o777
    except OSError:
        return
    if mode & 0o077:
        log.warning("%s can be read or written by other users (mode %03o): it holds command output and the audit "
                    "log; chmod 600 it and its -wal and -shm files", path, mode)


if __name__ == "__main__":
    sys.exit(main())
